#include "bench/harness.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>

#include "bench/gpu.h"
#include "common/half.h"
#include "common/thread_pool.h"

namespace mycel::bench {

// ---- Record ----

Record& Record::put(const std::string& key, Value v) {
  for (auto& [k, old] : fields_) {
    if (k == key) {
      old = std::move(v);
      return *this;
    }
  }
  fields_.emplace_back(key, std::move(v));
  return *this;
}

const Record::Value* Record::get(std::string_view key) const {
  for (const auto& [k, v] : fields_)
    if (k == key) return &v;
  return nullptr;
}

double Record::number(std::string_view key, double fallback) const {
  const Value* v = get(key);
  if (!v) return fallback;
  if (auto* i = std::get_if<int64_t>(v)) return static_cast<double>(*i);
  if (auto* d = std::get_if<double>(v)) return *d;
  return fallback;
}

std::string Record::text(std::string_view key) const {
  const Value* v = get(key);
  if (!v) return "";
  if (auto* s = std::get_if<std::string>(v)) return *s;
  if (auto* i = std::get_if<int64_t>(v)) return std::to_string(*i);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", std::get<double>(*v));
  return buf;
}

std::string json_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

std::string Record::json() const {
  std::string out = "{";
  bool first = true;
  for (const auto& [k, v] : fields_) {
    if (!first) out += ", ";
    first = false;
    out += "\"" + json_escape(k) + "\": ";
    if (auto* s = std::get_if<std::string>(&v)) {
      out += "\"" + json_escape(*s) + "\"";
    } else if (auto* i = std::get_if<int64_t>(&v)) {
      out += std::to_string(*i);
    } else {
      double d = std::get<double>(v);
      if (!std::isfinite(d)) {
        out += "null";
      } else {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.6g", d);
        out += buf;
      }
    }
  }
  return out + "}";
}

std::string to_json(const std::vector<Record>& rows) {
  std::string out = "[";
  for (size_t i = 0; i < rows.size(); ++i) {
    out += i == 0 ? "\n  " : ",\n  ";
    out += rows[i].json();
  }
  out += rows.empty() ? "]\n" : "\n]\n";
  return out;
}

// ---- Table ----

Table::Table(std::vector<Column> columns, std::FILE* out) : cols_(std::move(columns)), out_(out) {}

void Table::print_header() {
  std::string line;
  for (const auto& c : cols_) {
    char buf[128];
    std::snprintf(buf, sizeof buf, c.left ? "%-*s " : "%*s ", c.width, c.title.c_str());
    line += buf;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void Table::print_row(const Record& r) {
  std::string line;
  for (const auto& c : cols_) {
    std::string cell;
    const Record::Value* v = r.get(c.key);
    if (!v) {
      cell = "-";
    } else if (auto* d = std::get_if<double>(v)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.*f", c.precision, *d);
      cell = buf;
    } else {
      cell = r.text(c.key);
    }
    char buf[256];
    std::snprintf(buf, sizeof buf, c.left ? "%-*s " : "%*s ", c.width, cell.c_str());
    line += buf;
  }
  while (!line.empty() && line.back() == ' ') line.pop_back();
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

// ---- Report ----

Report::Report(bool json, std::vector<Column> columns) : json_(json), table_(std::move(columns)) {}

void Report::add(Record r) {
  wrong_ += static_cast<int64_t>(r.number("wrong"));
  if (r.get("error")) ++errors_;
  if (!json_) {
    if (!header_done_) {
      table_.print_header();
      header_done_ = true;
    }
    table_.print_row(r);
    if (r.get("error")) std::printf("  error: %s\n", r.text("error").c_str());
    std::fflush(stdout);
  }
  rows_.push_back(std::move(r));
}

void Report::note(const std::string& line) {
  std::FILE* out = json_ ? stderr : stdout;
  std::fprintf(out, "%s\n", line.c_str());
  std::fflush(out);
}

int Report::finish() {
  if (json_) {
    std::fputs(to_json(rows_).c_str(), stdout);
  } else {
    std::printf("%zu rows, %lld wrong results, %lld errors\n", rows_.size(),
                static_cast<long long>(wrong_), static_cast<long long>(errors_));
  }
  std::fflush(stdout);
  return wrong_ > 0 || errors_ > 0 ? 1 : 0;
}

std::vector<Column> standard_columns() {
  return {
      {"device", "device", 7, 0, true},   {"op", "op", 14, 0, true},
      {"codec", "codec", 15, 0, true},    {"k", "k", 2},
      {"size", "params", 7},              {"mb", "MB/call", 9, 1},
      {"ms", "ms", 9, 4},                 {"gbps", "GB/s", 8, 2},
      {"peak_gbps", "peak", 7, 2},        {"ratio", "ratio", 6, 3},
      {"wrong", "wrong", 5},
  };
}

void set_timing(Record& r, double bytes, const std::vector<double>& ms, double peak_gbps,
                const std::string& peak_op, bool use_min) {
  const double med = median(ms);
  double lo = ms.empty() ? 0 : ms[0];
  for (double m : ms) lo = std::min(lo, m);
  const double t = use_min ? lo : med;
  const double gbps = t > 0 ? bytes / (t * 1e-3) / 1e9 : 0;
  r.set("bytes", static_cast<int64_t>(bytes)).set("mb", bytes / 1e6);
  r.set("ms", t).set("ms_median", med).set("ms_min", lo).set("reps", ms.size());
  r.set("stat", use_min ? "min" : "median");
  r.set("gbps", gbps).set("peak_gbps", peak_gbps).set("peak_op", peak_op);
  r.set("ratio", peak_gbps > 0 ? gbps / peak_gbps : 0.0);
}

// ---- statistics and parsing ----

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find(sep, pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view piece = text.substr(pos, end - pos);
    while (!piece.empty() && piece.front() == ' ') piece.remove_prefix(1);
    while (!piece.empty() && piece.back() == ' ') piece.remove_suffix(1);
    if (!piece.empty()) out.emplace_back(piece);
    pos = end + 1;
  }
  return out;
}

Result<std::vector<size_t>> parse_sizes(std::string_view text) {
  std::vector<size_t> out;
  for (const auto& piece : split(text, ',')) {
    uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), v);
    if (ec != std::errc() || ptr == piece.data())
      return Error(Code::kInvalidArgument, "bad size '" + piece + "' (expected e.g. 1M, 64M, 4096)");
    std::string_view rest(ptr, piece.data() + piece.size() - ptr);
    int shift = 0;
    if (rest == "K" || rest == "k") shift = 10;
    else if (rest == "M" || rest == "m") shift = 20;
    else if (rest == "G" || rest == "g") shift = 30;
    else if (!rest.empty())
      return Error(Code::kInvalidArgument, "bad size suffix in '" + piece + "' (K, M or G)");
    if (v == 0 || v > (uint64_t{1} << 34) >> shift)
      return Error(Code::kOutOfRange, "size '" + piece + "' out of range (1 .. 16G parameters)");
    out.push_back(static_cast<size_t>(v << shift));
  }
  if (out.empty()) return Error(Code::kInvalidArgument, "empty size list");
  return out;
}

Result<std::vector<int>> parse_ints(std::string_view text, int lo, int hi) {
  std::vector<int> out;
  for (const auto& piece : split(text, ',')) {
    int v = 0;
    auto [ptr, ec] = std::from_chars(piece.data(), piece.data() + piece.size(), v);
    if (ec != std::errc() || ptr != piece.data() + piece.size())
      return Error(Code::kInvalidArgument, "bad integer '" + piece + "'");
    if (v < lo || v > hi)
      return Error(Code::kOutOfRange, "value " + piece + " out of range [" + std::to_string(lo) +
                                          ", " + std::to_string(hi) + "]");
    out.push_back(v);
  }
  if (out.empty()) return Error(Code::kInvalidArgument, "empty list");
  return out;
}

std::string format_size(size_t n) {
  if (n >= (size_t{1} << 30) && n % (size_t{1} << 30) == 0) return std::to_string(n >> 30) + "G";
  if (n >= (size_t{1} << 20) && n % (size_t{1} << 20) == 0) return std::to_string(n >> 20) + "M";
  if (n >= (size_t{1} << 10) && n % (size_t{1} << 10) == 0) return std::to_string(n >> 10) + "K";
  return std::to_string(n);
}

// ---- devices and memory ----

Result<std::vector<std::shared_ptr<Device>>> bench_devices(std::string_view spec, int threads) {
  std::vector<std::shared_ptr<Device>> out;
  if (spec == "auto" || spec == "all" || spec.empty()) {
    MYCEL_ASSIGN_OR_RETURN(auto cpu, make_device("cpu", threads));
    out.push_back(std::move(cpu));
    int gpus = cuda_device_count();
    for (int i = 0; i < gpus; ++i) {
      MYCEL_ASSIGN_OR_RETURN(auto g, make_device("cuda:" + std::to_string(i), threads));
      out.push_back(std::move(g));
    }
    return out;
  }
  MYCEL_ASSIGN_OR_RETURN(auto d, make_device(spec, threads));
  out.push_back(std::move(d));
  return out;
}

Result<DeviceMem> DeviceMem::make(Device& dev, size_t bytes) {
  DeviceMem m;
  m.dev_ = &dev;
  m.bytes_ = bytes;
  if (bytes == 0) return m;
  MYCEL_ASSIGN_OR_RETURN(m.p_, dev.alloc(bytes));
  return m;
}

DeviceMem& DeviceMem::operator=(DeviceMem&& o) noexcept {
  if (this != &o) {
    reset();
    dev_ = o.dev_;
    p_ = o.p_;
    bytes_ = o.bytes_;
    o.p_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

void DeviceMem::reset() {
  if (p_ && dev_) dev_->free(p_);
  p_ = nullptr;
  bytes_ = 0;
}

std::string device_label(Device& dev) {
  if (dev.kind() == DeviceKind::kCpu) return "cpu";
  return "cuda:" + std::to_string(dev.ordinal());
}

void set_device_fields(Record& r, Device& dev) {
  r.set("device", device_label(dev));
  r.set("device_name", dev.name());
  r.set("threads", dev.threads());
}

// ---- timing ----

Result<std::vector<double>> time_calls(Device& dev, int warmup, int reps,
                                       const std::function<Status()>& fn) {
  if (dev.kind() == DeviceKind::kCuda) return gpu::time_calls(dev, warmup, reps, fn);
  for (int i = 0; i < warmup; ++i) MYCEL_CHECK(fn());
  std::vector<double> ms;
  ms.reserve(reps);
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    MYCEL_CHECK(fn());
    MYCEL_CHECK(dev.sync());
    auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  return ms;
}

// ---- test data ----

float stored_value(DType t, uint64_t seed, uint64_t i, float scale) {
  float v = scale * test_value(seed, i);
  switch (t) {
    case DType::kF16: return f16_to_f32(f32_to_f16(v));
    case DType::kBF16: return bf16_to_f32(f32_to_bf16(v));
    default: return v;
  }
}

namespace {

// dst[j] = scale * test_value(seed, first + j) as dtype t, for j < count.
void fill_range(void* dst, DType t, size_t count, size_t first, uint64_t seed, float scale) {
  switch (t) {
    case DType::kF32: {
      auto* p = static_cast<float*>(dst);
      for (size_t j = 0; j < count; ++j) p[j] = scale * test_value(seed, first + j);
      break;
    }
    case DType::kF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (size_t j = 0; j < count; ++j) p[j] = f32_to_f16(scale * test_value(seed, first + j));
      break;
    }
    case DType::kBF16: {
      auto* p = static_cast<uint16_t*>(dst);
      for (size_t j = 0; j < count; ++j) p[j] = f32_to_bf16(scale * test_value(seed, first + j));
      break;
    }
  }
}

}  // namespace

Status fill(Device& dev, void* dst, DType t, size_t n, uint64_t seed, float scale) {
  if (n == 0) return Ok();
  if (!dst) return Error(Code::kInvalidArgument, "fill of a null pointer");
  const size_t es = dtype_size(t);
  if (dev.kind() == DeviceKind::kCpu) {
    // Written by the pool that runs the kernels, so pages land where those threads read them.
    dev.pool()->parallel_for(n, size_t{1} << 16, 64, [&](size_t b, size_t e, int) {
      fill_range(static_cast<uint8_t*>(dst) + b * es, t, e - b, b, seed, scale);
    });
    return Ok();
  }
  // GPU: fill a host staging buffer in chunks, upload each.
  const size_t chunk = size_t{1} << 24;  // elements per upload
  std::vector<uint8_t> host(std::min(n, chunk) * es);
  for (size_t off = 0; off < n; off += chunk) {
    size_t m = std::min(chunk, n - off);
    ThreadPool::global().parallel_for(m, size_t{1} << 16, 64, [&](size_t b, size_t e, int) {
      fill_range(host.data() + b * es, t, e - b, off + b, seed, scale);
    });
    MYCEL_CHECK(dev.copy(static_cast<uint8_t*>(dst) + off * es, host.data(), m * es,
                         CopyKind::kHostToDevice));
    MYCEL_CHECK(dev.sync());  // host is reused by the next chunk
  }
  return Ok();
}

Result<const uint8_t*> host_view(Device& dev, const void* p, size_t bytes,
                                 std::vector<uint8_t>* storage) {
  MYCEL_CHECK(dev.sync());
  if (dev.kind() == DeviceKind::kCpu) return static_cast<const uint8_t*>(p);
  storage->resize(bytes);
  if (bytes) {
    MYCEL_CHECK(dev.copy(storage->data(), p, bytes, CopyKind::kDeviceToHost));
    MYCEL_CHECK(dev.sync());
  }
  return static_cast<const uint8_t*>(storage->data());
}

std::vector<size_t> sample_positions(size_t n, size_t max, uint64_t seed) {
  std::vector<size_t> out;
  if (n == 0) return out;
  if (max == 0 || n <= max) {
    out.resize(n);
    for (size_t i = 0; i < n; ++i) out[i] = i;
    return out;
  }
  max = std::max<size_t>(max, 3);
  out.reserve(max);
  out.push_back(0);
  const size_t inner = max - 2;
  const double stride = static_cast<double>(n - 2) / static_cast<double>(inner);
  for (size_t j = 0; j < inner; ++j) {
    size_t lo = 1 + static_cast<size_t>(static_cast<double>(j) * stride);
    size_t hi = std::min(n - 1, 1 + static_cast<size_t>(static_cast<double>(j + 1) * stride));
    size_t span = hi > lo ? hi - lo : 1;
    uint64_t h = static_cast<uint64_t>(test_value(seed, j) * 8388608.0f + 8388608.0f);
    out.push_back(std::min(n - 2, lo + h % span));
  }
  out.push_back(n - 1);
  return out;
}

bool close_enough(double got, double want, double atol, double rtol) {
  if (got == want) return true;
  if (!std::isfinite(got) || !std::isfinite(want)) return false;
  return std::fabs(got - want) <= atol + rtol * std::fabs(want);
}

// ---- flags ----

void add_run_flags(CLI::App& cmd, RunFlags& f, const std::string& default_sizes) {
  f.sizes_opt = cmd.add_option("--sizes", f.sizes,
                               "parameter counts, comma-separated; K=2^10, M=2^20, G=2^30 (default " +
                                   default_sizes + ")");
  f.reps_opt = cmd.add_option("--reps", f.reps, "timed repetitions per row (median reported)")
                   ->check(CLI::Range(1, 1000))
                   ->capture_default_str();
  cmd.add_option("--warmup", f.warmup, "untimed calls before timing")
      ->check(CLI::Range(0, 100))
      ->capture_default_str();
  cmd.add_option("--check", f.check, "positions checked against the scalar reference per row (0: all)")
      ->capture_default_str();
  cmd.add_option("--stat", f.stat,
                 "statistic over the repetitions: median, or min (best) on a noisy shared machine")
      ->check(CLI::IsMember({"median", "min"}))
      ->capture_default_str();
  cmd.add_flag("--json", f.json, "print a JSON array of rows instead of the table");
  cmd.add_flag("--quick", f.quick, "smoke test: small size, few repetitions (seconds)");
}

}  // namespace mycel::bench
