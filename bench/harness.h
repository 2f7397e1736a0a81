// The benchmark harness every `mycel bench ...` subcommand shares: output rows (a text table on
// stdout, or a JSON array with --json), timing (steady clock on the CPU, cudaEvents on a GPU,
// warm-up then repetitions, median reported), deterministic test data that a scalar reference
// can recompute at any position without a host copy, and the parsing of the common flags.
#pragma once

#include <CLI/CLI.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#include "common/status.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace mycel::bench {

// ---- output rows ----

// One row of output: ordered key/value fields (strings, integers or reals). The same row feeds
// the text table and the JSON array.
class Record {
 public:
  using Value = std::variant<std::string, int64_t, double>;

  Record& set(const std::string& key, std::string v) { return put(key, Value(std::move(v))); }
  Record& set(const std::string& key, const char* v) { return put(key, Value(std::string(v))); }
  Record& set(const std::string& key, double v) { return put(key, Value(v)); }
  template <typename I>
    requires std::is_integral_v<I>
  Record& set(const std::string& key, I v) { return put(key, Value(static_cast<int64_t>(v))); }

  const Value* get(std::string_view key) const;
  double number(std::string_view key, double fallback = 0) const;  // int or real field
  std::string text(std::string_view key) const;                    // any field, formatted
  std::string json() const;                                        // {"k": v, ...}

 private:
  Record& put(const std::string& key, Value v);
  std::vector<std::pair<std::string, Value>> fields_;
};

// A JSON array, one row per line. Non-finite reals are written as null (JSON has no NaN).
std::string to_json(const std::vector<Record>& rows);
std::string json_escape(std::string_view s);

// A fixed-width text table printed one row at a time, so a long run shows its progress.
struct Column {
  std::string key;    // field of the Record
  std::string title;  // header text
  int width = 10;
  int precision = 2;  // for real fields
  bool left = false;  // left-aligned (text columns)
};

class Table {
 public:
  explicit Table(std::vector<Column> columns, std::FILE* out = stdout);
  void print_header();
  void print_row(const Record& r);

 private:
  std::vector<Column> cols_;
  std::FILE* out_;
};

// Collects a bench's rows: prints each as a table row as it comes (unless JSON was asked for),
// prints the JSON array at the end, and gives the exit status: non-zero when any row has a
// wrong result or an error.
class Report {
 public:
  Report(bool json, std::vector<Column> columns);
  void add(Record r);
  // A line between table rows (a device's name, a note); on stderr in JSON mode.
  void note(const std::string& line);
  int64_t wrong() const { return wrong_; }
  int64_t errors() const { return errors_; }
  // Prints the JSON array (JSON mode) or a summary line; returns 0, or 1 on any wrong result
  // or error.
  int finish();
  const std::vector<Record>& rows() const { return rows_; }

 private:
  bool json_;
  Table table_;
  bool header_done_ = false;
  std::vector<Record> rows_;
  int64_t wrong_ = 0, errors_ = 0;
};

// The table columns the merge and codec benches share.
std::vector<Column> standard_columns();

// Sets ms (the median, or the minimum when use_min), ms_median, ms_min, gbps (bytes / ms),
// peak_gbps, peak_op and ratio on r.
void set_timing(Record& r, double bytes, const std::vector<double>& ms, double peak_gbps,
                const std::string& peak_op, bool use_min = false);

// ---- statistics and parsing ----

double median(std::vector<double> v);  // 0 for an empty vector

// "1M,16M,64M" -> sizes in parameters: K = 2^10, M = 2^20, G = 2^30; plain numbers too.
Result<std::vector<size_t>> parse_sizes(std::string_view text);
// "2,4,8" -> integers, each in [lo, hi].
Result<std::vector<int>> parse_ints(std::string_view text, int lo, int hi);
// Splits on sep, dropping empty pieces and surrounding spaces.
std::vector<std::string> split(std::string_view text, char sep);
// 1048576 -> "1M", 1536 -> "1536".
std::string format_size(size_t n);

