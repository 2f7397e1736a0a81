// FedAvg (McMahan et al., AISTATS 2017), the centralised baseline, on the same runtime,
// transport and codecs: peer 0 is the server, peers 1..N-1 the clients. Each round the server
// sends the global model to a random fraction C of the clients (at least one); a client replaces
// its model with it, trains E local epochs with batch B on its shard and sends its model back
// with its sample count; the server's new model is the sample-weighted average of the replies,
// streamed like D-PSGD's merge (a_k = n_k / (n_1 + ... + n_k), the first reply replacing the
// old model). A round ends when every selected client has answered or after round_timeout_s,
// averaging whatever arrived (the global model is kept when nothing did). A failed send to a
// selected client does not end the round at once (the client may be restarting); clients whose
// connection is lost are not selected until they answer a probe. Round 0 starts once every
// client has been heard from (probed with backoff) or at the start-up deadline.
#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <set>

#include "common/log.h"
#include "runtime/core/liveness.h"
#include "runtime/core/protocol.h"
#include "runtime/core/rng.h"

namespace mycel::runtime {
namespace {

class FedAvg final : public Protocol {
 public:
  FedAvg(const ProtocolOptions& opt, const ParamStore* params)
      : opt_(opt),
        params_(params),
        rng_(opt.experiment_seed * 31 + 7),
        live_(opt.peers.size(), std::numeric_limits<double>::infinity()) {
    for (size_t i = 0; i < opt_.peers.size(); ++i) index_[opt_.peers[i]] = static_cast<int>(i);
  }

  std::string_view name() const override { return "fedavg"; }
  bool server() const { return opt_.id == 0; }

  void start(double now, std::vector<Action>& out) override {
    live_.heard(static_cast<size_t>(opt_.id), now);  // ourselves
    start_deadline_ = now + opt_.startup_timeout_s;
    probe(now, out);
    out.push_back(SetTimer{next_timer(now)});
  }

  void tick(double now, std::vector<Action>& out) override {
    if (server() && !started_ && now + 1e-9 >= start_deadline_) {
      auto missing = live_.give_up_pending();
      if (!missing.empty()) {
        std::string names;
        for (size_t c : missing) names += (names.empty() ? "" : ", ") + opt_.peers[c];
        MYCEL_LOG_WARN("protocol", "fedavg: starting round 0 after {:.0f} s without {} of {} clients ({})",
                       opt_.startup_timeout_s, missing.size(), opt_.peers.size() - 1, names);
      }
      begin_round(now, out);
    } else if (server() && started_ && now + 1e-9 >= deadline_) {
      ++stats_.rounds_timed_out;
      end_round(now, out);
    }
    probe(now, out);
    out.push_back(SetTimer{next_timer(now)});
  }

  void message(double now, const Message& msg, std::vector<Action>& out) override {
    auto it = index_.find(msg.from);
    const bool model = msg.kind == MsgKind::kModel || msg.kind == MsgKind::kModelReply;
    if (it == index_.end()) {
      if (model) out.push_back(Drop{msg.handle});
      return;
    }
    live_.heard(static_cast<size_t>(it->second), now);
    if (!model) {  // a probe: answered, so a peer that started after us knows we are here
      if (msg.kind == MsgKind::kShuffle) out.push_back(SendView{msg.from, MsgKind::kShuffleReply, {}});
      maybe_start(now, out);
      return;
    }
    ++stats_.models_received;
    if (!server()) {
      // The global model of round msg.age: take it, train E epochs, answer with the result.
      if (it->second != 0 || msg.kind != MsgKind::kModel) {
        out.push_back(Drop{msg.handle});
        return;
      }
      out.push_back(MergeModel{msg.handle, 1.0f});
      auto p = params_->get();
      uint64_t batches = (opt_.local_samples + static_cast<uint64_t>(opt_.batch) - 1) /
                         static_cast<uint64_t>(std::max(1, opt_.batch));
      int steps = static_cast<int>(std::max<uint64_t>(1, batches * static_cast<uint64_t>(opt_.local_epochs)));
      out.push_back(Train{steps, p->lr, msg.age});
      stats_.train_steps += static_cast<uint64_t>(steps);
      out.push_back(SendModel{msg.from, MsgKind::kModelReply, msg.age, opt_.local_samples});
      ++stats_.models_sent;
      stats_.wakeups = std::max<uint64_t>(stats_.wakeups, msg.age + 1);
      return;
    }
    int c = it->second;
    if (msg.kind != MsgKind::kModelReply || msg.age != round_ || !waiting_.count(c) || msg.version == 0) {
      out.push_back(Drop{msg.handle});
      return;
    }
    waiting_.erase(c);
    cum_ += static_cast<double>(msg.version);
    out.push_back(MergeModel{msg.handle, static_cast<float>(static_cast<double>(msg.version) / cum_)});
    ++stats_.merges;
    if (waiting_.empty()) end_round(now, out);
  }

