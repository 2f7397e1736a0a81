// D-PSGD (Lian et al., NeurIPS 2017) on a fixed topology, in its adapt-then-combine form: in
// round r each peer takes its local SGD steps, sends its model to its neighbours, and merges
// theirs for round r with Metropolis-Hastings weights. The merge streams: the k-th model to
// arrive is mixed in with a_k = w_k / (w_self + w_1 + ... + w_k), which yields exactly
// (w_self x + sum_k w_k x_k) / (w_self + sum_k w_k) whatever the arrival order, so no received
// model is ever held as an fp32 copy, and a missing neighbour's weight falls back to the peer
// itself.
//
// Membership (runtime/core/liveness.h): round 0 starts once every neighbour has been heard from
// (probes go out with backoff until then) or at the start-up deadline, with one log line naming
// the missing ones. A round ends when every neighbour that is not down has delivered its model
// for the round; a neighbour is down only once it was up and then silent for peer_timeout_s, so
// a send that fails (a neighbour restarting, a connection reset) never ends a round at once,
// and a peer never runs more than one round ahead of a live neighbour. Models that arrive one
// round early are held; a model from further ahead makes a peer that fell behind jump to that
// round; late models are dropped. A neighbour that comes back gets the current round's model.
// A peer waiting for a round sends nothing, so it sends a heartbeat (an empty view frame) to
// each neighbour it has not sent to for a third of peer_timeout_s: silence means gone, not
// waiting (else one dead peer would make its neighbours' neighbours look dead too).
#include <algorithm>
#include <cmath>
#include <map>
#include <string>

#include "common/log.h"
#include "runtime/core/liveness.h"
#include "runtime/core/protocol.h"
#include "runtime/core/topology.h"

namespace mycel::runtime {
namespace {

class Dpsgd final : public Protocol {
 public:
  Dpsgd(const ProtocolOptions& opt, const ParamStore* params, Topology topo)
      : opt_(opt),
        params_(params),
        topo_(std::move(topo)),
        nbrs_(topo_.adj[static_cast<size_t>(opt_.id)]),
        live_(nbrs_.size(), opt_.round_timeout_s),
        got_(nbrs_.size(), false),
        unsent_(nbrs_.size(), false),
        last_sent_(nbrs_.size(), 0) {
    for (size_t k = 0; k < nbrs_.size(); ++k) slot_[opt_.peers[static_cast<size_t>(nbrs_[k])]] = k;
  }

  std::string_view name() const override { return "dpsgd"; }

  void start(double now, std::vector<Action>& out) override {
    start_deadline_ = now + opt_.startup_timeout_s;
    if (nbrs_.empty()) {
      enter_round(now, out);
      return;
    }
    probe(now, out);
    out.push_back(SetTimer{next_timer(now)});
  }

  void tick(double now, std::vector<Action>& out) override {
    if (!gave_up_ && now + 1e-9 >= start_deadline_) {
      gave_up_ = true;
      auto missing = live_.give_up_pending();
      if (!missing.empty()) {
        std::string names;
        for (size_t k : missing) names += (names.empty() ? "" : ", ") + addr(k);
        MYCEL_LOG_WARN("protocol",
                       "dpsgd: starting round 0 after {:.0f} s without {} of {} neighbours ({}); they "
                       "join when they answer",
                       opt_.startup_timeout_s, missing.size(), nbrs_.size(), names);
      }
      if (!started_) enter_round(now, out);
    }
    for (size_t k : live_.expire(now)) {
      ++stats_.peers_down;
      unsent_[k] = true;
      MYCEL_LOG_WARN("protocol", "dpsgd: neighbour {} silent for {:.1f} s: rounds go on without it",
                     addr(k), opt_.round_timeout_s);
    }
    probe(now, out);
    heartbeat(now, out);
    if (started_ && round_complete()) {
      ++stats_.rounds_timed_out;  // completed only because a neighbour is down
      advance(now, out);
    }
    out.push_back(SetTimer{next_timer(now)});
  }

  void message(double now, const Message& msg, std::vector<Action>& out) override {
    on_message(now, msg, out);
    out.push_back(SetTimer{next_timer(now)});  // heartbeats and expiries move with what we hear
  }

  void peer_up(double now, const std::string& a, std::vector<Action>& out) override {
    auto it = slot_.find(a);
    if (it == slot_.end()) return;
    heard(it->second, now, out);
    maybe_start(now, out);
    out.push_back(SetTimer{next_timer(now)});
  }
  void peer_down(double now, const std::string& a, std::vector<Action>& out) override {
    auto it = slot_.find(a);
    if (it == slot_.end()) return;
    // Not down yet (that takes peer_timeout_s of silence): our model of this round may not have
    // reached it, so it gets it again when it answers a probe.
    live_.lost(it->second, now);
    if (started_) unsent_[it->second] = true;
    out.push_back(SetTimer{next_timer(now)});
  }

