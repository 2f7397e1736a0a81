// Round-based protocols (D-PSGD, FedAvg) and their topologies, driven by the scripted loop.
#include <gtest/gtest.h>

#include <numeric>
#include <random>

#include "common/log.h"

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

namespace mycel::runtime {
namespace {

// Peers started in random order with random delays (0-5 s): nobody runs rounds alone, every
// round of every peer merges every neighbour, and nobody is ever counted as down.
TEST(Dpsgd, PeersStartedInAnyOrderCompleteEveryRound) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> delay(0, 5);
    std::vector<double> starts(16);
    for (auto& t : starts) t = delay(rng);
    Sim s(16, "dpsgd", no_training(), 0, [&](ProtocolOptions& o) {
      o.topology = "regular";
      o.degree = 3;
      o.round_timeout_s = 2;
      o.startup_timeout_s = 30;
      o.max_rounds = 100;
      o.experiment_seed = seed;
    }, starts);
    const double before = 7.5;  // the mean of the initial models 0..15
    s.run_until(60);
    for (int i = 0; i < 16; ++i) {
      const auto& st = s.nodes[i].proto->stats();
      EXPECT_EQ(st.wakeups, 100u) << "peer " << i << " seed " << seed;
      EXPECT_EQ(st.merges, 300u) << "peer " << i << ": every round merges its 3 neighbours";
      EXPECT_EQ(st.peers_down, 0u) << "peer " << i << ": a peer not started yet is not down";
      EXPECT_EQ(st.rounds_timed_out, 0u) << "peer " << i;
      EXPECT_EQ(st.rounds_skipped, 0u) << "peer " << i;
    }
    EXPECT_NEAR(s.mean(), before, 2e-3);
    EXPECT_LT(s.spread(), 1e-3);
    EXPECT_EQ(s.held.size(), 0u) << "every payload merged or dropped";
  }
}

// The largest round gap between two running neighbours.
uint64_t max_neighbour_gap(Sim& s, const Topology& t) {
  uint64_t gap = 0;
  for (size_t i = 0; i < s.nodes.size(); ++i)
    for (int j : t.adj[i]) {
      if (!s.nodes[i].alive || !s.nodes[j].alive) continue;
      uint64_t a = s.nodes[i].proto->age(), b = s.nodes[j].proto->age();
      gap = std::max(gap, a > b ? a - b : b - a);
    }
  return gap;
}

// A neighbour killed mid-run and restarted (from scratch, as a crashed process is): the others
// go on after peer_timeout_s of its silence and never more than one round apart; the restarted
// peer jumps to its neighbours' round; with everyone back, every round merges every neighbour.
TEST(Dpsgd, KilledAndRestartedNeighbour) {
  auto topo = make_topology("regular", 12, 3, 5);
  ASSERT_TRUE(topo.is_ok());
  Sim s(12, "dpsgd", no_training(), 0, [](ProtocolOptions& o) {
    o.topology = "regular";
    o.degree = 3;
    o.round_timeout_s = 1;
    o.experiment_seed = 5;
  });
  s.latency = 0.02;
  for (double t = 0.5; t <= 3; t += 0.5) {
    s.run_until(t);
    EXPECT_LE(max_neighbour_gap(s, *topo), 1u) << "t=" << t;
  }
  const uint64_t merges0 = s.nodes[1].proto->stats().merges, r0 = s.nodes[1].proto->age();
  EXPECT_EQ(merges0, 3 * r0) << "before the crash every round is complete";
  s.crash(0);
  s.restart_at(0, 6);
  for (double t = 3.5; t <= 12; t += 0.5) {
    s.run_until(t);
    if (t < 5.9 || t > 7) {
      EXPECT_LE(max_neighbour_gap(s, *topo), 1u) << "t=" << t;
    }
  }
  // Nobody stalled: rounds went on while peer 0 was gone and after it came back.
  const uint64_t r1 = s.nodes[1].proto->age();
  EXPECT_GT(r1, r0 + 50);
  EXPECT_GE(s.nodes[0].proto->age() + 1, r1) << "the restarted peer caught up";
  EXPECT_GT(s.nodes[0].proto->stats().rounds_skipped, 0u) << "it jumped, not replayed";
  for (int j : topo->adj[0])
    EXPECT_EQ(s.nodes[j].proto->stats().peers_down, 1u) << "neighbour " << j << " saw peer 0 go once";
  for (int i = 1; i < 12; ++i) {
    bool nb0 = std::count(topo->adj[0].begin(), topo->adj[0].end(), i) > 0;
    if (!nb0) {
      EXPECT_EQ(s.nodes[i].proto->stats().peers_down, 0u) << "peer " << i << ": a waiting neighbour is not dead";
    }
  }
  // Once back, every round is complete again.
  const uint64_t m2 = s.nodes[1].proto->stats().merges, r2 = s.nodes[1].proto->age();
  s.run_until(16);
  const uint64_t m3 = s.nodes[1].proto->stats().merges, r3 = s.nodes[1].proto->age();
  EXPECT_GT(r3, r2 + 20);
  EXPECT_EQ(m3 - m2, 3 * (r3 - r2));
  EXPECT_LT(s.spread(), 1e-2);
  EXPECT_EQ(s.held.size(), 0u);
}

TEST(Dpsgd, StartsWithoutAMissingNeighbourAtTheStartupDeadline) {
  log::Capture cap;
  std::vector<double> starts(6, 0);
  starts[2] = 1e9;  // never starts
  Sim s(6, "dpsgd", no_training(), 0, [](ProtocolOptions& o) {
    o.round_timeout_s = 1;
    o.startup_timeout_s = 3;
  }, starts);
  s.run_until(2.9);
  // Peers 1 and 3 wait for peer 2 (they may join round 0 when a neighbour sends its model, but
  // not finish it), and nobody can run more than one round ahead of them.
  for (int i = 0; i < 6; ++i) EXPECT_LE(s.nodes[i].proto->stats().wakeups, 1u) << "peer " << i;
  EXPECT_EQ(s.nodes[1].proto->stats().wakeups, 0u) << "round 0 waits for every neighbour";
  s.run_until(10);
  EXPECT_GT(s.nodes[0].proto->stats().wakeups, 50u);
  EXPECT_EQ(s.nodes[1].proto->stats().peers_down, 0u) << "never up, so never down";
  EXPECT_TRUE(cap.contains("without 1 of 2 neighbours (inproc://n2)"));
}

}  // namespace
}  // namespace mycel::runtime