  void peer_up(double now, const std::string& addr, std::vector<Action>& out) override {
    auto it = index_.find(addr);
    if (it == index_.end()) return;
    live_.heard(static_cast<size_t>(it->second), now);
    maybe_start(now, out);
  }
  void peer_down(double now, const std::string& addr, std::vector<Action>& out) override {
    auto it = index_.find(addr);
    if (it == index_.end()) return;
    const size_t i = static_cast<size_t>(it->second);
    if (live_.reachable(i)) ++stats_.peers_down;  // was up; a pending one is not "down"
    live_.lost(i, now);
    out.push_back(SetTimer{next_timer(now)});
  }

  uint64_t age() const override { return server() ? round_ : stats_.wakeups; }
  const ProtocolStats& stats() const override { return stats_; }

  std::vector<uint8_t> save_state() const override {
    StateWriter w;
    w.u8('F');
    w.u8(1);
    w.u64(round_);
    w.u64(rng_.state());
    save_stats(w, stats_);
    return w.take();
  }
  Status restore_state(std::span<const uint8_t> state) override {
    StateReader r(state);
    if (r.u8() != 'F' || r.u8() != 1 || !r.ok())
      return Error(Code::kInvalidArgument, "protocol state: not the state of a fedavg peer (layout 1)");
    const uint64_t round = r.u64(), rng = r.u64();
    ProtocolStats st;
    restore_stats(r, st);
    if (!r.done()) return Error(Code::kCorrupt, "protocol state: fedavg state is malformed");
    round_ = round;
    rng_ = SmallRng(rng);
    stats_ = st;
    return Ok();
  }

 private:
  // The server probes every client it cannot reach now; a client probes the server.
  void probe(double now, std::vector<Action>& out) {
    for (size_t i : live_.due_probes(now)) {
      if (static_cast<int>(i) == opt_.id || (!server() && i != 0)) continue;
      out.push_back(SendView{opt_.peers[i], MsgKind::kShuffle, {}});
    }
  }

  double next_timer(double now) const {
    double t = live_.next_event();
    if (server()) t = std::min(t, started_ ? deadline_ : start_deadline_);
    return std::max(t, now + 1e-3);
  }

  void maybe_start(double now, std::vector<Action>& out) {
    if (!server() || started_) return;
    for (size_t i = 1; i < opt_.peers.size(); ++i)
      if (!live_.ever_heard(i)) return;
    begin_round(now, out);
  }

  void begin_round(double now, std::vector<Action>& out) {
    started_ = true;
    int clients = static_cast<int>(opt_.peers.size()) - 1;
    int m = std::clamp(static_cast<int>(std::lround(opt_.client_fraction * clients)), 1, clients);
    // Clients reachable now first (shuffled), then the others: a client whose connection is
    // lost is only chosen when too few are reachable.
    std::vector<int> ids(static_cast<size_t>(clients));
    for (int i = 0; i < clients; ++i) ids[static_cast<size_t>(i)] = i + 1;
    std::shuffle(ids.begin(), ids.end(), rng_);
    std::stable_partition(ids.begin(), ids.end(), [&](int c) { return live_.reachable(static_cast<size_t>(c)); });
    waiting_.clear();
    for (int i = 0; i < m; ++i) {
      int c = ids[static_cast<size_t>(i)];
      waiting_.insert(c);
      out.push_back(SendModel{opt_.peers[static_cast<size_t>(c)], MsgKind::kModel, round_, 0});
      ++stats_.models_sent;
    }
    cum_ = 0;
    deadline_ = now + opt_.round_timeout_s;
    out.push_back(SetTimer{deadline_});
  }

  void end_round(double now, std::vector<Action>& out) {
    ++round_;
    ++stats_.wakeups;
    begin_round(now, out);
  }

  ProtocolOptions opt_;
  const ParamStore* params_;
  SmallRng rng_;
  std::map<std::string, int> index_;
  Liveness live_;  // no silence timeout: clients are silent between the rounds they are chosen for
  std::set<int> waiting_;
  bool started_ = false;
  double cum_ = 0, deadline_ = 0, start_deadline_ = 0;
  uint64_t round_ = 0;
  ProtocolStats stats_;
};

}  // namespace

Result<std::unique_ptr<Protocol>> make_fedavg_protocol(const ProtocolOptions& opt, const ParamStore* params) {
  if (!params) return Error(Code::kInvalidArgument, "fedavg needs a parameter store");
  if (opt.peers.size() < 2)
    return Error(Code::kInvalidArgument, "fedavg needs the addresses of the server and at least one client");
  if (opt.id < 0 || opt.id >= static_cast<int>(opt.peers.size()))
    return Error(Code::kInvalidArgument, "fedavg: peer id outside the peer list");
  return std::unique_ptr<Protocol>(std::make_unique<FedAvg>(opt, params));
}

Result<std::unique_ptr<Protocol>> make_protocol(std::string_view name, const ProtocolOptions& opt,
                                                const ParamStore* params) {
  if (name == "gossip" || name == "push-pull") return make_gossip_protocol(name, opt, params);
  if (name == "dpsgd") return make_dpsgd_protocol(opt, params);
  if (name == "fedavg") return make_fedavg_protocol(opt, params);
  return Error(Code::kInvalidArgument,
               "unknown protocol '" + std::string(name) + "' (expected gossip, push-pull, dpsgd or fedavg)");
}

}  // namespace mycel::runtime
