// `mycel bench checkpoint`: what a checkpoint costs per model size (logistic regression, the
// 2NN MLP, FedAvg's CNN): its size, the time to encode it (copy + CRC32C), to write it atomically
// (runtime/engine/checkpoint.h: temporary file, write, fsync, rename, fsync of the folder) and
// to read it back and decode it (what a restart pays), next to the sequential-write peak of the
// same folder measured by the same binary in the same run: the same bytes with plain
// write + fsync into one file. Each row checks its own result: the file read back must decode
// to exactly what was written (else "wrong").
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>

#include "bench/harness.h"
#include "models/model.h"
#include "runtime/cli/commands.h"
#include "runtime/engine/checkpoint.h"

namespace mycel::cli {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Plain write + fsync of the same bytes into one file (the folder's sequential-write peak).
Result<double> plain_write_ms(const std::string& path, const std::vector<uint8_t>& b) {
  const auto t0 = Clock::now();
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Error(Code::kIo, "cannot create " + path + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < b.size()) {
    ssize_t n = ::write(fd, b.data() + done, b.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return Error(Code::kIo, "cannot write " + path + ": " + std::strerror(errno));
    }
    done += static_cast<size_t>(n);
  }
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  if (!ok) return Error(Code::kIo, "cannot sync " + path + ": " + std::strerror(errno));
  return ms_since(t0);
}

}  // namespace

void add_bench_checkpoint(CLI::App& bench, Common& common) {
  struct Opts {
    std::string dir;
    int reps = 5;
    bool json = false, quick = false;
  };
  auto o = std::make_shared<Opts>();
  auto* cmd = bench.add_subcommand("checkpoint", "checkpoint size, encode, atomic write and read-back time per model "
                                                 "size, against plain write+fsync of the same bytes in the same folder");
  cmd->add_option("--dir", o->dir, "folder to write in (default: a new folder under the system's temporary folder)");
  cmd->add_option("--reps", o->reps, "repetitions per row (median reported)")->capture_default_str();
  cmd->add_flag("--json", o->json, "rows as a JSON array");
  cmd->add_flag("--quick", o->quick, "logreg and the MLP only, 2 repetitions (a smoke run)");
  cmd->callback([o, &common] {
    (void)common;
    struct Point {
      const char* label;
      const char* spec;
      models::InputShape shape;
    };
    std::vector<Point> points = {
        {"logreg spambase", "logreg", {57, 0, 0, 0, 2}},
        {"mlp 2nn mnist", "mlp:200,200", {784, 1, 28, 28, 10}},
        {"cnn mnist", "cnn", {784, 1, 28, 28, 10}},
    };
    const int reps = o->quick ? 2 : std::max(1, o->reps);
    if (o->quick) points.pop_back();
    const bool own_dir = o->dir.empty();
    const std::string dir =
        own_dir ? (fs::temp_directory_path() / ("mycel-bench-ckpt-" + std::to_string(getpid()))).string() : o->dir;
    std::error_code ec;
    fs::create_directories(dir, ec);
    bench::Report rep(o->json, {{"model", "model", 16, 0, true},
                                {"params", "params", 9},
                                {"file_mb", "file MB", 8, 3},
                                {"encode_ms", "encode ms", 10, 3},
                                {"write_ms", "write ms", 9, 3},
                                {"read_ms", "read ms", 8, 3},
                                {"write_mbps", "write MB/s", 11, 1},
                                {"peak_mbps", "peak MB/s", 10, 1},
                                {"ratio", "of peak", 8, 2},
                                {"wrong", "wrong", 5}});
    rep.note("folder " + dir + " (checkpoint = parameters + momentum velocity + error-feedback residual)");
    auto dev = make_device("cpu", 1);
    if (!dev) {
      std::fprintf(stderr, "mycel bench checkpoint: %s\n", dev.status().message().c_str());
      throw CLI::RuntimeError(1);
    }
    for (const auto& p : points) {
      bench::Record r;
      r.set("model", p.label);
      auto m = models::make_model(**dev, p.spec, p.shape, 1);
      if (!m) {
        r.set("error", m.status().message());
        rep.add(std::move(r));
        continue;
      }
      const size_t n = (*m)->num_params();
      runtime::ckpt::Checkpoint c;
      c.header.protocol = "gossip";
      c.header.model = p.spec;
      c.header.num_params = n;
      c.header.config = {{"model", p.spec}};
      c.header.config_hash = runtime::ckpt::hash_keys(c.header.config);
      c.params.resize(n);
      if (Status s = (*m)->params().download(c.params.data(), n); !s.is_ok()) {
        r.set("error", s.message());
        rep.add(std::move(r));
        continue;
      }
      std::mt19937 g(7);
      std::normal_distribution<float> nd(0.f, 0.01f);
      c.velocity.resize(n);
      c.residual.resize(n);
      for (size_t i = 0; i < n; ++i) c.velocity[i] = nd(g), c.residual[i] = nd(g);
      c.residual_codec = "int8";
      c.protocol_state.assign(64, 1);
      c.live_params = runtime::live_param_values(runtime::RuntimeParams{});
      std::vector<double> enc, wr, rd, peak;
      std::vector<uint8_t> bytes;
      int64_t wrong = 0;
      Status err;
      for (int k = 0; k < reps + 1 && err.is_ok(); ++k) {  // the first is a warm-up
        c.header.sequence = static_cast<uint64_t>(k + 1);
        auto t0 = Clock::now();
        bytes = runtime::ckpt::encode(c);
        const double e = ms_since(t0);
        const std::string path = dir + "/" + runtime::ckpt::file_name(0, static_cast<uint64_t>(k + 1));
        t0 = Clock::now();
        err = runtime::ckpt::write_atomic(path, bytes);
        const double w = ms_since(t0);
        if (!err.is_ok()) break;
        t0 = Clock::now();
        auto back = runtime::ckpt::read_file(path);
        const double rms = ms_since(t0);
        if (!back || back->params != c.params || back->velocity != c.velocity || back->residual != c.residual ||
            back->header.sequence != c.header.sequence)
          ++wrong;
        fs::remove(dir + "/plain.bin", ec);  // a new file each time, as the checkpoint is
        auto pk = plain_write_ms(dir + "/plain.bin", bytes);
        if (!pk) {
          err = pk.status();
          break;
        }
        runtime::ckpt::prune(dir, 0, 1);
        if (k == 0) continue;
        enc.push_back(e);
        wr.push_back(w);
        rd.push_back(rms);
        peak.push_back(*pk);
      }
      fs::remove(dir + "/plain.bin", ec);
      runtime::ckpt::prune(dir, 0, 0);
      for (const auto& e : runtime::ckpt::list(dir, 0)) fs::remove(e.path, ec);
      if (!err.is_ok()) {
        r.set("error", err.message());
        rep.add(std::move(r));
        continue;
      }
      const double mb = static_cast<double>(bytes.size()) / 1e6;
      const double w = bench::median(wr), pk = bench::median(peak);
      r.set("params", n);
      r.set("file_bytes", bytes.size());
      r.set("file_mb", mb);
      r.set("encode_ms", bench::median(enc));
      r.set("write_ms", w);
      r.set("read_ms", bench::median(rd));
      r.set("write_mbps", w > 0 ? mb / (w / 1e3) : 0.0);
      r.set("peak_mbps", pk > 0 ? mb / (pk / 1e3) : 0.0);
      r.set("ratio", w > 0 ? pk / w : 0.0);
      r.set("reps", reps);
      r.set("wrong", wrong);
      rep.add(std::move(r));
    }
    if (own_dir) fs::remove_all(dir, ec);
    if (int rc = rep.finish(); rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
