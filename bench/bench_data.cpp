// `mycel bench data`: how fast the CSV reader behind data::load("csv:PATH") loads a table, in MB
// of file per second, next to the CPU's memory bandwidth measured in the same run (bench/peak.h,
// one thread: the reader is single-threaded). It writes a CSV of --mb megabytes (--features
// random float columns written shortest-round-trip, then an integer label 0..9) into a fresh
// temporary folder, reads it --reps times after one warm-up read (so the file is in the page
// cache: this measures parsing, not the disk), and removes the folder.
// MB/s is the median over the repetitions by the wall clock; "best" the fastest repetition and
// "cpu MB/s" the reader thread's own CPU time, both less disturbed by other jobs on the machine.
// Rows:
//   read_user_csv   read the file + parse it (models/data/user_data.h)
//   data::load      the same + the stratified 80/20 split (copies every row)
// Each row checks its output: the row count, the shape, the classes, and every value at
// --check sampled positions bit for bit against the values written ("wrong" otherwise).
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "bench/peak.h"
#include "common/log.h"
#include "models/data/dataset.h"
#include "models/data/user_data.h"
#include "runtime/cli/commands.h"

namespace mycel::bench {
namespace {

struct DataBenchFlags {
  double mb = 100;
  int features = 32;
  int reps = 3;
  size_t check = 1 << 16;
  bool json = false;
  bool quick = false;
};

constexpr uint64_t kSeed = 11;
constexpr int kClasses = 10;

int label_of(size_t row) {
  return static_cast<int>((row * 0x9e3779b97f4a7c15ull) >> 60) % kClasses;
}

// Writes rows until the file holds at least `bytes`; returns the row count.
Result<size_t> write_csv(const std::string& path, size_t bytes, int features) {
  std::unique_ptr<std::FILE, int (*)(std::FILE*)> f(std::fopen(path.c_str(), "wb"), &std::fclose);
  if (!f) return Error(Code::kIo, path + ": cannot create: " + std::strerror(errno));
  std::string buf;
  buf.reserve(1 << 20);
  size_t written = 0, rows = 0;
  char num[64];
  while (written + buf.size() < bytes) {
    for (int j = 0; j < features; ++j) {
      const float v = test_value(kSeed, rows * size_t(features) + size_t(j)) * 100.f;
      auto r = std::to_chars(num, num + sizeof num, v);  // shortest form that reads back as v
      buf.append(num, r.ptr);
      buf.push_back(',');
    }
    buf.append(std::to_string(label_of(rows)));
    buf.push_back('\n');
    ++rows;
    if (buf.size() >= (1 << 20) - 1024) {
      if (std::fwrite(buf.data(), 1, buf.size(), f.get()) != buf.size())
        return Error(Code::kIo, path + ": write failed: " + std::strerror(errno));
      written += buf.size();
      buf.clear();
    }
  }
  if (std::fwrite(buf.data(), 1, buf.size(), f.get()) != buf.size())
    return Error(Code::kIo, path + ": write failed: " + std::strerror(errno));
  return rows;
}

// Wrong values among the sampled positions of d (rows in file order when `file_order`).
int64_t check_table(const data::Dataset& d, size_t rows, int features, size_t check,
                    bool file_order) {
  if (d.dim != size_t(features)) return 1;
  if (file_order && d.n != rows) return 1;
  int64_t wrong = 0;
  if (!file_order) return wrong;
  for (size_t pos : sample_positions(d.n * d.dim, check, 5)) {
    const size_t i = pos / d.dim, j = pos % d.dim;
    const float want = test_value(kSeed, i * size_t(features) + j) * 100.f;
    if (std::memcmp(&d.x[pos], &want, sizeof want) != 0) ++wrong;
  }
  for (size_t i : sample_positions(d.n, check, 6))
    if (d.class_names.size() != size_t(kClasses) || d.y[i] != label_of(i)) ++wrong;
  return wrong;
}

std::vector<Column> columns() {
  return {{"op", "op", 14, 0, true},     {"mb", "file MB", 8, 1},
          {"rows", "rows", 9},           {"ms", "ms", 9, 1},
          {"mb_per_s", "MB/s", 7, 0},    {"mb_per_s_best", "best", 7, 0},
          {"mb_per_s_cpu", "cpu MB/s", 8, 0}, {"peak_gbps", "peak GB/s", 9, 2},
          {"ratio", "of peak", 8, 3},    {"wrong", "wrong", 5}};
}

// CPU time of the calling thread (the reader runs on it alone).
double thread_cpu_ms() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) * 1e3 + double(ts.tv_nsec) / 1e6;
}

