// Drives the sans-IO gossip core with a small discrete-event loop: scalar "models", messages
// delivered after a fixed latency, timers honoured. Deterministic for a seed.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <queue>

#include "runtime/core/protocol.h"

namespace mycel::runtime {
namespace {

struct Sim {
  struct Node {
    std::unique_ptr<Protocol> proto;
    double x = 0;
    bool alive = true;
    double next_timer = 1e18;
  };
  struct Event {
    double t;
    int seq;
    int to;
    bool is_timer;
    Message msg;
    double value;  // model value carried
    bool operator>(const Event& o) const { return t != o.t ? t > o.t : seq > o.seq; }
  };

  std::vector<Node> nodes;
  ParamStore params;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> q;
  int seq = 0;
  double latency = 0.01;
  uint64_t merges = 0, models = 0;
  double train_drift = 0;  // added to x per train step

  static std::string addr(int i) { return "inproc://n" + std::to_string(i); }
  static int index(const std::string& a) { return std::stoi(a.substr(10)); }

  Sim(int n, const std::string& proto, RuntimeParams p, int seeds = 1) : params(p) {
    for (int i = 0; i < n; ++i) {
      ProtocolOptions o;
      o.self = addr(i);
      for (int s = 0; s < seeds; ++s)
        if (s != i) o.seeds.push_back(addr(s));
      o.seed = 100 + i;
      o.view_size = 6;
      auto pr = make_gossip_protocol(proto, o, &params);
      EXPECT_TRUE(pr.is_ok());
      Node node;
      node.proto = std::move(pr).value();
      node.x = i;  // initial models 0..n-1
      nodes.push_back(std::move(node));
    }
    for (int i = 0; i < n; ++i) {
      std::vector<Action> out;
      nodes[i].proto->start(0, out);
      run_actions(i, 0, out);
    }
  }

  void run_actions(int i, double now, std::vector<Action>& out, double carried = 0) {
    for (auto& a : out) {
      if (auto* s = std::get_if<SendModel>(&a)) {
        ++models;
        Message m{s->kind, addr(i), s->age, {}};
        q.push({now + latency, seq++, index(s->to), false, m, nodes[i].x});
      } else if (auto* v = std::get_if<SendView>(&a)) {
        Message m{v->kind, addr(i), 0, v->entries};
        q.push({now + latency, seq++, index(v->to), false, m, 0});
      } else if (auto* mg = std::get_if<MergeModel>(&a)) {
        ++merges;
        nodes[i].x = (1 - mg->weight) * nodes[i].x + mg->weight * carried;
      } else if (auto* t = std::get_if<Train>(&a)) {
        nodes[i].x += train_drift * t->steps;
      } else if (auto* tm = std::get_if<SetTimer>(&a)) {
        if (tm->at < nodes[i].next_timer - 1e-12 || nodes[i].next_timer <= now) {
          nodes[i].next_timer = tm->at;
          q.push({tm->at, seq++, i, true, {}, 0});
        }
      }
    }
  }

  void run_until(double t_end) {
    while (!q.empty() && q.top().t <= t_end) {
      Event e = q.top();
      q.pop();
      Node& n = nodes[e.to];
      std::vector<Action> out;
      if (e.is_timer) {
        if (!n.alive || std::abs(e.t - n.next_timer) > 1e-12) continue;
        n.next_timer = 1e18;
        n.proto->tick(e.t, out);
        run_actions(e.to, e.t, out);
        continue;
      }
      if (!n.alive) {  // the sender's transport reports the failure
        int from = index(e.msg.from);
        if (nodes[from].alive) {
          nodes[from].proto->peer_down(e.t, addr(e.to), out);
          run_actions(from, e.t, out);
        }
        continue;
      }
      n.proto->message(e.t, e.msg, out);
      run_actions(e.to, e.t, out, e.value);
    }
  }

  double mean() const {
    double s = 0;
    int c = 0;
    for (const auto& n : nodes)
      if (n.alive) { s += n.x; ++c; }
    return s / c;
  }
  double spread() const {
    double lo = 1e18, hi = -1e18;
    for (const auto& n : nodes)
      if (n.alive) { lo = std::min(lo, n.x); hi = std::max(hi, n.x); }
    return hi - lo;
  }
};

RuntimeParams fast_params(const std::string& merge) {
  RuntimeParams p;
  p.period_s = 1.0;
  p.jitter = 0.1;
  p.local_steps = 0;
  p.merge = merge;
  return p;
}

TEST(GossipCore, PushPullUniformReachesConsensusNearTheAverage) {
  Sim s(16, "push-pull", fast_params("uniform"));
  double before = s.mean();
  s.run_until(60);
  // An exchange preserves the sum unless another one crosses it in flight (latency), so the
  // consensus lands near, not exactly at, the initial average.
  EXPECT_NEAR(s.mean(), before, 0.5);
  EXPECT_LT(s.spread(), 1e-3) << "models should agree after 60 periods";
  EXPECT_GT(s.models, 16u * 40);
}

TEST(GossipCore, GossipLearningConvergesAndAgesGrow) {
  RuntimeParams p = fast_params("age");
  p.local_steps = 2;
  Sim s(16, "gossip", p);
  s.run_until(60);
  EXPECT_LT(s.spread(), 0.5);  // consensus (push-only gossip does not preserve the mean)
  for (const auto& n : s.nodes) {
    EXPECT_GT(n.proto->age(), 40u);
    EXPECT_GT(n.proto->stats().merges, 20u);
    EXPECT_EQ(n.proto->stats().train_steps, 2 * n.proto->stats().merges);
  }
}

TEST(GossipCore, SameSeedSameRun) {
  auto run = [] {
    Sim s(8, "gossip", fast_params("age"));
    s.run_until(20);
    std::vector<double> xs;
    for (const auto& n : s.nodes) xs.push_back(n.x);
    return xs;
  };
  EXPECT_EQ(run(), run());
}

TEST(GossipCore, SurvivorsKeepLearningWhenPeersDie) {
  Sim s(20, "push-pull", fast_params("uniform"), 2);
  s.run_until(20);
  for (int i = 0; i < 6; ++i) s.nodes[i].alive = false;  // the seeds die too
  s.run_until(25);
  // Reset survivors to distinct values: they must agree again without the dead.
  for (int i = 6; i < 20; ++i) s.nodes[i].x = i;
  s.run_until(90);
  EXPECT_LT(s.spread(), 1e-2);
  for (int i = 6; i < 20; ++i) {
    for (const auto& d : s.nodes[i].proto->sampling()->view())
      EXPECT_GE(Sim::index(d.address), 6) << "dead peer still in a view";
  }
}

TEST(GossipCore, ParameterReplacementTakesEffectNextCycle) {
  Sim s(4, "gossip", fast_params("age"));
  s.run_until(10);
  uint64_t sent_before = s.models;
  RuntimeParams p = *s.params.get();
  p.period_s = 0.1;  // ten times more often
  ASSERT_TRUE(s.params.replace(p).is_ok());
  s.run_until(20);
  uint64_t sent_fast = s.models - sent_before;
  EXPECT_GT(sent_fast, 4u * 10 * 5) << "a shorter period should send many more models";
}

TEST(GossipCore, UnknownProtocolIsAnError) {
  ParamStore ps(RuntimeParams{});
  ProtocolOptions o;
  o.self = "inproc://x";
  EXPECT_FALSE(make_gossip_protocol("telepathy", o, &ps).is_ok());
  EXPECT_FALSE(make_gossip_protocol("gossip", o, nullptr).is_ok());
}

}  // namespace
}  // namespace mycel::runtime
