// D-PSGD (Lian et al., NeurIPS 2017) on a fixed topology, in its adapt-then-combine form: in
// round r each peer takes its local SGD steps, sends its model to its neighbours, and merges
// theirs for round r with Metropolis-Hastings weights. The merge streams: the k-th model to
// arrive is mixed in with a_k = w_k / (w_self + w_1 + ... + w_k), which yields exactly
// (w_self x + sum_k w_k x_k) / (w_self + sum_k w_k) whatever the arrival order, so no received
// model is ever held as an fp32 copy, and a missing neighbour's weight falls back to the peer
// itself. A round ends when every live neighbour's model is in, or after round_timeout_s; a
// neighbour that misses two rounds in a row is not waited for until it is heard from again.
// Models that arrive one round early are held; a model from further ahead makes a peer that
// fell behind jump to that round; late models are dropped.
#include <algorithm>
#include <map>
#include <set>

#include "runtime/core/protocol.h"
#include "runtime/core/topology.h"

namespace mycel::runtime {
namespace {

class Dpsgd final : public Protocol {
 public:
  Dpsgd(const ProtocolOptions& opt, const ParamStore* params, Topology topo)
      : opt_(opt), params_(params), topo_(std::move(topo)) {
    for (size_t i = 0; i < opt_.peers.size(); ++i) index_[opt_.peers[i]] = static_cast<int>(i);
    for (int j : topo_.adj[static_cast<size_t>(opt_.id)]) misses_[j] = 0;
  }

  std::string_view name() const override { return "dpsgd"; }

  void start(double now, std::vector<Action>& out) override { begin_round(now, out); }

  void tick(double now, std::vector<Action>& out) override {
    if (now + 1e-9 >= deadline_) {
      ++stats_.rounds_timed_out;
      for (auto& [j, m] : misses_)
        if (!got_.count(j)) ++m;
      advance(now, out);
    }
    out.push_back(SetTimer{deadline_});
  }

  void message(double now, const Message& msg, std::vector<Action>& out) override {
    if (msg.kind != MsgKind::kModel) {
      if (msg.kind == MsgKind::kModelReply) out.push_back(Drop{msg.handle});
      return;  // no peer sampling: the topology is fixed
    }
    auto it = index_.find(msg.from);
    if (it == index_.end() || !misses_.count(it->second)) {
      out.push_back(Drop{msg.handle});  // not a neighbour
      return;
    }
    int j = it->second;
    misses_[j] = 0;
    ++stats_.models_received;
    resend_if_needed(j, out);
    if (msg.age > round_ + 1) {
      // We fell behind (started late, or were cut off): jump to the sender's round rather than
      // replay rounds whose models are gone.
      stats_.rounds_skipped += msg.age - 1 - round_;
      round_ = msg.age - 1;
      advance(now, out);
    }
    if (msg.age < round_ || (got_.count(j) && msg.age == round_)) {
      out.push_back(Drop{msg.handle});  // late (the sender will catch up from ours) or duplicate
      return;
    }
    if (msg.age == round_ + 1) {
      held_[msg.age].push_back({j, msg.handle});
      return;
    }
    merge(j, msg.handle, out);
    if (round_complete()) advance(now, out);
  }

  void peer_up(double, const std::string& addr, std::vector<Action>& out) override {
    auto it = index_.find(addr);
    if (it != index_.end() && misses_.count(it->second)) {
      misses_[it->second] = 0;
      resend_if_needed(it->second, out);
    }
  }
  void peer_down(double now, const std::string& addr, std::vector<Action>& out) override {
    auto it = index_.find(addr);
    if (it == index_.end() || !misses_.count(it->second)) return;
    ++stats_.peers_down;
    misses_[it->second] = 2;
    unsent_.insert(it->second);  // our model of this round may not have reached it
    if (round_complete()) advance(now, out);
  }

  uint64_t age() const override { return round_; }
  const ProtocolStats& stats() const override { return stats_; }

 private:
  // A neighbour we could not reach (it started late or came back) gets this round's model as
  // soon as it shows signs of life, so a swarm whose peers start at different times still
  // exchanges every round.
  void resend_if_needed(int j, std::vector<Action>& out) {
    if (!unsent_.erase(j)) return;
    out.push_back(SendModel{opt_.peers[static_cast<size_t>(j)], MsgKind::kModel, round_, 0});
    ++stats_.models_sent;
  }

  void merge(int j, uint64_t handle, std::vector<Action>& out) {
    double w = topo_.weight(opt_.id, j);
    cum_ += w;
    out.push_back(MergeModel{handle, static_cast<float>(w / cum_)});
    got_.insert(j);
    ++stats_.merges;
  }

  bool round_complete() const {
    for (const auto& [j, m] : misses_)
      if (m < 2 && !got_.count(j)) return false;
    return true;
  }

  void begin_round(double now, std::vector<Action>& out) {
    auto p = params_->get();
    if (p->local_steps > 0) {
      out.push_back(Train{p->local_steps, p->lr, round_});
      stats_.train_steps += static_cast<uint64_t>(p->local_steps);
    }
    unsent_.clear();
    for (const auto& [j, m] : misses_) {
      out.push_back(SendModel{opt_.peers[static_cast<size_t>(j)], MsgKind::kModel, round_, 0});
      ++stats_.models_sent;
    }
    cum_ = topo_.self_weight(opt_.id);
    got_.clear();
    deadline_ = now + opt_.round_timeout_s;
    out.push_back(SetTimer{deadline_});
  }

  void advance(double now, std::vector<Action>& out) {
    do {
      ++round_;
      stats_.wakeups = round_;
      begin_round(now, out);
      auto h = held_.find(round_);
      if (h != held_.end()) {
        for (auto [j, handle] : h->second) {
          if (got_.count(j)) out.push_back(Drop{handle});
          else merge(j, handle, out);
        }
        held_.erase(h);
      }
      // Anything held for rounds now past is dropped.
      for (auto it = held_.begin(); it != held_.end() && it->first < round_;) {
        for (auto [j, handle] : it->second) out.push_back(Drop{handle});
        it = held_.erase(it);
      }
      // Models held for this round may already complete it; with no live neighbour merged,
      // the round waits for its deadline instead (no spinning through rounds).
    } while (round_complete() && !got_.empty());
  }

  ProtocolOptions opt_;
  const ParamStore* params_;
  Topology topo_;
  std::map<std::string, int> index_;
  std::map<int, int> misses_;  // neighbours -> consecutive rounds missed
  std::set<int> got_;          // neighbours merged this round
  std::set<int> unsent_;       // neighbours reported down since this round's send
  std::map<uint64_t, std::vector<std::pair<int, uint64_t>>> held_;
  double cum_ = 1, deadline_ = 0;
  uint64_t round_ = 0;
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
