// Checkpoints (runtime/engine/checkpoint.h): the file format round trip, every refusal with the
// message naming its field, the atomic write under a failing disk (a file-size limit in a forked
// child), the protocol cores' saved state, the trainer's position, and a real swarm in which a
// SIGKILLed peer comes back with --resume.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <algorithm>

#include "kernels/device.h"
#include "models/model.h"
#include "models/trainer.h"
#include "runtime/core/protocol.h"
#include "runtime/engine/checkpoint.h"
#include "transport/crc32c.h"

namespace mycel::runtime {
namespace {

namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("mycel-ckpt-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::vector<uint8_t> slurp_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void put_bytes(const fs::path& p, const std::vector<uint8_t>& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

ckpt::Header header(const std::string& model = "logreg", size_t n = 1000) {
  ckpt::Header h;
  h.protocol = "gossip";
  h.model = model;
  h.num_params = n;
  h.partitions = 1;
  h.peer_id = 3;
  h.config = {{"seed", "7"}, {"data.dataset", "spambase"}, {"model", model}};
  h.config_hash = ckpt::hash_keys(h.config);
  h.sequence = 5;
  h.peer_seconds = 12.5;
  h.unix_time = 1.7e9;
  h.age = 321;
  return h;
}

ckpt::Checkpoint sample(size_t n = 1000, uint64_t seed = 1) {
  std::mt19937 g(static_cast<uint32_t>(seed));
  std::normal_distribution<float> d;
  ckpt::Checkpoint c;
  c.header = header("logreg", n);
  for (auto* v : {&c.params, &c.velocity, &c.residual}) {
    v->resize(n);
    for (auto& x : *v) x = d(g);
  }
  c.residual_codec = "int8";
  c.protocol_state = {'G', 1, 9, 8, 7};
  c.trainer = ckpt::TrainerPos{4, 96, 1234, 2};
  c.live_params = live_param_values(RuntimeParams{});
  c.params_version = 6;
  c.counters = {{"merges", 17}, {"bytes_sent", 1ull << 40}};
  return c;
}

void expect_same(const ckpt::Checkpoint& a, const ckpt::Checkpoint& b) {
  EXPECT_EQ(a.header.protocol, b.header.protocol);
  EXPECT_EQ(a.header.model, b.header.model);
  EXPECT_EQ(a.header.num_params, b.header.num_params);
  EXPECT_EQ(a.header.partitions, b.header.partitions);
  EXPECT_EQ(a.header.peer_id, b.header.peer_id);
  EXPECT_EQ(a.header.config, b.header.config);
  EXPECT_EQ(a.header.config_hash, b.header.config_hash);
  EXPECT_EQ(a.header.sequence, b.header.sequence);
  EXPECT_EQ(a.header.peer_seconds, b.header.peer_seconds);
  EXPECT_EQ(a.header.age, b.header.age);
  EXPECT_EQ(a.params, b.params);
  EXPECT_EQ(a.velocity, b.velocity);
  EXPECT_EQ(a.residual, b.residual);
  EXPECT_EQ(a.residual_codec, b.residual_codec);
  EXPECT_EQ(a.protocol_state, b.protocol_state);
  EXPECT_EQ(a.trainer.orders_drawn, b.trainer.orders_drawn);
  EXPECT_EQ(a.trainer.cursor, b.trainer.cursor);
  EXPECT_EQ(a.trainer.sgd_steps, b.trainer.sgd_steps);
  EXPECT_EQ(a.trainer.epoch, b.trainer.epoch);
  EXPECT_EQ(a.live_params, b.live_params);
  EXPECT_EQ(a.params_version, b.params_version);
  EXPECT_EQ(a.counters, b.counters);
}

TEST(Checkpoint, FileRoundTripKeepsEverySection) {
  fs::path dir = temp_dir("roundtrip");
  for (bool empty_optional : {false, true}) {
    ckpt::Checkpoint c = sample();
    if (empty_optional) {  // no momentum, no error feedback yet
      c.velocity.clear();
      c.residual.clear();
      c.residual_codec.clear();
      c.protocol_state.clear();
    }
    const std::string path = (dir / ckpt::file_name(3, 5)).string();
    ASSERT_TRUE(ckpt::write_atomic(path, ckpt::encode(c)).is_ok());
    auto back = ckpt::read_file(path);
    ASSERT_TRUE(back.is_ok()) << back.status().to_string();
    expect_same(c, *back);
  }
  fs::remove_all(dir);
}

// Every byte position flipped: refused, never a crash, and the message names what failed.
TEST(Checkpoint, DamageIsRefusedNamingTheField) {
  const auto good = ckpt::encode(sample(64));
  for (size_t i = 0; i < good.size(); ++i) {
    auto bad = good;
    bad[i] ^= 0x40;
    auto r = ckpt::decode(bad);
    ASSERT_FALSE(r.is_ok()) << "a flipped byte at " << i << " was accepted";
    const std::string m = r.status().message();
    std::string want = "checksum";
    if (i < 8) want = "magic";
    else if (i < 12) want = "format version";
    else if (i < 16) want = "checksum";  // the section count is covered by the checksum
    else if (i < 24) want = "length";
    EXPECT_NE(m.find(want), std::string::npos) << i << ": " << m;
  }
  // Truncated anywhere: refused.
  for (size_t len : {size_t(0), size_t(7), size_t(27), size_t(28), good.size() / 2, good.size() - 1}) {
    auto r = ckpt::decode(std::span<const uint8_t>(good.data(), len));
    ASSERT_FALSE(r.is_ok()) << len;
    const std::string m = r.status().message();
    EXPECT_TRUE(m.find("truncated") != std::string::npos) << len << ": " << m;
  }
  // Another format version: kUnimplemented, naming both versions.
  auto v2 = good;
  v2[8] = 2;
  auto r = ckpt::decode(v2);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kUnimplemented);
  EXPECT_NE(r.status().message().find("format version 2: this mycel reads version 1"), std::string::npos)
      << r.status().message();
}

// A section length that lies (with a valid checksum) is refused before anything is allocated.
TEST(Checkpoint, LyingLengthsAreRefusedBeforeAllocating) {
  auto c = sample(64);
  auto b = ckpt::encode(c);
  // The parameters section (id 2) starts after the header section: find its u64 length.
  uint64_t hlen = 0;
  std::memcpy(&hlen, b.data() + 24 + 8, 8);
  const size_t at = 24 + 16 + static_cast<size_t>(hlen) + 8;  // section 2's length field
  uint64_t huge = uint64_t(1) << 60;
  std::memcpy(b.data() + at, &huge, 8);
  const uint32_t crc = transport::crc32c(b.data(), b.size() - 4);  // resealed: the length check must catch it
  std::memcpy(b.data() + b.size() - 4, &crc, 4);
  auto c2 = ckpt::decode(b);
  ASSERT_FALSE(c2.is_ok());
  EXPECT_NE(c2.status().message().find("section parameters: 1152921504606846976 bytes, only"), std::string::npos)
      << c2.status().message();
  // Through the public path: encode a checkpoint whose parameter count disagrees with the header.
  auto d = sample(64);
  d.params.resize(63);
  auto r = ckpt::decode(ckpt::encode(d));
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("parameters: 63 values, the header says 64"), std::string::npos)
      << r.status().message();
}

TEST(Checkpoint, IncompatibleCheckpointIsRefusedNamingTheField) {
  fs::path dir = temp_dir("compat");
  ckpt::Checkpoint c = sample(100);
  ASSERT_TRUE(ckpt::write_atomic((dir / ckpt::file_name(3, 1)).string(), ckpt::encode(c)).is_ok());
  auto want = c.header;
  want.model = "mlp:10";
  auto r = ckpt::load_latest(dir.string(), want);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("incompatible checkpoint: the model is 'logreg' in the checkpoint, 'mlp:10'"),
            std::string::npos)
      << r.status().message();
  want = c.header;
  want.num_params = 101;
  r = ckpt::load_latest(dir.string(), want);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("parameter count"), std::string::npos) << r.status().message();
  want = c.header;
  want.config[1].second = "mnist";
  want.config_hash = ckpt::hash_keys(want.config);
  r = ckpt::load_latest(dir.string(), want);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("config key data.dataset is 'spambase' in the checkpoint, 'mnist'"),
            std::string::npos)
      << r.status().message();
  want = c.header;
  want.peer_id = 4;  // another peer's files are not looked at
  r = ckpt::load_latest(dir.string(), want);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  fs::remove_all(dir);
}

