// Kill and resume through the mycel binary: a gossip swarm of real peer processes over UCX on
// loopback (Spambase, logistic regression); one peer is SIGKILLed and restarted with --resume. It
// must go on from its last checkpoint (its age and its model, not the initial ones), and the
// swarm must keep learning. Needs scripts/fetch-data.sh spambase (skipped with the reason).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/version.h"
#include "runtime/engine/checkpoint.h"
#include "tests/runtime/process_util.h"

namespace mycel::runtime {
namespace {

namespace fs = std::filesystem;
using mycel::test::free_port;
using mycel::test::have_spambase;
using mycel::test::json_number;
using mycel::test::mycel_bin;
using mycel::test::slurp;
using mycel::test::spawn;
using mycel::test::wait_exit;
using Clock = std::chrono::steady_clock;

// peer-ID.csv as rows of name -> value.
std::vector<std::map<std::string, double>> read_csv(const fs::path& path) {
  std::ifstream f(path);
  std::string line;
  std::vector<std::string> names;
  std::vector<std::map<std::string, double>> rows;
  auto split = [](const std::string& l) {
    std::vector<std::string> out;
    std::stringstream ss(l);
    std::string x;
    while (std::getline(ss, x, ',')) out.push_back(x);
    return out;
  };
  if (!std::getline(f, line)) return rows;
  names = split(line);
  while (std::getline(f, line)) {
    auto v = split(line);
    if (v.size() != names.size()) continue;
    std::map<std::string, double> r;
    for (size_t i = 0; i < v.size(); ++i) r[names[i]] = std::strtod(v[i].c_str(), nullptr);
    rows.push_back(std::move(r));
  }
  return rows;
}

TEST(Resume, KilledGossipPeerGoesOnFromItsCheckpoint) {
  if (!MYCEL_BUILD_UCX) GTEST_SKIP() << "built without UCX: peer processes need it";
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-resume-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const fs::path out = dir / "out";
  const double duration = 18;
  std::ofstream(dir / "c.yaml") << "name: t\ndata:\n  dataset: spambase\n  partition: iid\nmodel: logreg\n"
                                   "train:\n  lr: 0.1\n  local_steps: 2\n  momentum: 0.5\n"
                                   "protocol:\n  period_s: 0.3\n  peer_timeout_s: 2\npeers:\n  count: 3\n"
                                   "run:\n  duration_s: "
                                << duration << "\neval:\n  every_s: 1\ncheckpoint:\n  every_s: 1\n  keep: 3\n"
                                << "output: " << out.string() << "\n";
  std::vector<std::string> addr;
  for (int i = 0; i < 3; ++i) addr.push_back("ucx://127.0.0.1:" + std::to_string(free_port()));
  const std::string seeds = addr[0] + "," + addr[1];
  auto peer_args = [&](int i) {
    return std::vector<std::string>{mycel_bin(), "--log-level", "warn", "--threads", "1", "peer", "--config",
                                    (dir / "c.yaml").string(), "--id", std::to_string(i), "--listen", addr[i],
                                    "--seeds", seeds, "--out", out.string()};
  };
  std::vector<pid_t> pids;
  for (int i = 0; i < 3; ++i) pids.push_back(spawn(peer_args(i), (dir / ("p" + std::to_string(i) + ".log")).string()));
  // Peer 2 learns for a while and checkpoints (every second); then it is killed without warning.
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(6));
  while (ckpt::list(out.string(), 2).size() < 2 && Clock::now() - t0 < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  kill(pids[2], SIGKILL);
  EXPECT_EQ(wait_exit(pids[2]), 128 + SIGKILL);
  auto files = ckpt::list(out.string(), 2);
  ASSERT_FALSE(files.empty()) << "peer 2 wrote no checkpoint in 20 s: " << slurp(dir / "p2.log");
  // Every checkpoint left by the killed peer reads back whole (atomic writes).
  for (const auto& f : files) {
    auto c = ckpt::read_file(f.path);
    EXPECT_TRUE(c.is_ok()) << c.status().to_string();
  }
  auto newest = ckpt::read_file(files.front().path);
  ASSERT_TRUE(newest.is_ok()) << newest.status().to_string();
  const uint64_t ckpt_age = newest->header.age;
  EXPECT_GT(ckpt_age, 10u) << "the checkpoint holds a model that barely trained";
  const size_t rows_before = read_csv(out / "peer-2.csv").size();

  // Back with --resume, on a new port (the old one may be held for a minute after a crash).
  addr[2] = "ucx://127.0.0.1:" + std::to_string(free_port());
  auto again = peer_args(2);
  again.push_back("--resume");
  again.push_back(out.string());
  pid_t back = spawn(again, (dir / "p2-again.log").string());
  for (int i = 0; i < 2; ++i)
    EXPECT_EQ(wait_exit(pids[i]), 0) << slurp(dir / ("p" + std::to_string(i) + ".log"));
  EXPECT_EQ(wait_exit(back), 0) << slurp(dir / "p2-again.log");
  const std::string log = slurp(dir / "p2-again.log");
  // It says which checkpoint it used, with the age it holds.
  EXPECT_NE(log.find("resuming from " + files.front().path + " (checkpoint " + std::to_string(files.front().sequence) +
                     ", age " + std::to_string(ckpt_age) + ","),
            std::string::npos)
      << log;
  // Its CSV goes on (appended); the first evaluation after the restart is of the checkpoint's
  // model: its age and accuracy, not the initial model's.
  auto rows = read_csv(out / "peer-2.csv");
  ASSERT_GT(rows.size(), rows_before) << "no rows after the restart";
  const auto& initial = rows.front();
  const auto& before = rows[rows_before - 1];
  const auto& first_after = rows[rows_before];
  EXPECT_GE(first_after.at("time_s"), newest->header.peer_seconds - 1e-3) << "the run's clock restarted";
  EXPECT_GE(first_after.at("age"), static_cast<double>(ckpt_age)) << "the age restarted";
  EXPECT_GT(first_after.at("test_accuracy"), 0.75) << "initial model accuracy " << initial.at("test_accuracy");
  EXPECT_NEAR(first_after.at("test_accuracy"), before.at("test_accuracy"), 0.08);
  // The swarm kept learning, the resumed peer with it.
  const std::string j = slurp(out / "peer-2.json");
  std::printf("kill/resume: checkpoint %llu at %.2f s, age %llu; initial accuracy %.4f; last row before the kill "
              "%.4f (age %.0f); first row after --resume %.4f (age %.0f, %.2f s); final %.4f (age %.0f)\n",
              static_cast<unsigned long long>(files.front().sequence), newest->header.peer_seconds,
              static_cast<unsigned long long>(ckpt_age), initial.at("test_accuracy"), before.at("test_accuracy"),
              before.at("age"), first_after.at("test_accuracy"), first_after.at("age"), first_after.at("time_s"),
              json_number(j, "test_accuracy"), json_number(j, "age"));
  ASSERT_FALSE(j.empty()) << log;
  EXPECT_GT(json_number(j, "age"), static_cast<double>(ckpt_age));
  double merges_at_ckpt = -1;  // the counters go on from the checkpoint's
  for (const auto& [k, v] : newest->counters)
    if (k == "merges") merges_at_ckpt = static_cast<double>(v);
  EXPECT_GE(merges_at_ckpt, 0) << "the checkpoint carries no merge counter";
  EXPECT_GT(json_number(j, "merges"), merges_at_ckpt) << "the resumed peer merged no model after the restart: " << j;
  EXPECT_GT(json_number(j, "test_accuracy"), 0.8) << j;
  for (int i = 0; i < 2; ++i) {
    const std::string pj = slurp(out / ("peer-" + std::to_string(i) + ".json"));
    EXPECT_GT(json_number(pj, "test_accuracy"), 0.8) << pj;
  }
  // The resumed peer's own checkpoints go on after the one it resumed from.
  auto later = ckpt::list(out.string(), 2);
  ASSERT_FALSE(later.empty());
  EXPECT_GT(later.front().sequence, files.front().sequence);
  auto last = ckpt::read_file(later.front().path);
  ASSERT_TRUE(last.is_ok()) << last.status().to_string();
  EXPECT_GE(last->header.peer_seconds, duration - 0.5) << "the last checkpoint is not the clean stop's";
  fs::remove_all(dir);
}


// `mycel run --resume RUN_DIR`: a whole swarm restarted from its run folder goes on from its
// checkpoints (ages, clocks and CSVs continue) until the new run.duration_s.
TEST(Resume, RunResumeRestartsAWholeSwarmFromItsRunFolder) {
  if (!MYCEL_BUILD_UCX) GTEST_SKIP() << "built without UCX: peer processes need it";
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-run-resume-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "c.yaml") << "name: t\ndata:\n  dataset: spambase\n  partition: iid\nmodel: logreg\n"
                                   "train:\n  lr: 0.1\n  local_steps: 2\nprotocol:\n  period_s: 0.3\n"
                                   "peers:\n  count: 3\nrun:\n  duration_s: 4\neval:\n  every_s: 1\n"
                                   "checkpoint:\n  every_s: 1\noutput: "
                                << (dir / "runs").string() << "\n";
  pid_t pid = spawn({mycel_bin(), "run", (dir / "c.yaml").string(), "--peer-threads", "1"}, (dir / "run.log").string());
  ASSERT_EQ(wait_exit(pid), 0) << slurp(dir / "run.log");
  fs::path run;
  for (const auto& e : fs::directory_iterator(dir / "runs")) run = e.path();
  std::vector<uint64_t> ages;
  for (int i = 0; i < 3; ++i) {
    auto c = ckpt::read_file(ckpt::list(run.string(), i).at(0).path);
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    EXPECT_GE(c->header.peer_seconds, 4.0) << "the last checkpoint is not the end of run's";
    ages.push_back(c->header.age);
  }
  pid = spawn({mycel_bin(), "run", "--resume", run.string(), "--set", "run.duration_s=7", "--peer-threads", "1"},
              (dir / "run2.log").string());
  ASSERT_EQ(wait_exit(pid), 0) << slurp(dir / "run2.log");
  EXPECT_NE(slurp(dir / "run2.log").find("resuming 3 peers"), std::string::npos) << slurp(dir / "run2.log");
  for (int i = 0; i < 3; ++i) {
    const std::string log = slurp(run / ("peer-" + std::to_string(i) + ".log"));
    EXPECT_NE(log.find("resuming from"), std::string::npos) << log;
    const std::string j = slurp(run / ("peer-" + std::to_string(i) + ".json"));
    EXPECT_GT(json_number(j, "age"), static_cast<double>(ages[static_cast<size_t>(i)])) << j;
    EXPECT_GT(json_number(j, "test_accuracy"), 0.8) << j;
    auto rows = read_csv(run / ("peer-" + std::to_string(i) + ".csv"));
    ASSERT_FALSE(rows.empty());
    EXPECT_GE(rows.back().at("time_s"), 6.9) << "the clock did not go on from the checkpoint";
  }
  fs::remove_all(dir);
}


std::string one_peer_config(const fs::path& dir, const std::string& extra, double duration = 3) {
  std::ofstream(dir / "c.yaml") << "name: t\ndata:\n  dataset: spambase\n  partition: iid\nmodel: logreg\n"
                                   "train:\n  lr: 0.1\n  local_steps: 2\nprotocol:\n  period_s: 0.3\n"
                                   "peers:\n  count: 1\n  transport: inproc\nrun:\n  duration_s: "
                                << duration << "\neval:\n  every_s: 1\n" << extra;
  return (dir / "c.yaml").string();
}

// A folder where no checkpoint can be written: every failure is counted and logged, the run
// goes on, and the peer exits non-zero naming the last checkpoint (results still written).
TEST(Resume, UnwritableCheckpointFolderIsAnErrorAndACounterNotACrash) {
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-ckpt-unwritable-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "a-file") << "x";
  const std::string cfg = one_peer_config(dir, "checkpoint:\n  every_s: 0.5\n  dir: " + (dir / "a-file" / "ck").string() + "\n");
  pid_t pid = spawn({mycel_bin(), "--threads", "1", "peer", "--config", cfg, "--id", "0", "--listen", "inproc://a",
                     "--out", (dir / "out").string()},
                    (dir / "p.log").string());
  const int rc = wait_exit(pid);
  const std::string log = slurp(dir / "p.log");
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("the last checkpoint: cannot create"), std::string::npos) << log;
  EXPECT_NE(log.find("checkpoint failed (1 so far), the previous one is kept"), std::string::npos) << log;
  const std::string j = slurp(dir / "out" / "peer-0.json");
  EXPECT_GE(json_number(j, "checkpoint_failures"), 4) << j;
  EXPECT_EQ(json_number(j, "checkpoints_written"), 0) << j;
  fs::remove_all(dir);
}

