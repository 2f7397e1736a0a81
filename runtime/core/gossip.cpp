// Gossip learning (Ormándi, Hegedűs, Jelasity; Hegedűs, Danner, Jelasity, DAIS 2019): every
// period (with jitter) a peer sends its model to `fanout` random live peers from its
// peer-sampling view; a receiver merges with the rule's weight (age-weighted by default),
// takes age = max, then takes local SGD steps whose learning rate may fall with age.
// push-pull: the receiver also answers with its own model (sent before it merges), so both
// ends move towards each other in one exchange.
// Partitioned subsampling (partitions > 1): each message carries one slice of the model, the
// slices taken in turn from a random start; each slice has its own age, merged with the rule
// against the received slice's age; local training ages every slice. The model's age (for the
// learning-rate schedule) is the mean of the slices'.
// Trust: a received age counts for at most trust.max_age_lead updates more than the local one
// (ProtocolStats::ages_clamped counts the messages whose age was cut), in the weight and in
// age = max; the decoded values are judged by the engine's codec context (trust.max_abs_param).
#include <algorithm>
#include <cmath>

#include "runtime/core/protocol.h"
#include "runtime/core/rng.h"

namespace mycel::runtime {
namespace {

class Gossip final : public Protocol {
 public:
  Gossip(bool push_pull, const ProtocolOptions& opt, const ParamStore* params)
      : push_pull_(push_pull),
        opt_(opt),
        params_(params),
        sampling_(opt.self, static_cast<size_t>(opt.view_size),
                  std::max<size_t>(1, static_cast<size_t>(opt.view_size) / 2), opt.seed * 7919 + 1),
        rng_(opt.seed),
        ages_(static_cast<size_t>(std::max(1, opt.partitions)), 0) {
    next_part_ = static_cast<uint32_t>(rng_() % ages_.size());
  }

  std::string_view name() const override { return push_pull_ ? "push-pull" : "gossip"; }

  void start(double now, std::vector<Action>& out) override {
    for (const auto& s : opt_.seeds) sampling_.add_seed(s, now);
    // First wake-up at a random phase of the period, so peers started together spread out.
    auto p = params_->get();
    std::uniform_real_distribution<double> phase(0, p->period_s);
    next_wake_ = now + phase(rng_);
    probe(now, out);
    out.push_back(SetTimer{std::min(next_wake_, next_probe_)});
  }

  void tick(double now, std::vector<Action>& out) override {
    probe(now, out);
    if (now + 1e-9 >= next_wake_) {
      auto p = params_->get();  // one snapshot per cycle
      ++stats_.wakeups;
      // Model targets first: the shuffle takes its partner out of the view until it answers,
      // which in a swarm of two would leave nobody to send to.
      auto targets = sampling_.sample(static_cast<size_t>(p->fanout));
      if (auto req = sampling_.start_shuffle()) {
        ++stats_.shuffles;
        out.push_back(SendView{req->to, MsgKind::kShuffle, std::move(req->entries)});
      }
      if (targets.empty()) ++stats_.no_peer;
      uint32_t part = next_part_;
      next_part_ = (next_part_ + 1) % static_cast<uint32_t>(ages_.size());
      for (auto& t : targets) {
        ++stats_.models_sent;
        out.push_back(SendModel{std::move(t), MsgKind::kModel, ages_[part], 0, part});
      }
      // Local training goes on between exchanges too, so a peer nobody contacts still learns.
      train(*p, out);
      std::uniform_real_distribution<double> j(-p->jitter, p->jitter);
      next_wake_ = now + p->period_s * (1.0 + j(rng_));
    }
    out.push_back(SetTimer{std::min(next_wake_, next_probe_)});
  }

  void message(double now, const Message& msg, std::vector<Action>& out) override {
    switch (msg.kind) {
      case MsgKind::kShuffle: {
        auto reply = sampling_.on_shuffle_request(msg.from, msg.entries, now);
        out.push_back(SendView{msg.from, MsgKind::kShuffleReply, std::move(reply)});
        return;
      }
      case MsgKind::kShuffleReply:
        sampling_.on_shuffle_reply(msg.from, msg.entries, now);
        return;
      case MsgKind::kModel:
      case MsgKind::kModelReply: {
        sampling_.on_heard(msg.from, now);
        ++stats_.models_received;
        auto p = params_->get();
        if (msg.partition >= ages_.size()) {  // a peer with another partitioning
          out.push_back(Drop{msg.handle});
          return;
        }
        uint64_t& age = ages_[msg.partition];
        if (push_pull_ && msg.kind == MsgKind::kModel) {
          ++stats_.models_sent;  // our copy of the same slice, before merging
          out.push_back(SendModel{msg.from, MsgKind::kModelReply, age, 0, msg.partition});
        }
        auto rule = rule_for(p->merge);
        // A received age is a claim: not trusted beyond max_age_lead updates ahead of ours, so
        // that a forged age (2^62) gets no weight near 1 from it and cannot spread as age = max.
        uint64_t recv_age = msg.age;
        const uint64_t lead = p->max_age_lead;
        const uint64_t cap = age > UINT64_MAX - lead ? UINT64_MAX : age + lead;
        if (recv_age > cap) {
          recv_age = cap;
          ++stats_.ages_clamped;
        }
        MergeInputs in{age, recv_age, 0, 0};
        float a = rule ? rule->weight(in) : 0.5f;
        out.push_back(MergeModel{msg.handle, a});
        ++stats_.merges;
        age = rule ? rule->merged_age(in) : std::max(age, recv_age);
        train(*p, out);
        return;
      }
    }
  }