TEST(Checkpoint, ResumeFallsBackToThePreviousWhenTheLatestIsDamaged) {
  fs::path dir = temp_dir("fallback");
  ckpt::Checkpoint a = sample(100, 1), b = sample(100, 2);
  a.header.sequence = 1;
  b.header.sequence = 2;
  ASSERT_TRUE(ckpt::write_atomic((dir / ckpt::file_name(3, 1)).string(), ckpt::encode(a)).is_ok());
  ASSERT_TRUE(ckpt::write_atomic((dir / ckpt::file_name(3, 2)).string(), ckpt::encode(b)).is_ok());
  std::vector<std::string> skipped;
  auto r = ckpt::load_latest(dir.string(), a.header, &skipped);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->ckpt.header.sequence, 2u);
  EXPECT_TRUE(skipped.empty());
  // Damage the newest: a flipped byte in its parameters.
  auto bytes = slurp_bytes(dir / ckpt::file_name(3, 2));
  bytes[bytes.size() / 2] ^= 1;
  put_bytes(dir / ckpt::file_name(3, 2), bytes);
  r = ckpt::load_latest(dir.string(), a.header, &skipped);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->ckpt.header.sequence, 1u);
  EXPECT_EQ(r->ckpt.params, a.params);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].find("checksum"), std::string::npos) << skipped[0];
  // Both damaged: a clear error listing both.
  fs::resize_file(dir / ckpt::file_name(3, 1), 100);
  skipped.clear();
  r = ckpt::load_latest(dir.string(), a.header, &skipped);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(skipped.size(), 2u);
  EXPECT_NE(r.status().message().find("no usable checkpoint of peer 3"), std::string::npos) << r.status().message();
  // Pruning keeps the newest N.
  for (uint64_t s = 3; s <= 6; ++s)
    ASSERT_TRUE(ckpt::write_atomic((dir / ckpt::file_name(3, s)).string(), ckpt::encode(a)).is_ok());
  ckpt::prune(dir.string(), 3, 2);
  auto left = ckpt::list(dir.string(), 3);
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].sequence, 6u);
  EXPECT_EQ(left[1].sequence, 5u);
  fs::remove_all(dir);
}

