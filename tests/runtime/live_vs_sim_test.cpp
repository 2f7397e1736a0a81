// The cross-check of issue 11 kept small: one config run by `mycel run` (real peer processes,
// UCX on loopback) and by the simulator (links set to loopback's figures) learns alike: the same
// mean accuracy within the run-to-run spread and the same merge rate. bench/live_vs_sim.py runs
// the 16-peer version and plots both curves.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/version.h"
#include "runtime/config/config.h"
#include "runtime/sim/simulator.h"

namespace mycel::runtime::sim {
namespace {

namespace fs = std::filesystem;

std::string bin() { return std::string(MYCEL_BINARY_DIR) + "/bin/mycel"; }

bool have_spambase() {
  const char* d = std::getenv("MYCEL_DATA");
  fs::path dir = d && *d ? fs::path(d) : fs::path(MYCEL_SOURCE_DIR) / "data";
  setenv("MYCEL_DATA", dir.c_str(), 1);
  return fs::exists(dir / "spambase");
}

// Mean of the last test_accuracy column over the peers' CSVs, and mean merges per peer.
void live_figures(const fs::path& run, int peers, double* acc, double* merges) {
  *acc = 0;
  *merges = 0;
  for (int p = 0; p < peers; ++p) {
    std::ifstream csv(run / ("peer-" + std::to_string(p) + ".csv"));
    std::string line, last;
    while (std::getline(csv, line))
      if (!line.empty()) last = line;
    std::stringstream ss(last);
    std::string f;
    for (int i = 0; i < 3 && std::getline(ss, f, ','); ++i) {
    }
    *acc += std::strtod(f.c_str(), nullptr) / peers;
    std::ifstream js(run / ("peer-" + std::to_string(p) + ".json"));
    auto j = nlohmann::json::parse(js, nullptr, false);
    if (!j.is_discarded()) *merges += j.value("merges", 0.0) / peers;
  }
}

TEST(LiveVsSim, SameConfigLearnsAlikeInRealProcessesAndInTheSimulator) {
  if (!MYCEL_BUILD_UCX) GTEST_SKIP() << "built without UCX: mycel run needs it";
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(bin())) GTEST_SKIP() << "mycel binary not built at " << bin();
  const fs::path dir = fs::temp_directory_path() / ("mycel-livesim-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int peers = 8;
  const std::string yaml =
      "name: livesim\ndata: {dataset: spambase, partition: iid}\nmodel: logreg\n"
      "train: {batch: 32, lr: 0.1, local_steps: 2}\nprotocol: {name: gossip, period_s: 0.3, peer_timeout_s: 2}\n"
      "peers: {count: 8}\nrun: {duration_s: 12}\neval: {every_s: 1, max_test: 0}\n"
      "network: {latency: 1ms}\nsim: {eval_peers: 0, csv_peers: 0, threads: 1}\noutput: " +
      (dir / "runs").string() + "\n";
  std::ofstream(dir / "cfg.yaml") << yaml;
  pid_t pid = fork();
  if (pid == 0) {
    FILE* f = std::fopen((dir / "run.log").c_str(), "w");
    if (f) {
      dup2(fileno(f), 1);
      dup2(fileno(f), 2);
    }
    execl(bin().c_str(), bin().c_str(), "run", (dir / "cfg.yaml").c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "mycel run failed: see " << (dir / "run.log");
  fs::path run;
  for (const auto& e : fs::directory_iterator(dir / "runs"))
    if (e.is_directory()) run = e.path();
  ASSERT_FALSE(run.empty());
  double live_acc = 0, live_merges = 0;
  live_figures(run, peers, &live_acc, &live_merges);

  auto cfg = parse_config(yaml, "live_vs_sim");
  ASSERT_TRUE(cfg.is_ok()) << cfg.status().message();
  auto r = run_simulation(*cfg, SimOptions{});
  ASSERT_TRUE(r.is_ok()) << r.status().message();
  const double sim_merges = static_cast<double>(r->merges) / peers;
  RecordProperty("live_accuracy", std::to_string(live_acc));
  RecordProperty("sim_accuracy", std::to_string(r->final_accuracy()));
  std::printf("live: accuracy %.4f, %.1f merges per peer; sim: accuracy %.4f, %.1f merges per peer\n", live_acc,
              live_merges, r->final_accuracy(), sim_merges);
  EXPECT_GT(live_acc, 0.85);
  EXPECT_NEAR(r->final_accuracy(), live_acc, 0.04);
  // The live peers lose a little to start-up (connections, the first probes): within 35%.
  EXPECT_NEAR(sim_merges, live_merges, 0.35 * live_merges);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mycel::runtime::sim
