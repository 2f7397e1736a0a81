// Drives the sans-IO gossip core with a small discrete-event loop: scalar "models", messages
// delivered after a fixed latency, timers honoured. Deterministic for a seed.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <queue>

#include "runtime/core/protocol.h"
#include "tests/runtime/core_sim.h"

namespace mycel::runtime {
namespace {

using simtest::Sim;

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
    // Two steps after each merge and two at each wake-up.
    EXPECT_EQ(n.proto->stats().train_steps, 2 * (n.proto->stats().merges + n.proto->stats().wakeups));
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

namespace mycel::runtime {
namespace {

TEST(GossipCore, PartitionedSubsamplingKeepsAnAgePerSlice) {
  RuntimeParams p;
  p.local_steps = 3;
  p.merge = "age";
  ParamStore ps(p);
  ProtocolOptions o;
  o.self = "inproc://a";
  o.partitions = 4;
  o.seed = 5;
  auto proto = make_gossip_protocol("gossip", o, &ps);
  ASSERT_TRUE(proto.is_ok());
  auto& g = **proto;
  std::vector<Action> out;
  g.start(0, out);
  g.message(0, Message{MsgKind::kShuffle, "inproc://b", 0, 0, 0, 0, {}}, out);  // b is alive
  // Wake-ups send the slices in turn.
  std::vector<uint32_t> parts;
  for (int t = 1; t <= 8; ++t) {
    out.clear();
    g.tick(t * 10.0, out);
    for (auto& a : out)
      if (auto* s = std::get_if<SendModel>(&a)) parts.push_back(s->partition);
    std::vector<Action> ignored;  // b answers the shuffle, so it stays in the view
    g.message(t * 10.0 + 1, Message{MsgKind::kShuffleReply, "inproc://b", 0, 0, 0, 0, {}}, ignored);
  }
  ASSERT_EQ(parts.size(), 8u);
  for (size_t i = 1; i < parts.size(); ++i) EXPECT_EQ(parts[i], (parts[i - 1] + 1) % 4);
  auto before = g.partition_ages();
  ASSERT_EQ(before.size(), 4u);
  for (auto a : before) EXPECT_EQ(a, 8u * 3);  // every slice trained at every wake-up
  // An old slice 2 arrives: only slice 2's age moves to it (then all train).
  out.clear();
  g.message(100, Message{MsgKind::kModel, "inproc://b", 1000, 0, 77, 2, {}}, out);
  float w = -1;
  for (auto& a : out)
    if (auto* m = std::get_if<MergeModel>(&a)) {
      EXPECT_EQ(m->handle, 77u);
      w = m->weight;
    }
  EXPECT_FLOAT_EQ(w, 1000.f / (1000.f + 24.f));
  auto after = g.partition_ages();
  EXPECT_EQ(after[2], 1000u + 3);
  EXPECT_EQ(after[0], 24u + 3);
  EXPECT_EQ(after[3], 24u + 3);
  // A slice index beyond our partitioning is dropped, not merged.
  out.clear();
  g.message(101, Message{MsgKind::kModel, "inproc://b", 5, 0, 78, 9, {}}, out);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_TRUE(std::holds_alternative<Drop>(out[0]));
}

}  // namespace
}  // namespace mycel::runtime