  void peer_up(double now, const std::string& addr, std::vector<Action>&) override {
    sampling_.on_heard(addr, now);
  }
  void peer_down(double now, const std::string& addr, std::vector<Action>& out) override {
    // A seed or a retried peer that has not answered yet is pending, not down.
    if (sampling_.on_peer_down(addr, now)) ++stats_.peers_down;
    // Its retry is due later: the timer contract (earliest SetTimer wins) brings a tick then.
    next_probe_ = sampling_.next_retry_s();
    out.push_back(SetTimer{std::min(next_wake_, next_probe_)});
  }

  bool may_skip_training() const override { return true; }

  void training_skipped(int steps) override {
    uint64_t s = static_cast<uint64_t>(std::max(0, steps));
    for (auto& a : ages_) a -= std::min(a, s);
    stats_.train_steps -= std::min(stats_.train_steps, s);
  }
  uint64_t age() const override {
    uint64_t sum = 0;
    for (auto a : ages_) sum += a;
    return sum / ages_.size();
  }
  std::vector<uint64_t> partition_ages() const override { return ages_; }
  const ProtocolStats& stats() const override { return stats_; }
  const PeerSampling* sampling() const override { return &sampling_; }

  std::vector<uint8_t> save_state() const override {
    StateWriter w;
    w.u8('G');
    w.u8(1);  // layout version
    w.u32(static_cast<uint32_t>(ages_.size()));
    for (auto a : ages_) w.u64(a);
    w.u32(next_part_);
    w.u64(rng_.state());
    save_stats(w, stats_);
    return w.take();
  }
  Status restore_state(std::span<const uint8_t> state) override {
    StateReader r(state);
    if (r.u8() != 'G' || r.u8() != 1 || !r.ok())
      return Error(Code::kInvalidArgument, "protocol state: not the state of a gossip peer (layout 1)");
    const uint32_t n = r.u32();
    if (!r.ok() || n != ages_.size())
      return Error(Code::kInvalidArgument, "protocol state: " + std::to_string(n) + " partition ages, this peer has " +
                                               std::to_string(ages_.size()));
    std::vector<uint64_t> ages(n);
    for (auto& a : ages) a = r.u64();
    const uint32_t next = r.u32();
    const uint64_t rng = r.u64();
    ProtocolStats st;
    restore_stats(r, st);
    if (!r.done() || next >= n) return Error(Code::kCorrupt, "protocol state: gossip state is malformed");
    ages_ = std::move(ages);
    next_part_ = next;
    rng_ = SmallRng(rng);
    stats_ = st;
    return Ok();
  }

 private:
  // Peers on the retry list (seeds, peers that went down) get a shuffle request with our own
  // descriptor: an answer brings them (back) into the view.
  void probe(double now, std::vector<Action>& out) {
    for (auto& addr : sampling_.due_retries(now))
      out.push_back(SendView{addr, MsgKind::kShuffle, {Descriptor{opt_.self, 0}}});
    // The next wake-up for probing is when a retry is due, not a polling interval: a simulated
    // swarm of 100,000 peers would spend its time in empty ticks.
    next_probe_ = sampling_.next_retry_s();
  }

  void train(const RuntimeParams& p, std::vector<Action>& out) {
    if (p.local_steps <= 0) return;
    out.push_back(Train{p.local_steps, p.lr, age()});
    for (auto& a : ages_) a += static_cast<uint64_t>(p.local_steps);
    stats_.train_steps += static_cast<uint64_t>(p.local_steps);
  }

  const MergeRule* rule_for(const std::string& name) {
    if (!rule_ || rule_->name() != name) {
      auto r = make_merge_rule(name);
      if (!r) return nullptr;  // validated when the parameters were set; defensive
      rule_ = std::move(r).value();
    }
    return rule_.get();
  }

  bool push_pull_;
  ProtocolOptions opt_;
  const ParamStore* params_;
  PeerSampling sampling_;
  SmallRng rng_;
  std::unique_ptr<MergeRule> rule_;
  std::vector<uint64_t> ages_;  // one per partition
  uint32_t next_part_ = 0;
  double next_wake_ = 0, next_probe_ = 0;
  ProtocolStats stats_;
};

}  // namespace

Result<std::unique_ptr<Protocol>> make_gossip_protocol(std::string_view name,
                                                       const ProtocolOptions& opt,
                                                       const ParamStore* params) {
  if (!params) return Error(Code::kInvalidArgument, "gossip protocol needs a parameter store");
  if (opt.self.empty()) return Error(Code::kInvalidArgument, "gossip protocol needs its own address");
  if (opt.partitions < 1 || opt.partitions > 1024)
    return Error(Code::kInvalidArgument, "gossip: partitions must be in 1..1024");
  if (name == "gossip") return std::unique_ptr<Protocol>(std::make_unique<Gossip>(false, opt, params));
  if (name == "push-pull") return std::unique_ptr<Protocol>(std::make_unique<Gossip>(true, opt, params));
  return Error(Code::kInvalidArgument, "unknown gossip protocol '" + std::string(name) +
                                           "' (expected gossip or push-pull)");
}

}  // namespace mycel::runtime