int run_data_bench(const DataBenchFlags& f) {
  const double mb = f.quick ? 2.0 : f.mb;
  const int reps = f.quick ? 1 : f.reps;
  if (!(mb > 0) || f.features < 1 || reps < 1) {
    MYCEL_LOG_ERROR("bench", "--mb, --features and --reps must be positive");
    return 2;
  }
  // The peak: memory bandwidth of one thread (the reader uses one), 3 x 64 MB arrays.
  auto devs = bench_devices("cpu", 1);
  if (!devs || devs->empty()) {
    MYCEL_LOG_ERROR("bench", "no CPU device: {}", devs ? "none" : devs.status().to_string());
    return 2;
  }
  Device& dev = *devs->front();
  auto peak = measure_peak(dev, f.quick ? size_t{1} << 20 : size_t{1} << 24, 1, f.quick ? 2 : 5,
                           f.check);
  if (!peak) {
    MYCEL_LOG_ERROR("bench", "peak: {}", peak.status().to_string());
    return 2;
  }

  std::string tmpl = (std::filesystem::temp_directory_path() / "mycel-bench-data-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) {
    MYCEL_LOG_ERROR("bench", "mkdtemp {}: {}", tmpl, std::strerror(errno));
    return 2;
  }
  const std::string dir = tmpl;
  struct Cleanup {
    std::string d;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  } cleanup{dir};
  const std::string path = dir + "/bench.csv";
  const auto t0 = std::chrono::steady_clock::now();
  auto rows = write_csv(path, size_t(mb * 1e6), f.features);
  if (!rows) {
    MYCEL_LOG_ERROR("bench", "{}", rows.status().to_string());
    return 2;
  }
  const double file_bytes = double(std::filesystem::file_size(path));
  const double gen_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  Report rep(f.json, columns());
  rep.note("# " + std::to_string(*rows) + " rows x " + std::to_string(f.features + 1) +
           " fields, " + std::to_string(file_bytes / 1e6) + " MB written in " +
           std::to_string(gen_s) + " s; peak: " + peak->best + " on 1 thread, " +
           std::to_string(peak->gbps) + " GB/s (bytes read + written)");
  auto time_op = [&](const std::string& op, const std::function<Result<int64_t>()>& fn) {
    Record r;
    set_device_fields(r, dev);
    r.set("op", op).set("mb", file_bytes / 1e6).set("rows", int64_t(*rows));
    std::vector<double> ms, cpu_ms;
    int64_t wrong = 0;
    for (int i = 0; i < reps + 1; ++i) {  // the first read warms the page cache
      const auto a = std::chrono::steady_clock::now();
      const double c0 = thread_cpu_ms();
      auto w = fn();
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count();
      if (i > 0) cpu_ms.push_back(thread_cpu_ms() - c0);
      if (!w) {
        r.set("error", w.status().to_string()).set("wrong", 1);
        rep.add(std::move(r));
        return;
      }
      wrong += *w;
      if (i > 0) ms.push_back(t);
    }
    const double m = median(ms);
    r.set("ms", m).set("reps", int64_t(ms.size()));
    r.set("mb_per_s", m > 0 ? file_bytes / 1e6 / (m / 1e3) : 0.0);
    r.set("gbps", m > 0 ? file_bytes / 1e9 / (m / 1e3) : 0.0);
    // On a shared machine the wall clock counts other jobs' time slices: the best repetition
    // and the reader's own CPU time show what the code does when it has a core.
    const double best = *std::min_element(ms.begin(), ms.end());
    const double cpu = median(cpu_ms);
    r.set("mb_per_s_best", best > 0 ? file_bytes / 1e6 / (best / 1e3) : 0.0);
    r.set("cpu_ms", cpu).set("mb_per_s_cpu", cpu > 0 ? file_bytes / 1e6 / (cpu / 1e3) : 0.0);
    r.set("peak_gbps", peak->gbps).set("peak_op", peak->best);
    r.set("ratio", peak->gbps > 0 && m > 0 ? (file_bytes / 1e9 / (m / 1e3)) / peak->gbps : 0.0);
    r.set("wrong", wrong);
    rep.add(std::move(r));
  };
  time_op("read_user_csv", [&]() -> Result<int64_t> {
    MYCEL_ASSIGN_OR_RETURN(auto t, data::read_user_csv(path, {}));
    MYCEL_ASSIGN_OR_RETURN(auto s, data::assign_classes(std::move(t), nullptr, path));
    return check_table(s.train, *rows, f.features, f.check, true);
  });
  time_op("data::load", [&]() -> Result<int64_t> {
    data::LoadOptions lo;
    lo.normalize = data::Normalize::kOff;
    MYCEL_ASSIGN_OR_RETURN(auto s, data::load("csv:" + path, lo));
    const bool shape_ok = s.train.n + s.test.n == *rows && s.train.classes == kClasses;
    return check_table(s.train, *rows, f.features, f.check, false) + (shape_ok ? 0 : 1);
  });
  return rep.finish();
}

}  // namespace
}  // namespace mycel::bench

namespace mycel::cli {

void add_bench_data(CLI::App& bench, Common&) {
  auto f = std::make_shared<bench::DataBenchFlags>();
  auto* cmd = bench.add_subcommand(
      "data",
      "CSV loading (csv:PATH) in MB/s of file, next to one thread's memory bandwidth measured "
      "in the same run; writes a temporary CSV of --mb megabytes");
  cmd->add_option("--mb", f->mb, "size of the generated CSV in MB (10^6 bytes)")
      ->capture_default_str();
  cmd->add_option("--features", f->features, "feature columns (then one label column)")
      ->capture_default_str();
  cmd->add_option("--reps", f->reps, "timed loads after one warm-up (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--check", f->check, "positions checked per row (0: all)")->capture_default_str();
  cmd->add_flag("--json", f->json, "print a JSON array of rows instead of the table");
  cmd->add_flag("--quick", f->quick, "smoke test: a 2 MB file, one timed load");
  cmd->callback([f] {
    int rc = bench::run_data_bench(*f);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
