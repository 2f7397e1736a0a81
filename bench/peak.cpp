#include "bench/peak.h"

#include <algorithm>
#include <cmath>

#include "bench/gpu.h"
#include "common/thread_pool.h"

namespace mycel::bench {
namespace {

// The CPU loops: one contiguous range per pool thread, 64-byte aligned boundaries. They get the
// same AVX2 clone next to the baseline one that the CPU kernels get (kernels/cpu/cpu_kernels.h),
// so the peak is not handicapped by narrower vectors than the kernels it rates.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MYCEL_BENCH_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MYCEL_BENCH_CLONES
#endif

constexpr size_t kGrain = size_t{1} << 15;

MYCEL_BENCH_CLONES void copy_range(float* __restrict b, const float* __restrict a, size_t lo,
                                   size_t hi) {
  for (size_t i = lo; i < hi; ++i) b[i] = a[i];
}

MYCEL_BENCH_CLONES void triad_range(float* __restrict a, const float* __restrict b,
                                    const float* __restrict c, float s, size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; ++i) a[i] = b[i] + s * c[i];
}

MYCEL_BENCH_CLONES void update_range(float* __restrict x, const float* __restrict y, float alpha,
                                     float beta, size_t lo, size_t hi) {
  for (size_t i = lo; i < hi; ++i) x[i] = alpha * x[i] + beta * y[i];
}

void cpu_copy(ThreadPool& pool, float* b, const float* a, size_t n) {
  pool.parallel_for(n, kGrain, 16, [=](size_t lo, size_t hi, int) { copy_range(b, a, lo, hi); });
}

void cpu_triad(ThreadPool& pool, float* a, const float* b, const float* c, float s, size_t n) {
  pool.parallel_for(n, kGrain, 16,
                    [=](size_t lo, size_t hi, int) { triad_range(a, b, c, s, lo, hi); });
}

void cpu_update(ThreadPool& pool, float* x, const float* y, float alpha, float beta, size_t n) {
  pool.parallel_for(n, kGrain, 16,
                    [=](size_t lo, size_t hi, int) { update_range(x, y, alpha, beta, lo, hi); });
}

constexpr uint64_t kSeedA = 11, kSeedC = 13;
constexpr float kTriadS = 0.375f, kAlpha = 0.5f, kBeta = 0.25f;

}  // namespace