// ---- devices ----

// The devices a bench runs on. "auto" and "all": the CPU, then every GPU visible; "cpu",
// "cuda", "cuda:N": that one. threads sizes the CPU device's pool (0: all cores).
Result<std::vector<std::shared_ptr<Device>>> bench_devices(std::string_view spec, int threads);

// A device allocation of raw bytes, freed on destruction.
class DeviceMem {
 public:
  DeviceMem() = default;
  static Result<DeviceMem> make(Device& dev, size_t bytes);
  DeviceMem(DeviceMem&& o) noexcept { *this = std::move(o); }
  DeviceMem& operator=(DeviceMem&& o) noexcept;
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  ~DeviceMem() { reset(); }
  void reset();
  template <typename T = uint8_t>
  T* as() const { return static_cast<T*>(p_); }
  size_t bytes() const { return bytes_; }

 private:
  Device* dev_ = nullptr;
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// ---- timing ----

// Calls fn `warmup` times untimed, then `reps` times timed; returns milliseconds per call.
// CPU: steady clock around each call (CPU kernels finish before they return). GPU: cudaEvents
// recorded on the device's default stream around each call. Stops at fn's first error.
Result<std::vector<double>> time_calls(Device& dev, int warmup, int reps,
                                       const std::function<Status()>& fn);

// ---- test data and checking ----

// Deterministic test value in [-1, 1) for (seed, i): a hash, so a reference recomputes any entry
// without keeping a copy of a vector that may be a gigabyte.
inline float test_value(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + i * 0xd1b54a32d192ed03ull + 0x632be59bd9b4e019ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  // 24 random bits -> [-1, 1) exactly representable in fp32
  return static_cast<float>(static_cast<int32_t>(z >> 40) - (1 << 23)) * (1.0f / (1 << 23));
}

// The stored test value for dtype t (rounded through fp16/bf16 when t is not fp32), as fp32.
float stored_value(DType t, uint64_t seed, uint64_t i, float scale = 1.f);

// dst[i] = scale * test_value(seed, i) stored as dtype t, for i < n, in device memory. On the
// CPU it writes in parallel on the device's pool; on a GPU through a host staging buffer.
Status fill(Device& dev, void* dst, DType t, size_t n, uint64_t seed, float scale = 1.f);

// Device memory readable on the host: p itself on the CPU, a downloaded copy in *storage on a
// GPU. Synchronises the device first.
Result<const uint8_t*> host_view(Device& dev, const void* p, size_t bytes,
                                 std::vector<uint8_t>* storage);

// Positions to check: every position when n <= max (or max == 0), else max of them: the first,
// the last, and the rest spread over [0, n) with a pseudo-random offset in each stride.
std::vector<size_t> sample_positions(size_t n, size_t max, uint64_t seed);

// |got - want| <= atol + rtol * |want|; false when either is NaN or Inf (unless both are equal).
bool close_enough(double got, double want, double atol, double rtol);

// ---- common flags ----

struct RunFlags {
  std::string sizes;        // --sizes (empty: the subcommand's default)
  int reps = 5;             // --reps
  int warmup = 1;           // --warmup
  size_t check = 1 << 16;   // --check: positions checked per row (0: all)
  bool json = false;        // --json
  bool quick = false;       // --quick
  std::string stat = "median";  // --stat median|min: the statistic over the repetitions
  CLI::Option* sizes_opt = nullptr;
  CLI::Option* reps_opt = nullptr;
};
void add_run_flags(CLI::App& cmd, RunFlags& f, const std::string& default_sizes);

// Fields every bench row carries: device, device_name, threads.
void set_device_fields(Record& r, Device& dev);
// Short device label: "cpu", "cuda:0".
std::string device_label(Device& dev);

}  // namespace mycel::bench