// A disk that fills during the write (RLIMIT_FSIZE in a forked child): an error, the temporary
// file gone, and the previous checkpoint untouched. An unwritable place: an error too.
TEST(Checkpoint, AtomicWriteNeverLeavesAPartialFile) {
  fs::path dir = temp_dir("atomic");
  const std::string path = (dir / ckpt::file_name(3, 1)).string();
  const auto old_bytes = ckpt::encode(sample(100, 1));
  ASSERT_TRUE(ckpt::write_atomic(path, old_bytes).is_ok());
  const auto big = ckpt::encode(sample(200000, 2));  // 2.4 MB
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl {};
    rl.rlim_cur = rl.rlim_max = 64 * 1024;
    setrlimit(RLIMIT_FSIZE, &rl);
    Status s = ckpt::write_atomic(path, big);
    // 0: refused with a message naming the write; 1: it claimed success.
    _exit(!s.is_ok() && s.message().find("write after") != std::string::npos ? 0 : 1);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st)) << "the writer died (signal " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0) << ")";
  EXPECT_EQ(WEXITSTATUS(st), 0);
  EXPECT_EQ(slurp_bytes(path), old_bytes) << "the previous checkpoint was replaced";
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(e.path().string(), path) << "left behind: " << e.path();
  }
  EXPECT_EQ(files, 1u);
  // A folder that does not exist, and a "folder" that is a file.
  Status s = ckpt::write_atomic((dir / "nope" / "x.ckpt").string(), old_bytes);
  EXPECT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("cannot create"), std::string::npos) << s.message();
  s = ckpt::write_atomic(path + "/x.ckpt", old_bytes);
  EXPECT_FALSE(s.is_ok());
  EXPECT_EQ(slurp_bytes(path), old_bytes);
  fs::remove_all(dir);
}