// POST /checkpoint through `mycel ctl RUN_DIR checkpoint`: a checkpoint now, its path answered.
TEST(Resume, CtlCheckpointWritesOneNow) {
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-ckpt-ctl-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string cfg = one_peer_config(dir, "control:\n  enabled: true\n", 20);
  const fs::path out = dir / "out";
  pid_t pid = spawn({mycel_bin(), "--threads", "1", "peer", "--config", cfg, "--id", "0", "--listen", "inproc://a",
                     "--out", out.string()},
                    (dir / "p.log").string());
  const auto t0 = Clock::now();
  while (!fs::exists(out / "control-0.json") && Clock::now() - t0 < std::chrono::seconds(30))
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_TRUE(fs::exists(out / "control-0.json")) << slurp(dir / "p.log");
  pid_t ctl = spawn({mycel_bin(), "ctl", out.string(), "checkpoint"}, (dir / "ctl.log").string());
  EXPECT_EQ(wait_exit(ctl), 0) << slurp(dir / "ctl.log");
  const std::string answer = slurp(dir / "ctl.log");
  auto files = ckpt::list(out.string(), 0);
  ASSERT_EQ(files.size(), 1u) << answer;
  EXPECT_NE(answer.find(files[0].path), std::string::npos) << answer;
  auto c = ckpt::read_file(files[0].path);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->header.model, "logreg");
  pid_t stop = spawn({mycel_bin(), "ctl", out.string(), "stop"}, (dir / "stop.log").string());
  EXPECT_EQ(wait_exit(stop), 0) << slurp(dir / "stop.log");
  EXPECT_EQ(wait_exit(pid), 0) << slurp(dir / "p.log");
  // checkpoint.every_s is 0: the clean stop writes none of its own.
  EXPECT_EQ(ckpt::list(out.string(), 0).size(), 1u);
  fs::remove_all(dir);
}