Result<Peak> measure_peak(Device& dev, size_t n, int warmup, int reps, size_t check,
                          bool use_min) {
  const bool gpu = dev.kind() == DeviceKind::kCuda;
  ThreadPool* pool = dev.pool();
  if (!gpu && !pool) return Error(Code::kInternal, "cpu device without a thread pool");

  // The buffers outlive this call: the best kernel is run again next to every row.
  auto bufs = std::make_shared<std::vector<DeviceMem>>();
  for (int i = 0; i < (gpu ? 4 : 3); ++i) {
    MYCEL_ASSIGN_OR_RETURN(DeviceMem m, DeviceMem::make(dev, n * sizeof(float)));
    bufs->push_back(std::move(m));
  }
  float* a = (*bufs)[0].as<float>();
  float* b = (*bufs)[1].as<float>();
  float* c = (*bufs)[2].as<float>();
  MYCEL_CHECK(fill(dev, a, DType::kF32, n, kSeedA));
  MYCEL_CHECK(fill(dev, b, DType::kF32, n, kSeedA + 1));
  MYCEL_CHECK(fill(dev, c, DType::kF32, n, kSeedC));

  const std::vector<size_t> pos = sample_positions(n, check, 0x7ea);
  std::vector<uint8_t> storage;

  // Counts the sampled positions of p (n floats on the device) that differ from want(i).
  auto count_wrong = [&](const float* p, auto want) -> Result<int64_t> {
    MYCEL_ASSIGN_OR_RETURN(const uint8_t* h, host_view(dev, p, n * sizeof(float), &storage));
    const float* hv = reinterpret_cast<const float*>(h);
    int64_t wrong = 0;
    for (size_t i : pos)
      if (!close_enough(hv[i], want(i), 1e-6, 1e-6)) ++wrong;
    return wrong;
  };

  struct Kernel {
    const char* name;
    double bytes_per_elem;
    std::function<Status()> run;
  };
  std::vector<Kernel> kernels;
  // copy: b = a (b is read by nothing else, so repeating it leaves the same result).
  // The closures capture by value: the best one is kept in the Peak and runs after return.
  Device* d = &dev;
  kernels.push_back({"copy", 8, [=]() -> Status {
                       if (gpu) return gpu::copy(*d, b, a, n);
                       cpu_copy(*pool, b, a, n);
                       return Ok();
                     }});
  // triad: a = b + s*c with b == a's initial values after copy: idempotent too.
  kernels.push_back({"triad", 12, [=]() -> Status {
                       if (gpu) return gpu::triad(*d, a, b, c, kTriadS, n);
                       cpu_triad(*pool, a, b, c, kTriadS, n);
                       return Ok();
                     }});
  // update: x = alpha*x + beta*y, in place on b (which holds test_value(kSeedA) after copy);
  // repeated calls move b, so it is refilled and run once more before the check.
  kernels.push_back({"update", 12, [=]() -> Status {
                       if (gpu) return gpu::update(*d, b, c, kAlpha, kBeta, n);
                       cpu_update(*pool, b, c, kAlpha, kBeta, n);
                       return Ok();
                     }});
  // memcpy: a (the triad's result) into a fourth buffer, GPU only.
  float* m = gpu ? (*bufs)[3].as<float>() : nullptr;
  if (gpu) kernels.push_back({"memcpy", 8, [=]() { return gpu::memcpy_d2d(*d, m, a, n); }});

  Peak peak;
  for (auto& k : kernels) {
    // Order matters: copy leaves b = a's initial values, which triad and update start from.
    MYCEL_ASSIGN_OR_RETURN(std::vector<double> ms, time_calls(dev, warmup, reps, k.run));
    int64_t wrong = 0;
    std::string what(k.name);
    if (what == "copy") {
      MYCEL_ASSIGN_OR_RETURN(wrong, count_wrong(b, [](size_t i) { return test_value(kSeedA, i); }));
    } else if (what == "triad") {
      MYCEL_ASSIGN_OR_RETURN(wrong, count_wrong(a, [](size_t i) {
                               return test_value(kSeedA, i) + kTriadS * test_value(kSeedC, i);
                             }));
    } else if (what == "update") {
      MYCEL_CHECK(fill(dev, b, DType::kF32, n, kSeedA));
      MYCEL_CHECK(k.run());
      MYCEL_ASSIGN_OR_RETURN(wrong, count_wrong(b, [](size_t i) {
                               return kAlpha * test_value(kSeedA, i) + kBeta * test_value(kSeedC, i);
                             }));
    } else {  // memcpy: a holds the triad's result
      MYCEL_ASSIGN_OR_RETURN(wrong, count_wrong(m, [](size_t i) {
                               return test_value(kSeedA, i) + kTriadS * test_value(kSeedC, i);
                             }));
    }
    const double bytes = k.bytes_per_elem * static_cast<double>(n);
    Record r;
    r.set("op", "peak:" + what).set("codec", "fp32").set("params", n).set("size", format_size(n));
    r.set("k", 0);
    set_device_fields(r, dev);
    set_timing(r, bytes, ms, 0, "", use_min);
    r.set("wrong", wrong).set("checked", pos.size());
    const double gbps = r.number("gbps");
    peak.rows.push_back(std::move(r));
    peak.wrong += wrong;
    if (gbps > peak.gbps) {
      peak.gbps = gbps;
      peak.best = what;
      peak.best_bytes = bytes;
      peak.run_best = k.run;
    }
  }
  for (auto& r : peak.rows) {
    r.set("peak_gbps", peak.gbps).set("peak_op", peak.best);
    r.set("ratio", peak.gbps > 0 ? r.number("gbps") / peak.gbps : 0.0);
  }
  peak.buffers = bufs;
  return peak;
}

Status time_against_peak(Record& r, Device& dev, const Peak& peak, double bytes, int warmup,
                         int reps, bool use_min, const std::function<Status()>& kernel) {
  if (!peak.run_best) return Error(Code::kInternal, "no peak kernel to pair with");
  for (int i = 0; i < warmup; ++i) {
    MYCEL_CHECK(peak.run_best());
    MYCEL_CHECK(kernel());
  }
  std::vector<double> ms, peak_ms;
  for (int i = 0; i < reps; ++i) {
    MYCEL_ASSIGN_OR_RETURN(std::vector<double> p, time_calls(dev, 0, 1, peak.run_best));
    MYCEL_ASSIGN_OR_RETURN(std::vector<double> k, time_calls(dev, 0, 1, kernel));
    peak_ms.push_back(p[0]);
    ms.push_back(k[0]);
  }
  auto stat = [&](const std::vector<double>& v) {
    return use_min ? *std::min_element(v.begin(), v.end()) : median(v);
  };
  const double pt = stat(peak_ms);
  const double peak_gbps = pt > 0 ? peak.best_bytes / (pt * 1e-3) / 1e9 : 0;
  set_timing(r, bytes, ms, peak_gbps, peak.best, use_min);
  r.set("peak_ms", pt).set("peak_gbps_run", peak.gbps);
  return Ok();
}

}  // namespace mycel::bench