// Every protocol core: a fresh core given another's saved state saves the same state and
// reports the same age and counters; another protocol's state or shape is refused.
TEST(Checkpoint, ProtocolStateRoundTripForEveryProtocol) {
  ParamStore params{RuntimeParams{}};
  for (std::string name : {"gossip", "push-pull", "dpsgd", "fedavg"}) {
    for (int parts : {1, 4}) {
      if (parts > 1 && name != "gossip" && name != "push-pull") continue;
      SCOPED_TRACE(name + " partitions " + std::to_string(parts));
      ProtocolOptions po;
      po.self = "p1";
      po.seeds = {"p0", "p2"};
      po.peers = {"p0", "p1", "p2"};
      po.id = 1;
      po.partitions = parts;
      po.local_samples = 100;
      po.topology = "ring";
      po.degree = 2;
      auto a = make_protocol(name, po, &params);
      ASSERT_TRUE(a.is_ok()) << a.status().to_string();
      std::vector<Action> out;
      (*a)->start(0, out);
      // Some history: peers up, wake-ups, received models (merged or dropped: the state moves).
      for (const std::string& p : {std::string("p0"), std::string("p2")}) (*a)->peer_up(0.1, p, out);
      uint64_t handle = 0;
      for (int i = 1; i <= 30; ++i) {
        (*a)->tick(0.5 * i, out);
        Message m;
        m.kind = name == "fedavg" ? MsgKind::kModel : MsgKind::kModel;
        m.from = i % 2 ? "p0" : "p2";
        m.age = name == "gossip" || name == "push-pull" ? 10u * static_cast<uint64_t>(i) : static_cast<uint64_t>(i / 3);
        m.handle = ++handle;
        m.partition = static_cast<uint32_t>(i % parts);
        (*a)->message(0.5 * i + 0.1, m, out);
      }
      const auto saved = (*a)->save_state();
      ASSERT_FALSE(saved.empty());
      auto b = make_protocol(name, po, &params);
      ASSERT_TRUE(b.is_ok());
      ASSERT_TRUE((*b)->restore_state(saved).is_ok());
      EXPECT_EQ((*b)->save_state(), saved);
      EXPECT_EQ((*b)->age(), (*a)->age());
      EXPECT_EQ((*b)->partition_ages(), (*a)->partition_ages());
      EXPECT_EQ((*b)->stats().wakeups, (*a)->stats().wakeups);
      EXPECT_EQ((*b)->stats().merges, (*a)->stats().merges);
      if (name == "gossip") {
        EXPECT_GT((*a)->age(), 0u) << "the history moved nothing: the test tests nothing";
      }
      // Truncated, or another protocol's: refused with a message.
      auto c = make_protocol(name, po, &params);
      Status s = (*c)->restore_state(std::span<const uint8_t>(saved.data(), saved.size() - 1));
      EXPECT_FALSE(s.is_ok());
      const std::string other = name == "dpsgd" ? "fedavg" : "dpsgd";
      ProtocolOptions po2 = po;
      po2.partitions = 1;
      auto d = make_protocol(other, po2, &params);
      ASSERT_TRUE(d.is_ok());
      s = (*d)->restore_state(saved);
      EXPECT_FALSE(s.is_ok());
      EXPECT_NE(s.message().find("not the state of a " + other + " peer"), std::string::npos) << s.message();
    }
  }
  // Gossip with another partitioning: refused naming the counts.
  ProtocolOptions po;
  po.self = "p1";
  po.partitions = 4;
  auto a = make_protocol("gossip", po, &params);
  po.partitions = 2;
  auto b = make_protocol("gossip", po, &params);
  Status s = (*b)->restore_state((*a)->save_state());
  EXPECT_NE(s.message().find("4 partition ages, this peer has 2"), std::string::npos) << s.message();
}