  uint64_t age() const override { return round_; }
  const ProtocolStats& stats() const override { return stats_; }

  // The round to begin at start() (the neighbours are heard again from scratch).
  std::vector<uint8_t> save_state() const override {
    StateWriter w;
    w.u8('D');
    w.u8(1);
    w.u64(round_);
    save_stats(w, stats_);
    return w.take();
  }
  Status restore_state(std::span<const uint8_t> state) override {
    StateReader r(state);
    if (r.u8() != 'D' || r.u8() != 1 || !r.ok())
      return Error(Code::kInvalidArgument, "protocol state: not the state of a dpsgd peer (layout 1)");
    const uint64_t round = r.u64();
    ProtocolStats st;
    restore_stats(r, st);
    if (!r.done()) return Error(Code::kCorrupt, "protocol state: dpsgd state is malformed");
    round_ = round;
    stats_ = st;
    return Ok();
  }

 private:
  std::string addr(size_t k) const { return opt_.peers[static_cast<size_t>(nbrs_[k])]; }

  void on_message(double now, const Message& msg, std::vector<Action>& out) {
    auto it = slot_.find(msg.from);
    if (it == slot_.end()) {  // not a neighbour
      if (msg.kind == MsgKind::kModel || msg.kind == MsgKind::kModelReply) out.push_back(Drop{msg.handle});
      return;
    }
    const size_t k = it->second;
    heard(k, now, out);
    if (msg.kind == MsgKind::kShuffle || msg.kind == MsgKind::kShuffleReply) {
      // A probe: answered, so a neighbour that started after us knows we are here.
      if (msg.kind == MsgKind::kShuffle) out.push_back(SendView{msg.from, MsgKind::kShuffleReply, {}});
      maybe_start(now, out);
      return;
    }
    if (msg.kind != MsgKind::kModel) {
      out.push_back(Drop{msg.handle});
      return;
    }
    ++stats_.models_received;
    if (!started_) {
      if (msg.age == 0) {  // kept for our round 0, which starts once every neighbour is heard
        held_[0].push_back({k, msg.handle});
        return;
      }
      enter_round(now, out);  // the swarm already runs (we restarted): join it, then jump
    }
    if (msg.age > round_ + 1) {
      // We fell behind (started late, or were cut off): jump to the sender's round rather than
      // replay rounds whose models are gone.
      stats_.rounds_skipped += msg.age - 1 - round_;
      round_ = msg.age - 1;
      advance(now, out);
    }
    if (msg.age < round_ || (got_[k] && msg.age == round_) || finished_) {
      out.push_back(Drop{msg.handle});  // late (the sender catches up from ours), duplicate, or done
      return;
    }
    if (msg.age == round_ + 1) {
      held_[msg.age].push_back({k, msg.handle});
      return;
    }
    merge(k, msg.handle, out);
    if (round_complete()) advance(now, out);
  }


  void heard(size_t k, double now, std::vector<Action>& out) {
    now_ = now;
    if (live_.heard(k, now)) resend_if_needed(k, out);
  }

  void maybe_start(double now, std::vector<Action>& out) {
    if (started_) return;
    for (size_t k = 0; k < nbrs_.size(); ++k)
      if (!live_.ever_heard(k)) return;
    enter_round(now, out);
  }

  void probe(double now, std::vector<Action>& out) {
    for (size_t k : live_.due_probes(now)) {
      out.push_back(SendView{addr(k), MsgKind::kShuffle, {}});
      last_sent_[k] = now;
    }
  }

  double heartbeat_interval() const { return opt_.round_timeout_s / 3; }
  // Also before round 0: a peer waiting for its own missing neighbours is not gone.
  void heartbeat(double now, std::vector<Action>& out) {
    for (size_t k = 0; k < nbrs_.size(); ++k) {
      if (!live_.reachable(k) || now - last_sent_[k] < heartbeat_interval() - 1e-9) continue;
      out.push_back(SendView{addr(k), MsgKind::kShuffleReply, {}});
      last_sent_[k] = now;
    }
  }

  double next_timer(double now) const {
    double t = live_.next_event();
    for (size_t k = 0; k < nbrs_.size(); ++k)
      if (live_.reachable(k)) t = std::min(t, last_sent_[k] + heartbeat_interval());
    if (!gave_up_) t = std::min(t, start_deadline_);
    return std::max(t, now + 1e-3);
  }

