#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <queue>
#include <set>

#include "runtime/core/peer_sampling.h"
#include "runtime/core/merge_rule.h"

namespace mycel::runtime {
namespace {

// A deterministic swarm: shuffles are delivered at once; dead peers never answer and the
// initiator learns it (as the transport would report).
struct Swarm {
  std::vector<PeerSampling> peers;
  std::vector<bool> alive;
  double now = 0;

  Swarm(int n, size_t view, size_t shuffle, int seeds) {
    for (int i = 0; i < n; ++i) {
      peers.emplace_back(addr(i), view, shuffle, 1000 + i, 1.0, 8.0);
      alive.push_back(true);
    }
    for (int i = 0; i < n; ++i)
      for (int s = 0; s < seeds; ++s) peers[i].add_seed(addr(s), 0);
  }
  static std::string addr(int i) { return "inproc://p" + std::to_string(i); }
  static int index(const std::string& a) { return std::stoi(a.substr(10)); }

  void deliver(int from, const ShuffleRequest& req) {
    int to = index(req.to);
    if (!alive[to]) {
      peers[from].on_peer_down(req.to, now);
      return;
    }
    auto reply = peers[to].on_shuffle_request(addr(from), req.entries, now);
    peers[from].on_shuffle_reply(req.to, reply, now);
  }

  void round() {
    now += 1.0;
    for (int i = 0; i < static_cast<int>(peers.size()); ++i) {
      if (!alive[i]) continue;
      for (const auto& r : peers[i].due_retries(now)) {
        // A probe is a shuffle request with our own descriptor only.
        deliver(i, ShuffleRequest{r, {Descriptor{addr(i), 0}}});
      }
      if (auto req = peers[i].start_shuffle()) deliver(i, *req);
    }
  }

  // Peers reachable from peer 0 through live views.
  size_t reachable() const {
    std::set<int> seen{0};
    std::queue<int> q;
    q.push(0);
    while (!q.empty()) {
      int p = q.front();
      q.pop();
      for (const auto& d : peers[p].view()) {
        int j = index(d.address);
        if (alive[j] && seen.insert(j).second) q.push(j);
      }
    }
    return seen.size();
  }
};

TEST(PeerSampling, BootstrapsFromOneSeedIntoFullRandomViews) {
  Swarm s(200, 8, 4, 1);
  for (int r = 0; r < 40; ++r) s.round();
  std::map<std::string, int> indegree;
  for (const auto& p : s.peers) {
    EXPECT_EQ(p.view().size(), 8u) << p.self();
    std::set<std::string> uniq;
    for (const auto& d : p.view()) {
      EXPECT_NE(d.address, p.self());
      EXPECT_TRUE(uniq.insert(d.address).second) << "duplicate in view of " << p.self();
      ++indegree[d.address];
    }
  }
  // Nobody knows everyone, yet the seed is not a hub and (almost) everybody is known.
  EXPECT_GE(indegree.size(), 195u);
  int max_in = 0;
  for (const auto& [_, c] : indegree) max_in = std::max(max_in, c);
  EXPECT_LE(max_in, 24) << "in-degree should stay near the view size (8)";
  EXPECT_EQ(s.reachable(), 200u);
}

TEST(PeerSampling, DeadPeersLeaveEveryViewAndTheRestStaysConnected) {
  Swarm s(100, 8, 4, 1);
  for (int r = 0; r < 30; ++r) s.round();
  for (int i = 50; i < 80; ++i) s.alive[i] = false;  // 30% die at once
  for (int r = 0; r < 40; ++r) s.round();
  size_t stale = 0;
  for (int i = 0; i < 100; ++i) {
    if (!s.alive[i]) continue;
    for (const auto& d : s.peers[i].view()) stale += !s.alive[Swarm::index(d.address)];
  }
  EXPECT_EQ(stale, 0u);
  EXPECT_EQ(s.reachable(), 70u);
}

TEST(PeerSampling, ReturningPeerRejoins) {
  Swarm s(40, 6, 3, 2);
  for (int r = 0; r < 20; ++r) s.round();
  s.alive[7] = false;
  for (int r = 0; r < 30; ++r) s.round();
  for (int i = 0; i < 40; ++i) {
    if (i == 7) continue;
    for (const auto& d : s.peers[i].view()) {
      EXPECT_NE(d.address, Swarm::addr(7));
    }
  }
  // It comes back with its old view (all of whose entries it will probe) and is known again.
  s.alive[7] = true;
  for (int r = 0; r < 30; ++r) s.round();
  int knowers = 0;
  for (int i = 0; i < 40; ++i)
    for (const auto& d : s.peers[i].view()) knowers += d.address == Swarm::addr(7);
  EXPECT_GE(knowers, 2);
  EXPECT_EQ(s.reachable(), 40u);
}

TEST(PeerSampling, RetryBackoffGrowsAndStopsWhenHeard) {
  PeerSampling p("inproc://me", 4, 2, 1, 1.0, 8.0);
  p.add_seed("inproc://seed", 0);
  p.add_seed("inproc://me", 0);  // self is ignored
  EXPECT_EQ(p.due_retries(0).size(), 1u);
  EXPECT_TRUE(p.due_retries(0.5).empty());
  std::vector<double> times;
  for (double t = 0; t < 100; t += 0.25)
    if (!p.due_retries(t).empty()) times.push_back(t);
  ASSERT_GE(times.size(), 4u);
  EXPECT_LT(times[1] - times[0], times[3] - times[2] + 1e-9);  // backoff grows
  for (size_t i = 1; i < times.size(); ++i) EXPECT_LE(times[i] - times[i - 1], 8.0 * 1.25 + 0.25);
  p.on_heard("inproc://seed", 100);
  EXPECT_FALSE(p.is_down("inproc://seed"));
  EXPECT_TRUE(p.due_retries(1000).empty());
  ASSERT_EQ(p.view().size(), 1u);
  EXPECT_EQ(*p.random_peer(), "inproc://seed");
}

TEST(MergeRules, RegistryAndWeights) {
  auto names = merge_rules();
  std::set<std::string> got;
  for (const auto& [n, _] : names) got.insert(n);
  EXPECT_TRUE(got.count("age") && got.count("uniform") && got.count("metropolis"));
  auto age = make_merge_rule("age");
  ASSERT_TRUE(age.is_ok());
  EXPECT_FLOAT_EQ((*age)->weight({10, 30, 0, 0}), 0.75f);
  EXPECT_FLOAT_EQ((*age)->weight({0, 0, 0, 0}), 0.5f);
  EXPECT_FLOAT_EQ((*age)->weight({5, 0, 0, 0}), 0.0f);
  EXPECT_EQ((*age)->merged_age({10, 30, 0, 0}), 30u);
  auto uni = make_merge_rule("uniform");
  ASSERT_TRUE(uni.is_ok());
  EXPECT_FLOAT_EQ((*uni)->weight({1, 100, 0, 0}), 0.5f);
  auto mh = make_merge_rule("metropolis");
  ASSERT_TRUE(mh.is_ok());
  EXPECT_FLOAT_EQ((*mh)->weight({0, 0, 2, 4}), 0.2f);
  auto bad = make_merge_rule("median");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_NE(bad.status().message().find("age"), std::string::npos);  // lists the known ones
}

}  // namespace
}  // namespace mycel::runtime
