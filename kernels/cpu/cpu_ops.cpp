// CPU merge and reduction kernels: one contiguous range per pool thread, inner loops written so
// the compiler vectorises them (fp32 accumulation for merges, fp64 for reductions).
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "common/half.h"
#include "kernels/cpu/cpu_kernels.h"

namespace mycel::cpu {
namespace {

// ---- weighted sum ----
// Accumulation order is fixed (acc = w0*x0; acc += wj*xj for j = 1..k-1) in both paths below, so
// the all-fp32 path and the mixed-dtype path give the same bits for the same values.

template <int K>
MYCEL_INLINE void wsum_f32_k(float* out, const float* const* xs, const float* ws, size_t b,
                             size_t e) {
  const float* p[K];
  float w[K];
  for (int j = 0; j < K; ++j) {
    p[j] = xs[j];
    w[j] = ws[j];
  }
  MYCEL_IVDEP
  for (size_t i = b; i < e; ++i) {
    float acc = w[0] * p[0][i];
    for (int j = 1; j < K; ++j) acc += w[j] * p[j][i];
    out[i] = acc;
  }
}

MYCEL_CLONES void wsum_f32(float* out, const float* const* xs, const float* ws, int k, size_t b,
                           size_t e) {
  switch (k) {
    case 1: wsum_f32_k<1>(out, xs, ws, b, e); break;
    case 2: wsum_f32_k<2>(out, xs, ws, b, e); break;
    case 3: wsum_f32_k<3>(out, xs, ws, b, e); break;
    case 4: wsum_f32_k<4>(out, xs, ws, b, e); break;
    case 5: wsum_f32_k<5>(out, xs, ws, b, e); break;
    case 6: wsum_f32_k<6>(out, xs, ws, b, e); break;
    case 7: wsum_f32_k<7>(out, xs, ws, b, e); break;
    default: wsum_f32_k<8>(out, xs, ws, b, e); break;
  }
}

#if defined(__x86_64__) || defined(_M_X64)
// Out-of-place sums over vectors far beyond the caches: streaming (non-temporal) stores write
// out without first reading each line into the cache (the read-for-ownership a normal store
// costs), so the kernel moves 4(k+1) bytes per element instead of 4(k+2). Same arithmetic and
// order as wsum_f32_k, so the same bits. SSE2 is in every x86-64.
template <int K>
MYCEL_INLINE void wsum_f32_stream_k(float* out, const float* const* xs, const float* ws,
                                    size_t b, size_t e) {
  size_t i = b;
  auto scalar = [&](size_t i) {
    float acc = ws[0] * xs[0][i];
    for (int j = 1; j < K; ++j) acc += ws[j] * xs[j][i];
    out[i] = acc;
  };
  for (; i < e && reinterpret_cast<uintptr_t>(out + i) % 16 != 0; ++i) scalar(i);
  __m128 w[K];
  for (int j = 0; j < K; ++j) w[j] = _mm_set1_ps(ws[j]);
  for (; i + 4 <= e; i += 4) {
    __m128 acc = _mm_mul_ps(w[0], _mm_loadu_ps(xs[0] + i));
    for (int j = 1; j < K; ++j) acc = _mm_add_ps(acc, _mm_mul_ps(w[j], _mm_loadu_ps(xs[j] + i)));
    _mm_stream_ps(out + i, acc);
  }
  for (; i < e; ++i) scalar(i);
  _mm_sfence();  // order the streaming stores before the pool's join publishes the result
}

void wsum_f32_stream(float* out, const float* const* xs, const float* ws, int k, size_t b,
                     size_t e) {
  switch (k) {
    case 1: wsum_f32_stream_k<1>(out, xs, ws, b, e); break;
    case 2: wsum_f32_stream_k<2>(out, xs, ws, b, e); break;
    case 3: wsum_f32_stream_k<3>(out, xs, ws, b, e); break;
    case 4: wsum_f32_stream_k<4>(out, xs, ws, b, e); break;
    case 5: wsum_f32_stream_k<5>(out, xs, ws, b, e); break;
    case 6: wsum_f32_stream_k<6>(out, xs, ws, b, e); break;
    case 7: wsum_f32_stream_k<7>(out, xs, ws, b, e); break;
    default: wsum_f32_stream_k<8>(out, xs, ws, b, e); break;
  }
}
constexpr bool kHaveStreamingStores = true;
#else
void wsum_f32_stream(float*, const float* const*, const float*, int, size_t, size_t) {}
constexpr bool kHaveStreamingStores = false;
#endif

// Output vectors of 32 MiB and more would not stay in the caches anyway.
constexpr size_t kStreamMinElems = size_t(1) << 23;

template <typename Load>
MYCEL_INLINE void tile_acc(float* __restrict tile, size_t m, float w, bool first, Load load) {
  if (first) {
    for (size_t i = 0; i < m; ++i) tile[i] = w * load(i);
  } else {
    for (size_t i = 0; i < m; ++i) tile[i] += w * load(i);
  }
}

// Mixed dtypes: accumulate a cache-resident tile input by input, then store it. Every input of a
// tile is read before the tile is written, so out may be one of the fp32 inputs.
MYCEL_CLONES void wsum_mixed(float* out, const MergeInput* in, int k, size_t b, size_t e) {
  constexpr size_t kTile = 1024;
  alignas(64) float tile[kTile];
  for (size_t c = b; c < e; c += kTile) {
    size_t m = std::min(kTile, e - c);
    for (int j = 0; j < k; ++j) {
      const float w = in[j].weight;
      const bool first = j == 0;
      switch (in[j].dtype) {
        case DType::kF32: {
          const float* p = static_cast<const float*>(in[j].data) + c;
          tile_acc(tile, m, w, first, [p](size_t i) { return p[i]; });
          break;
        }
        case DType::kF16: {
          const uint16_t* p = static_cast<const uint16_t*>(in[j].data) + c;
          tile_acc(tile, m, w, first, [p](size_t i) { return f16_to_f32_fast(p[i]); });
          break;
        }
        case DType::kBF16: {
          const uint16_t* p = static_cast<const uint16_t*>(in[j].data) + c;
          tile_acc(tile, m, w, first, [p](size_t i) { return bf16_to_f32(p[i]); });
          break;
        }
      }
    }
    std::memcpy(out + c, tile, m * sizeof(float));
  }
}

MYCEL_CLONES void mix_range(float* x, const float* y, float a, size_t b, size_t e) {
  const float c = 1.f - a;
  MYCEL_IVDEP
  for (size_t i = b; i < e; ++i) x[i] = c * x[i] + a * y[i];
}

// ---- reductions: 8 independent fp64 partial sums so the loop pipelines (and vectorises
// without reassociating anything the result depends on run to run) ----

MYCEL_CLONES double sumsq_range(const float* x, size_t b, size_t e) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = b;
  for (; i + 8 <= e; i += 8)
    for (int l = 0; l < 8; ++l) {
      double v = x[i + l];
      acc[l] += v * v;
    }
  for (; i < e; ++i) {
    double v = x[i];
    acc[0] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

MYCEL_CLONES double sumsqdiff_range(const float* x, const float* y, size_t b, size_t e) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = b;
  for (; i + 8 <= e; i += 8)
    for (int l = 0; l < 8; ++l) {
      double v = static_cast<double>(x[i + l]) - static_cast<double>(y[i + l]);
      acc[l] += v * v;
    }
  for (; i < e; ++i) {
    double v = static_cast<double>(x[i]) - static_cast<double>(y[i]);
    acc[0] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

MYCEL_CLONES uint64_t nonfinite_range(const float* x, size_t b, size_t e) {
  uint64_t c = 0;
  for (size_t i = b; i < e; ++i) {
    uint32_t u = f32_bits(x[i]);
    c += (u & 0x7f800000u) == 0x7f800000u;
  }
  return c;
}

}  // namespace

Status weighted_sum(Device& dev, float* out, const MergeInput* in, int k, size_t n, Stream*) {
  bool all_f32 = true;
  const float* xs[kMaxMergeInputs];
  float ws[kMaxMergeInputs];
  for (int j = 0; j < k; ++j) {
    all_f32 = all_f32 && in[j].dtype == DType::kF32;
    xs[j] = static_cast<const float*>(in[j].data);
    ws[j] = in[j].weight;
  }
  bool in_place = false;
  for (int j = 0; j < k; ++j) in_place = in_place || xs[j] == out;
  if (all_f32 && kHaveStreamingStores && !in_place && n >= kStreamMinElems) {
    parallel(dev, n, 16, [&](size_t b, size_t e, int) { wsum_f32_stream(out, xs, ws, k, b, e); });
  } else if (all_f32) {
    parallel(dev, n, 16, [&](size_t b, size_t e, int) { wsum_f32(out, xs, ws, k, b, e); });
  } else {
    parallel(dev, n, 1024, [&](size_t b, size_t e, int) { wsum_mixed(out, in, k, b, e); });
  }
  return Ok();
}

Status mix(Device& dev, float* x, const float* y, float a, size_t n, Stream*) {
  parallel(dev, n, 16, [&](size_t b, size_t e, int) { mix_range(x, y, a, b, e); });
  return Ok();
}

Status l2_norm(Device& dev, const float* x, size_t n, double* out, Stream*) {
  std::vector<double> part(pool_size(dev), 0.0);
  parallel(dev, n, 16, [&](size_t b, size_t e, int t) { part[t] += sumsq_range(x, b, e); });
  double s = 0;
  for (double p : part) s += p;
  *out = std::sqrt(s);
  return Ok();
}

Status l2_distance(Device& dev, const float* x, const float* y, size_t n, double* out, Stream*) {
  std::vector<double> part(pool_size(dev), 0.0);
  parallel(dev, n, 16,
           [&](size_t b, size_t e, int t) { part[t] += sumsqdiff_range(x, y, b, e); });
  double s = 0;
  for (double p : part) s += p;
  *out = std::sqrt(s);
  return Ok();
}

Status count_nonfinite(Device& dev, const float* x, size_t n, uint64_t* out, Stream*) {
  std::vector<uint64_t> part(pool_size(dev), 0);
  parallel(dev, n, 16, [&](size_t b, size_t e, int t) { part[t] += nonfinite_range(x, b, e); });
  uint64_t s = 0;
  for (uint64_t p : part) s += p;
  *out = s;
  return Ok();
}

}  // namespace mycel::cpu
