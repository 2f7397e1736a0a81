// The simulator (runtime/sim/): its link and churn models, its config errors, determinism, and
// every live protocol running in it unchanged.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "runtime/config/config.h"
#include "runtime/sim/network.h"
#include "runtime/sim/simulator.h"

namespace mycel::runtime::sim {
namespace {

namespace fs = std::filesystem;

std::string source_dir() {
  const char* s = std::getenv("MYCEL_SOURCE_DIR");
  return s ? s : ".";
}
bool have_spambase() {
  const char* d = std::getenv("MYCEL_DATA");
  fs::path dir = d && *d ? fs::path(d) : fs::path(source_dir()) / "data";
  setenv("MYCEL_DATA", dir.c_str(), 1);
  return fs::exists(dir / "spambase");
}
std::string trace_path() { return source_dir() + "/../shared/data/churn-trace/peersim_session_100_2014.txt"; }

#define REQUIRE_SPAMBASE() \
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase"

ExperimentConfig spam_config(const std::vector<std::string>& sets) {
  const char* yaml = R"(name: simtest
data: {dataset: spambase, partition: iid}
model: logreg
train: {batch: 10, lr: 0.1, local_steps: 1}
protocol: {name: gossip, period_s: 1, view_size: 8, peer_timeout_s: 3, startup_timeout_s: 5}
codec: {spec: fp32}
peers: {count: 40}
network: {latency: 50ms}
run: {duration_s: 60}
eval: {every_s: 10, max_test: 0}
sim: {eval_peers: 0, csv_peers: 0, threads: 1}
)";
  auto c = parse_config(yaml, "sim_test");
  EXPECT_TRUE(c.is_ok()) << c.status().message();
  auto o = apply_overrides(*c, sets);
  EXPECT_TRUE(o.is_ok()) << o.status().message();
  return *o;
}

TEST(SimNetwork, RatesDurationsAndTheirErrors) {
  EXPECT_DOUBLE_EQ(*parse_rate("1Mbit", "k"), 125000.0);
  EXPECT_DOUBLE_EQ(*parse_rate("2.5Gbit", "k"), 312.5e6);
  EXPECT_DOUBLE_EQ(*parse_rate("3MB", "k"), 3e6);
  EXPECT_TRUE(std::isinf(*parse_rate("inf", "k")));
  EXPECT_DOUBLE_EQ(*parse_duration("10ms", "k"), 0.01);
  EXPECT_DOUBLE_EQ(*parse_duration("2h", "k"), 7200);
  for (const char* bad : {"0Mbit", "-1Mbit", "fast", "10", "1Mbps"}) {
    auto r = parse_rate(bad, "network.uplink");
    ASSERT_FALSE(r.is_ok()) << bad;
    EXPECT_NE(r.status().message().find("network.uplink"), std::string::npos) << r.status().message();
  }
  auto neg = parse_duration("-5ms", "network.latency");
  ASSERT_FALSE(neg.is_ok());
  EXPECT_NE(neg.status().message().find("network.latency"), std::string::npos);
  EXPECT_FALSE(parse_distribution("uniform:5ms", "network.latency", false).is_ok());
  auto d = parse_distribution("uniform:10ms,20ms", "network.latency", false);
  ASSERT_TRUE(d.is_ok());
  uint64_t s = 1;
  for (int i = 0; i < 100; ++i) {
    const double x = d->draw(s);
    EXPECT_GE(x, 0.01);
    EXPECT_LE(x, 0.02);
  }
}

TEST(SimNetwork, SerialisationTakesBytesOverRateAndOverlappingTransfersShareTheLink) {
  double up_free = 0, down_free = 0;
  // 10 MB over 1 Mbit/s: 80 s.
  Uplink a = uplink_transfer(0, 10'000'000, 125000, &up_free);
  EXPECT_DOUBLE_EQ(a.end, 80.0);
  // A second one sent at t = 10 waits for the first: it ends at 160 s.
  Uplink b = uplink_transfer(10, 10'000'000, 125000, &up_free);
  EXPECT_DOUBLE_EQ(b.start, 80.0);
  EXPECT_DOUBLE_EQ(b.end, 160.0);
  // The receiver's downlink is slower (0.5 Mbit/s): 160 s for the first one.
  const double lat = 0.1;
  EXPECT_DOUBLE_EQ(downlink_transfer(a.start + lat, a.end + lat, 10'000'000, 62500, &down_free), 160.1);
  // An unlimited downlink delivers when the last byte has crossed the latency.
  double d2 = 0;
  EXPECT_DOUBLE_EQ(downlink_transfer(a.start + lat, a.end + lat, 10'000'000, INFINITY, &d2), 80.1);
}

TEST(SimNetwork, ChurnTraceReplayMatchesTheTraceAndRefusesTooFewUsers) {
  if (!fs::exists(trace_path())) GTEST_SKIP() << "churn trace missing at " << trace_path();
  NetworkSpec ns;
  ns.churn = "trace";
  ns.churn_trace = trace_path();
  auto n = Network::build(ns, 4334, 48 * 3600.0, 1);
  ASSERT_TRUE(n.is_ok()) << n.status().message();
  // The trace's README: 23.2% online on average over the first 48 h with every line at t = 0.
  EXPECT_NEAR(n->mean_online_fraction(48 * 3600.0), 0.232, 0.01);
  EXPECT_EQ(n->trace_users(), 4334u);
  auto too_many = Network::build(ns, 5000, 3600, 1);
  ASSERT_FALSE(too_many.is_ok());
  EXPECT_NE(too_many.status().message().find("churn.wrap"), std::string::npos);
  ns.churn_wrap = true;
  EXPECT_TRUE(Network::build(ns, 5000, 3600, 1).is_ok());
  ns.churn_trace = "/nonexistent/trace.txt";
  EXPECT_FALSE(Network::build(ns, 10, 3600, 1).is_ok());
}

TEST(SimNetwork, ExponentialChurnOnlineFractionIsOnOverOnPlusOff) {
  NetworkSpec ns;
  ns.churn = "exponential";
  ns.churn_on_s = 100;
  ns.churn_off_s = 300;
  auto n = Network::build(ns, 2000, 20000, 7);
  ASSERT_TRUE(n.is_ok());
  EXPECT_NEAR(n->mean_online_fraction(20000), 0.25, 0.02);
  for (size_t p = 0; p < 20; ++p)
    for (auto [t, on] : n->transitions(p)) EXPECT_EQ(n->online(p, t + 1e-6), on);
}

TEST(Sim, BadNetworkSectionsAreConfigErrorsNamingTheKey) {
  REQUIRE_SPAMBASE();
  struct Case {
    std::string set, key;
  } cases[] = {{"network.uplink=0Mbit", "network.uplink"},
               {"network.latency=-10ms", "network.latency"},
               {"network.latency=0", "network.latency"},
               {"churn.model=trace", "churn.trace"},
               {"device=cuda", "device"}};
  for (const auto& c : cases) {
    auto r = run_simulation(spam_config({c.set}), SimOptions{});
    ASSERT_FALSE(r.is_ok()) << c.set;
    EXPECT_NE(r.status().message().find(c.key), std::string::npos) << c.set << ": " << r.status().message();
  }
}

TEST(Sim, RunningOutOfMemoryIsPredictedWithTheLargestPeerCountThatFits) {
  REQUIRE_SPAMBASE();
  SimOptions o;
  o.memory_budget_bytes = 1 << 20;  // 1 MiB
  auto r = run_simulation(spam_config({"peers.count=5000"}), o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("at most"), std::string::npos) << r.status().message();
}

TEST(Sim, GossipLearnsAndIsDeterministicForASeedAtAnyThreadCount) {
  REQUIRE_SPAMBASE();
  auto a = run_simulation(spam_config({}), SimOptions{});
  ASSERT_TRUE(a.is_ok()) << a.status().message();
  EXPECT_GT(a->final_accuracy(), 0.85);
  EXPECT_GT(a->merges, 40u * 40);
  EXPECT_EQ(a->curve.size(), 7u);  // t = 0, 10, ..., 60
  SimOptions two;
  two.threads = 2;
  auto b = run_simulation(spam_config({}), two);
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->threads, 2);
  ASSERT_EQ(a->curve.size(), b->curve.size());
  for (size_t i = 0; i < a->curve.size(); ++i) {
    EXPECT_EQ(a->curve[i].mean_accuracy, b->curve[i].mean_accuracy) << "at " << a->curve[i].time_s;
    EXPECT_EQ(a->curve[i].bytes_sent, b->curve[i].bytes_sent);
  }
  EXPECT_EQ(a->events, b->events);
  auto c = run_simulation(spam_config({"seed=2"}), SimOptions{});
  ASSERT_TRUE(c.is_ok());
  EXPECT_NE(c->events, a->events) << "another seed, another run";
}