  // A neighbour we could not reach (it started late or came back) gets this round's model as
  // soon as it shows signs of life, so a swarm whose peers start at different times still
  // exchanges every round.
  void resend_if_needed(size_t k, std::vector<Action>& out) {
    if (!unsent_[k] || !started_ || finished_) return;
    unsent_[k] = false;
    out.push_back(SendModel{addr(k), MsgKind::kModel, round_, 0});
    ++stats_.models_sent;
    last_sent_[k] = now_;
  }

  void merge(size_t k, uint64_t handle, std::vector<Action>& out) {
    double w = topo_.weight(opt_.id, nbrs_[k]);
    cum_ += w;
    out.push_back(MergeModel{handle, static_cast<float>(w / cum_)});
    got_[k] = true;
    ++stats_.merges;
  }

  bool round_complete() const {
    if (finished_) return false;
    for (size_t k = 0; k < nbrs_.size(); ++k)
      if (!got_[k] && !live_.down(k)) return false;
    return true;
  }

  void begin_round(double now, std::vector<Action>& out) {
    started_ = true;
    stats_.wakeups = round_;
    if (opt_.max_rounds > 0 && round_ >= opt_.max_rounds) {
      finished_ = true;  // the driver stops here; nothing more to train or send
      return;
    }
    auto p = params_->get();
    if (p->local_steps > 0) {
      out.push_back(Train{p->local_steps, p->lr, round_});
      stats_.train_steps += static_cast<uint64_t>(p->local_steps);
    }
    for (size_t k = 0; k < nbrs_.size(); ++k) {
      // A neighbour not reachable now (never heard, or its connection failed) gets the model
      // when it answers a probe.
      unsent_[k] = !live_.reachable(k);
      if (unsent_[k]) continue;
      out.push_back(SendModel{addr(k), MsgKind::kModel, round_, 0});
      ++stats_.models_sent;
      last_sent_[k] = now;
    }
    cum_ = topo_.self_weight(opt_.id);
    std::fill(got_.begin(), got_.end(), false);
  }

  // Begins round_ and merges what was held for it; models held for rounds now past are dropped.
  void enter_round(double now, std::vector<Action>& out) {
    begin_round(now, out);
    for (auto it = held_.begin(); it != held_.end() && (finished_ || it->first <= round_);) {
      for (auto [k, handle] : it->second) {
        if (finished_ || it->first < round_ || got_[k]) out.push_back(Drop{handle});
        else merge(k, handle, out);
      }
      it = held_.erase(it);
    }
  }

  // The round is complete: on to the next, and on again while held models complete those (a
  // round with no neighbour merged waits for models, or for a silent neighbour to be down).
  void advance(double now, std::vector<Action>& out) {
    do {
      ++round_;
      enter_round(now, out);
    } while (round_complete() && std::find(got_.begin(), got_.end(), true) != got_.end());
  }

  ProtocolOptions opt_;
  const ParamStore* params_;
  Topology topo_;
  std::vector<int> nbrs_;              // neighbour ids; slot k of the vectors below
  std::map<std::string, size_t> slot_; // neighbour address -> slot
  Liveness live_;
  std::vector<bool> got_;              // merged this round
  std::vector<bool> unsent_;           // our model of this round may not have reached it
  std::vector<double> last_sent_;      // when we last sent this neighbour anything
  double now_ = 0;                     // of the input being handled (resend_if_needed)
  std::map<uint64_t, std::vector<std::pair<size_t, uint64_t>>> held_;
  double cum_ = 1, start_deadline_ = 0;
  uint64_t round_ = 0;
  bool started_ = false, finished_ = false, gave_up_ = false;
  ProtocolStats stats_;
};

}  // namespace

Result<std::unique_ptr<Protocol>> make_dpsgd_protocol(const ProtocolOptions& opt, const ParamStore* params) {
  if (!params) return Error(Code::kInvalidArgument, "dpsgd needs a parameter store");
  int n = static_cast<int>(opt.peers.size());
  if (n < 2) return Error(Code::kInvalidArgument, "dpsgd needs the addresses of at least 2 peers");
  if (opt.id < 0 || opt.id >= n) return Error(Code::kInvalidArgument, "dpsgd: peer id outside the peer list");
  MYCEL_ASSIGN_OR_RETURN(auto topo, make_topology(opt.topology, n, opt.degree, opt.experiment_seed));
  return std::unique_ptr<Protocol>(std::make_unique<Dpsgd>(opt, params, std::move(topo)));
}

}  // namespace mycel::runtime