// `mycel peer --out` to a place that cannot be a folder: exit 2 naming it (was: an uncaught
// filesystem_error, abort).
TEST(Resume, UnwritableOutputFolderIsAnErrorNotAnAbort) {
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-out-unwritable-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "a-file") << "x";
  const std::string cfg = one_peer_config(dir, "");
  pid_t pid = spawn({mycel_bin(), "--threads", "1", "peer", "--config", cfg, "--id", "0", "--listen", "inproc://a",
                     "--out", (dir / "a-file" / "out").string()},
                    (dir / "p.log").string());
  const int rc = wait_exit(pid);
  const std::string log = slurp(dir / "p.log");
  EXPECT_EQ(rc, 2) << log;
  EXPECT_NE(log.find("cannot create the output folder " + (dir / "a-file" / "out").string()), std::string::npos) << log;
  fs::remove_all(dir);
}


// A disk that fills while the peer runs (RLIMIT_FSIZE of 4 KiB on the peer process): the CSV
// rows that do not fit are reported, the result file is still whole, and the peer exits 2.
TEST(Resume, FullDiskForTheCsvIsReportedAndANonZeroExit) {
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-csv-full-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "c.yaml") << "name: t\ndata:\n  dataset: spambase\n  partition: iid\nmodel: logreg\n"
                                   "protocol:\n  period_s: 0.3\npeers:\n  count: 1\n  transport: inproc\n"
                                   "run:\n  duration_s: 3\neval:\n  every_s: 0.02\n  max_test: 200\n";
  const std::string log = (dir / "p.log").string();
  // The result files may not grow past 4096 bytes (a full disk for this peer alone).
  pid_t pid = spawn({mycel_bin(), "--threads", "1", "--log-level", "warn", "peer", "--config", (dir / "c.yaml").string(),
                     "--id", "0", "--listen", "inproc://a", "--out", (dir / "out").string()},
                    log, [] {
                      struct rlimit rl {};
                      rl.rlim_cur = rl.rlim_max = 4096;
                      setrlimit(RLIMIT_FSIZE, &rl);
                    });
  const int rc = wait_exit(pid);
  const std::string text = slurp(log);
  EXPECT_EQ(rc, 2) << text;
  EXPECT_NE(text.find("cannot write peer-0.csv"), std::string::npos) << text;
  EXPECT_NE(text.find("peer-0.csv is incomplete"), std::string::npos) << text;
  // What was written is whole rows: no row cut at the size limit.
  const std::string csv = slurp(dir / "out" / "peer-0.csv");
  ASSERT_FALSE(csv.empty());
  EXPECT_EQ(csv.back(), '\n') << "the CSV ends in a torn row";
  std::istringstream lines(csv);
  std::string line;
  std::getline(lines, line);
  const auto columns = std::count(line.begin(), line.end(), ',');
  int rows = 0;
  while (std::getline(lines, line)) {
    EXPECT_EQ(std::count(line.begin(), line.end(), ','), columns) << "row " << rows << ": " << line;
    ++rows;
  }
  EXPECT_GT(rows, 0);
  const std::string j = slurp(dir / "out" / "peer-0.json");
  EXPECT_FALSE(j.empty());
  EXPECT_GT(json_number(j, "test_accuracy"), 0) << j;
  fs::remove_all(dir);
}