TEST(Sim, EveryLiveProtocolRunsAndLearns) {
  REQUIRE_SPAMBASE();
  for (const char* proto : {"push-pull", "dpsgd", "fedavg"}) {
    auto cfg = spam_config({std::string("protocol.name=") + proto, "peers.count=16", "protocol.client_fraction=0.5",
                            "run.duration_s=0", "run.rounds=40"});
    if (std::string(proto) != "push-pull") cfg.duration_s = 120;
    auto r = run_simulation(cfg, SimOptions{});
    ASSERT_TRUE(r.is_ok()) << proto << ": " << r.status().message();
    EXPECT_GT(r->final_accuracy(), 0.8) << proto;
    EXPECT_GT(r->merges, 16u) << proto;
  }
}

TEST(Sim, ChurnLosesMessagesToOfflinePeersButLearningGoesOn) {
  REQUIRE_SPAMBASE();
  auto r = run_simulation(spam_config({"churn.model=exponential", "churn.on_s=20", "churn.off_s=20",
                                       "run.duration_s=120"}),
                          SimOptions{});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_GT(r->lost_receiver_offline, 0u);
  EXPECT_NEAR(r->mean_online_fraction, 0.5, 0.1);
  EXPECT_GT(r->final_accuracy(), 0.8);
  EXPECT_LT(r->curve.back().online, 40u);
}

TEST(Sim, WritesTheRunFolder) {
  REQUIRE_SPAMBASE();
  const std::string dir = ::testing::TempDir() + "/mycel-sim-out";
  fs::remove_all(dir);
  SimOptions o;
  o.out_dir = dir;
  auto r = run_simulation(spam_config({"sim.csv_peers=3"}), o);
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  EXPECT_TRUE(fs::exists(dir + "/summary.json"));
  EXPECT_TRUE(fs::exists(dir + "/curve.csv"));
  EXPECT_TRUE(fs::exists(dir + "/peer-2.csv"));
  EXPECT_FALSE(fs::exists(dir + "/peer-3.csv"));
  EXPECT_GT(fs::file_size(dir + "/peer-0.csv"), 100u);
}

}  // namespace
}  // namespace mycel::runtime::sim
