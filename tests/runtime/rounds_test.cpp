// Round-based protocols (D-PSGD, FedAvg) and their topologies, driven by the scripted loop.
#include <gtest/gtest.h>

#include <numeric>

#include "runtime/core/topology.h"
#include "tests/runtime/core_sim.h"

namespace mycel::runtime {
namespace {

using simtest::Sim;

TEST(Topology, ShapesAndDegrees) {
  auto ring = make_topology("ring", 8, 0, 1);
  ASSERT_TRUE(ring.is_ok());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(ring->degree(i), 2);
  auto torus = make_topology("torus", 16, 0, 1);
  ASSERT_TRUE(torus.is_ok());
  for (int i = 0; i < 16; ++i) EXPECT_EQ(torus->degree(i), 4);
  auto reg = make_topology("regular", 20, 4, 7);
  ASSERT_TRUE(reg.is_ok());
  for (int i = 0; i < 20; ++i) {
    EXPECT_EQ(reg->degree(i), 4);
    for (int j : reg->adj[i]) {
      EXPECT_NE(i, j);
      EXPECT_TRUE(std::count(reg->adj[j].begin(), reg->adj[j].end(), i)) << "not symmetric";
    }
  }
  auto reg2 = make_topology("regular", 20, 4, 7);
  EXPECT_EQ(reg->adj, reg2->adj);  // every peer builds the same graph from the seed
  auto full = make_topology("complete", 5, 0, 1);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(full->degree(i), 4);
  EXPECT_FALSE(make_topology("regular", 5, 3, 1).is_ok());  // n*k odd
  EXPECT_FALSE(make_topology("star", 5, 0, 1).is_ok());
}

TEST(Topology, MetropolisHastingsIsDoublyStochastic) {
  auto t = make_topology("regular", 12, 3, 3);
  ASSERT_TRUE(t.is_ok());
  auto irregular = make_topology("torus", 6, 0, 1);  // 2x3: degrees differ from a 4-torus
  for (const Topology* g : {&t.value(), &irregular.value()}) {
    int n = static_cast<int>(g->adj.size());
    for (int i = 0; i < n; ++i) {
      double row = g->self_weight(i);
      EXPECT_GE(g->self_weight(i), 0);
      for (int j : g->adj[i]) {
        row += g->weight(i, j);
        EXPECT_DOUBLE_EQ(g->weight(i, j), g->weight(j, i));
      }
      EXPECT_NEAR(row, 1.0, 1e-12);
    }
  }
}

RuntimeParams no_training() {
  RuntimeParams p;
  p.local_steps = 0;
  return p;
}

TEST(Dpsgd, PreservesTheAverageAndReachesConsensus) {
  for (const char* topo : {"ring", "torus", "regular"}) {
    Sim s(16, "dpsgd", no_training(), 0, [&](ProtocolOptions& o) {
      o.topology = topo;
      o.degree = 4;
      o.round_timeout_s = 5;
    });
    double before = s.mean();
    s.run_until(30);  // rounds complete as fast as messages flow (latency 0.01)
    // Metropolis mixing is doubly stochastic: the average stays, up to the fp32 rounding of
    // the merge weights (a wrong weight would move it by whole units).
    EXPECT_NEAR(s.mean(), before, 2e-3) << topo;
    EXPECT_LT(s.spread(), 1e-3) << topo;
    EXPECT_GT(s.nodes[0].proto->stats().wakeups, 100u) << topo;
    EXPECT_EQ(s.held.size(), 0u) << topo << ": every payload merged or dropped";
  }
}

TEST(Dpsgd, RoundsGoOnWhenANeighbourDies) {
  Sim s(8, "dpsgd", no_training(), 0, [](ProtocolOptions& o) { o.round_timeout_s = 0.5; });
  s.run_until(5);
  uint64_t r0 = s.nodes[1].proto->stats().wakeups;
  s.nodes[0].alive = false;
  for (int i = 1; i < 8; ++i) s.nodes[i].x = i;
  s.run_until(40);
  EXPECT_GT(s.nodes[1].proto->stats().wakeups, r0 + 20) << "a dead neighbour must not stall rounds";
  EXPECT_LT(s.spread(), 1e-2);
}

TEST(FedAvg, ServerAveragesClientUpdatesWeightedBySamples) {
  RuntimeParams p;
  p.local_steps = 1;
  Sim s(5, "fedavg", p, 0, [](ProtocolOptions& o) {
    o.client_fraction = 1.0;
    o.local_epochs = 1;
    o.batch = 32;
    o.local_samples = o.id == 0 ? 0 : 64;  // two batches -> 2 steps per round
    o.round_timeout_s = 5;
  });
  s.train_drift = 1.0;  // each client step adds 1; the global model starts at 0
  s.run_until(3.0);
  uint64_t rounds = s.nodes[0].proto->stats().wakeups;
  ASSERT_GT(rounds, 10u);
  // Every round: clients take the global model, add 2, the server averages: +2 per round
  // (weights travel as fp32, hence the tolerance).
  EXPECT_NEAR(s.nodes[0].x, 2.0 * static_cast<double>(rounds), 1e-4 * static_cast<double>(rounds));
  EXPECT_EQ(s.nodes[0].proto->stats().merges, 4 * s.nodes[0].proto->stats().wakeups);
}

TEST(FedAvg, PartialParticipationAndDeadClients) {
  RuntimeParams p;
  p.local_steps = 1;
  Sim s(11, "fedavg", p, 0, [](ProtocolOptions& o) {
    o.client_fraction = 0.3;  // 3 of 10 clients per round
    o.local_samples = o.id == 0 ? 0 : 32;
    o.round_timeout_s = 0.5;
  });
  s.run_until(2);
  EXPECT_EQ(s.nodes[0].proto->stats().models_sent, 3 * (s.nodes[0].proto->stats().wakeups + 1));
  for (int i = 1; i <= 5; ++i) s.nodes[i].alive = false;
  uint64_t before = s.nodes[0].proto->stats().wakeups;
  s.run_until(20);
  EXPECT_GT(s.nodes[0].proto->stats().wakeups, before + 10) << "dead clients must not stall the server";
}

TEST(Protocols, FixedMembershipNeedsThePeerList) {
  ParamStore ps(RuntimeParams{});
  ProtocolOptions o;
  o.self = "inproc://a";
  EXPECT_FALSE(make_protocol("dpsgd", o, &ps).is_ok());
  EXPECT_FALSE(make_protocol("fedavg", o, &ps).is_ok());
  o.peers = {"inproc://a", "inproc://b"};
  EXPECT_TRUE(make_protocol("dpsgd", o, &ps).is_ok());
  EXPECT_TRUE(make_protocol("fedavg", o, &ps).is_ok());
  EXPECT_FALSE(make_protocol("raft", o, &ps).is_ok());
}

}  // namespace
}  // namespace mycel::runtime

namespace mycel::runtime {
namespace {

TEST(Dpsgd, APeerThatFellBehindCatchesUp) {
  Sim s(6, "dpsgd", no_training(), 0, [](ProtocolOptions& o) { o.round_timeout_s = 0.3; });
  s.run_until(2);
  s.nodes[3].alive = false;
  s.run_until(5);
  uint64_t behind = s.nodes[3].proto->stats().wakeups, ahead = s.nodes[0].proto->stats().wakeups;
  ASSERT_GT(ahead, behind + 5);
  s.nodes[3].alive = true;  // back: its own timer wakes it
  std::vector<Action> out;
  s.nodes[3].next_timer = 1e18;
  s.nodes[3].proto->tick(5.0, out);
  s.run_actions(3, 5.0, out);
  s.run_until(8);
  uint64_t r3 = s.nodes[3].proto->stats().wakeups, r0 = s.nodes[0].proto->stats().wakeups;
  EXPECT_GT(r3, ahead) << "the returning peer must jump forward, not replay";
  EXPECT_LE(r0 - std::min(r0, r3), 2u) << "back in lockstep with its neighbours";
  EXPECT_LT(s.spread(), 1e-2);
}

}  // namespace
}  // namespace mycel::runtime
