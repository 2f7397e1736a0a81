// Internals of the CPU backend: the kernels behind cpu_kernels() and the helpers they share.
// Callers (ops.cpp, codec.cpp) have checked every argument; these functions trust them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

#include "common/half.h"
#include "common/thread_pool.h"
#include "kernels/backend.h"

// Hot loops get an AVX2 clone next to the baseline one on x86-64 (picked once at load time by
// an ifunc), so the binary stays portable (x86-64 baseline, aarch64) and still uses 256-bit
// vectors where the CPU has them. GCC only: clang's target_clones support is younger.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MYCEL_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define MYCEL_CLONES
#endif

// Element-wise loops whose output may be exactly one of their inputs (in-place merge): there is
// no loop-carried dependence, so the compiler may vectorise without a runtime overlap check
// (which would send the in-place case to the scalar fallback).
#if defined(__clang__)
#define MYCEL_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define MYCEL_IVDEP _Pragma("GCC ivdep")
#else
#define MYCEL_IVDEP
#endif

#define MYCEL_INLINE inline __attribute__((always_inline))

namespace mycel::cpu {

// Below this many elements a loop runs on the calling thread alone.
constexpr size_t kGrain = size_t(1) << 15;

// Splits [0, n) over the device's pool in ranges whose boundaries are multiples of align.
inline void parallel(Device& dev, size_t n, size_t align,
                     const std::function<void(size_t, size_t, int)>& fn) {
  if (n == 0) return;
  ThreadPool* p = dev.pool();
  if (!p) {
    fn(0, n, 0);
    return;
  }
  p->parallel_for(n, kGrain, align, fn);
}

// fp16 -> fp32 without branches so that the decode loops vectorise; the same bits as
// f16_to_f32 for all 65536 inputs (tests/kernels check every one).
MYCEL_INLINE float f16_to_f32_fast(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exp = o & shifted_exp;
  o += (127u - 15u) << 23;
  const uint32_t inf_nan = o + ((128u - 16u) << 23);
  // Subnormal or zero: renormalise through a float subtraction (exact).
  const float sub = bits_f32(o + (1u << 23)) - bits_f32(113u << 23);
  // Selects as masks: a ternary here is kept as a branch and stops the vectoriser.
  const uint32_t m_inf = 0u - static_cast<uint32_t>(exp == shifted_exp);
  const uint32_t m_sub = 0u - static_cast<uint32_t>(exp == 0);
  o = (o & ~m_inf) | (inf_nan & m_inf);
  o = (o & ~m_sub) | (f32_bits(sub) & m_sub);
  return bits_f32(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}

inline int pool_size(Device& dev) { return dev.pool() ? dev.pool()->size() : 1; }

Status weighted_sum(Device&, float* out, const MergeInput* in, int k, size_t n, Stream*);
Status mix(Device&, float* x, const float* y, float a, size_t n, Stream*);
Status l2_norm(Device&, const float* x, size_t n, double* out, Stream*);
Status l2_distance(Device&, const float* x, const float* y, size_t n, double* out, Stream*);
Status count_nonfinite(Device&, const float* x, size_t n, uint64_t* out, Stream*);

Status encode_body(Device&, const PayloadHeader& h, const float* x, float* residual,
                   uint8_t* body, Stream*);
Status validate_body(Device&, const PayloadHeader& h, const uint8_t* body, Stream*);
Status decode_body(Device&, const PayloadHeader& h, const uint8_t* body, float* out, Stream*);
Status decode_merge_body(Device&, const PayloadHeader& h, const uint8_t* body, float* x,
                         float a, Stream*);

}  // namespace mycel::cpu