// D-PSGD: a peer SIGKILLed and restarted with --resume on its own port (the transport reuses
// the address at once) goes on from its checkpoint's round and model, not from round 0 and the
// initial model, and is taken back by its ring neighbours.
TEST(Resume, KilledDpsgdPeerGoesOnFromItsRound) {
  if (!MYCEL_BUILD_UCX) GTEST_SKIP() << "built without UCX: peer processes need it";
  if (!have_spambase()) GTEST_SKIP() << "spambase missing: run scripts/fetch-data.sh spambase";
  if (!fs::exists(mycel_bin())) GTEST_SKIP() << "mycel binary not built at " << mycel_bin();
  fs::path dir = fs::temp_directory_path() / ("mycel-resume-dpsgd-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const int n = 4;
  const fs::path out = dir / "out";
  std::ofstream(dir / "c.yaml") << "name: t\ndata:\n  dataset: spambase\n  partition: iid\nmodel: logreg\n"
                                   "train:\n  lr: 0.1\n  local_steps: 20\nprotocol:\n  name: dpsgd\n  topology: ring\n"
                                   "  peer_timeout_s: 2\ncodec:\n  spec: fp32\npeers:\n  count: "
                                << n << "\nrun:\n  duration_s: 14\neval:\n  every_s: 1\ncheckpoint:\n  every_s: 1\n"
                                << "output: " << out.string() << "\n";
  std::vector<std::string> addr;
  for (int i = 0; i < n; ++i) addr.push_back("ucx://127.0.0.1:" + std::to_string(free_port()));
  std::string peers;
  for (const auto& a : addr) peers += (peers.empty() ? "" : ",") + a;
  auto args = [&](int i) {
    return std::vector<std::string>{mycel_bin(), "--log-level", "warn", "--threads", "1", "peer", "--config",
                                    (dir / "c.yaml").string(), "--id", std::to_string(i), "--listen", addr[i],
                                    "--peers", peers, "--out", out.string()};
  };
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) pids.push_back(spawn(args(i), (dir / ("p" + std::to_string(i) + ".log")).string()));
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::seconds(4));
  while (ckpt::list(out.string(), 2).size() < 2 && Clock::now() - t0 < std::chrono::seconds(20))
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  kill(pids[2], SIGKILL);
  EXPECT_EQ(wait_exit(pids[2]), 128 + SIGKILL);
  auto files = ckpt::list(out.string(), 2);
  ASSERT_FALSE(files.empty()) << slurp(dir / "p2.log");
  auto newest = ckpt::read_file(files.front().path);
  ASSERT_TRUE(newest.is_ok()) << newest.status().to_string();
  const uint64_t round = newest->header.age;
  EXPECT_GT(round, 0u) << "the checkpoint holds round 0: nothing to go on from";
  const size_t rows_before = read_csv(out / "peer-2.csv").size();
  auto again = args(2);
  again.push_back("--resume");
  again.push_back(out.string());
  pid_t back = spawn(again, (dir / "p2-again.log").string());
  for (int i : {0, 1, 3}) EXPECT_EQ(wait_exit(pids[i]), 0) << slurp(dir / ("p" + std::to_string(i) + ".log"));
  // Its clock goes on from the checkpoint, so it ends with the others; at most a little later.
  if (wait_exit(back, std::chrono::seconds(10)) < 0) ADD_FAILURE() << "the resumed peer did not stop by itself";
  const std::string log = slurp(dir / "p2-again.log");
  EXPECT_NE(log.find("resuming from " + files.front().path + " (checkpoint " + std::to_string(files.front().sequence) +
                     ", age " + std::to_string(round) + ","),
            std::string::npos)
      << log;
  auto rows = read_csv(out / "peer-2.csv");
  ASSERT_GT(rows.size(), rows_before) << log;
  const auto& first_after = rows[rows_before];
  EXPECT_GE(first_after.at("age"), static_cast<double>(round)) << "the round restarted";
  EXPECT_GT(first_after.at("test_accuracy"), 0.75) << "initial model accuracy " << rows.front().at("test_accuracy");
  const std::string j = slurp(out / "peer-2.json");
  ASSERT_FALSE(j.empty()) << log;
  double merges_at_ckpt = -1;
  for (const auto& [k, v] : newest->counters)
    if (k == "merges") merges_at_ckpt = static_cast<double>(v);
  EXPECT_GT(json_number(j, "merges"), merges_at_ckpt) << "the restarted peer was not taken back: " << j;
  EXPECT_GT(json_number(j, "age"), static_cast<double>(round)) << j;
  for (int i = 0; i < n; ++i) {
    const std::string pj = slurp(out / ("peer-" + std::to_string(i) + ".json"));
    EXPECT_GT(json_number(pj, "test_accuracy"), 0.8) << pj;
  }
  std::printf("dpsgd kill/resume: checkpoint at round %llu (%.2f s); first row after --resume: round %.0f, accuracy "
              "%.4f; final round %.0f, accuracy %.4f\n",
              static_cast<unsigned long long>(round), newest->header.peer_seconds, first_after.at("age"),
              first_after.at("test_accuracy"), json_number(j, "age"), json_number(j, "test_accuracy"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mycel::runtime