// The trainer's position: k steps after a restore give exactly the model k steps after the save.
TEST(Checkpoint, TrainerPositionResumesTheSameDataOrder) {
  auto dev = make_device("cpu", 1);
  ASSERT_TRUE(dev.is_ok());
  data::Dataset d;
  d.n = 203;
  d.dim = 5;
  d.classes = 3;
  std::mt19937 g(3);
  std::normal_distribution<float> nd;
  for (size_t i = 0; i < d.n * d.dim; ++i) d.x.push_back(nd(g));
  for (size_t i = 0; i < d.n; ++i) d.y.push_back(static_cast<int32_t>(i % 3));
  models::TrainConfig tc;
  tc.batch = 16;
  tc.momentum = 0.9f;
  tc.lr = 0.05f;
  tc.schedule.base = 0.05f;
  tc.seed = 11;
  auto make = [&] {
    auto m = models::make_model(**dev, "logreg", models::input_shape(d), 1);
    EXPECT_TRUE(m.is_ok());
    return std::move(m).value();
  };
  auto m1 = make();
  auto t1 = models::Trainer::create(*m1, d, tc);
  ASSERT_TRUE(t1.is_ok());
  ASSERT_TRUE((*t1)->train_steps(17, 0.05f).is_ok());  // past one order (12 batches of 16)
  const size_t n = m1->num_params();
  std::vector<float> p(n), v(n);
  ASSERT_TRUE(m1->params().download(p.data(), n).is_ok());
  ASSERT_TRUE((*t1)->optimizer().velocity().download(v.data(), n).is_ok());
  const auto pos = (*t1)->position();
  ASSERT_TRUE((*t1)->train_steps(9, 0.05f).is_ok());
  std::vector<float> want(n);
  ASSERT_TRUE(m1->params().download(want.data(), n).is_ok());

  auto m2 = make();
  auto t2 = models::Trainer::create(*m2, d, tc);
  ASSERT_TRUE(t2.is_ok());
  ASSERT_TRUE(m2->params().upload(p.data(), n).is_ok());
  ASSERT_TRUE((*t2)->optimizer().velocity().upload(v.data(), n).is_ok());
  ASSERT_TRUE((*t2)->restore_position(pos).is_ok());
  ASSERT_TRUE((*t2)->train_steps(9, 0.05f).is_ok());
  std::vector<float> got(n);
  ASSERT_TRUE(m2->params().download(got.data(), n).is_ok());
  EXPECT_EQ(got, want);
  auto bad = pos;
  bad.cursor = d.n + 1;
  EXPECT_FALSE((*t2)->restore_position(bad).is_ok());
}


// A writer killed (SIGKILL) at random moments, mid-write included: every checkpoint file left
// in place reads back whole; what a killed writer leaves is at most a temporary file, which the
// next prune removes.
TEST(Checkpoint, KillsDuringWritesNeverLeaveAnUnloadableCheckpoint) {
  fs::path dir = temp_dir("kills");
  const auto big = sample(300000, 5);  // 3.6 MB: a write takes long enough to be hit
  std::mt19937 g(static_cast<uint32_t>(getpid()));
  std::uniform_int_distribution<int> wait_us(200, 40000);
  uint64_t seq = 0;
  int checked = 0, temps = 0;
  for (int round = 0; round < 20; ++round) {
    const uint64_t first = seq + 1;
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      auto c = big;
      for (uint64_t k = first;; ++k) {
        c.header.sequence = k;
        if (!ckpt::write_atomic((dir / ckpt::file_name(3, k)).string(), ckpt::encode(c)).is_ok()) _exit(3);
        ckpt::prune(dir.string(), 3, 2);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(wait_us(g)));
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    ASSERT_TRUE(WIFSIGNALED(st)) << "the writer failed on its own (exit " << WEXITSTATUS(st) << ")";
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().string().find(".ckpt.tmp.") != std::string::npos) ++temps;
    for (const auto& e : ckpt::list(dir.string(), 3)) {
      auto c = ckpt::read_file(e.path);
      ASSERT_TRUE(c.is_ok()) << "after kill " << round << ": " << c.status().to_string();
      EXPECT_EQ(c->params, big.params);
      seq = std::max(seq, e.sequence);
      ++checked;
    }
    ckpt::prune(dir.string(), 3, 2);
  }
  size_t left_temps = 0;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().string().find(".ckpt.tmp.") != std::string::npos) ++left_temps;
  EXPECT_EQ(left_temps, 0u) << "prune left a killed writer's temporary file";
  EXPECT_GT(checked, 0) << "no checkpoint was ever complete: the test tests nothing";
  std::printf("20 kills: %d checkpoint files read back whole, %d temporary files of killed writes seen\n", checked,
              temps);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mycel::runtime
