// Merge kernels: the k-way weighted sum (fp32 accumulation over fp32/fp16/bf16 inputs) and the
// in-place mix, rounded exactly as the CPU rounds them. Memory-bound: each thread moves 4
// elements per step with 16-byte (fp32) or 8-byte (fp16/bf16) loads when every pointer allows
// it, else one element at a time.
#include <cuda_fp16.h>

#include "common/half.h"
#include "kernels/cuda/cuda_common.cuh"

namespace mycel::cuda {
namespace {

struct WsArgs {
  const void* p[kMaxInputs];
  float w[kMaxInputs];
  int dt[kMaxInputs];
  int k;
};

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ float load1(const void* p, int dt, size_t i) {
  if (dt == kDtF32) return static_cast<const float*>(p)[i];
  uint16_t h = static_cast<const uint16_t*>(p)[i];
  return dt == kDtF16 ? h2f(h) : bf16_to_f32(h);
}

// Elements 4v .. 4v+3.
__device__ __forceinline__ float4 load4(const void* p, int dt, size_t v) {
  if (dt == kDtF32) return static_cast<const float4*>(p)[v];
  uint2 u = static_cast<const uint2*>(p)[v];
  uint16_t h0 = static_cast<uint16_t>(u.x), h1 = static_cast<uint16_t>(u.x >> 16);
  uint16_t h2 = static_cast<uint16_t>(u.y), h3 = static_cast<uint16_t>(u.y >> 16);
  if (dt == kDtF16) return make_float4(h2f(h0), h2f(h1), h2f(h2), h2f(h3));
  return make_float4(bf16_to_f32(h0), bf16_to_f32(h1), bf16_to_f32(h2), bf16_to_f32(h3));
}

// The CPU's roundings, spelled out so nvcc does not fuse them into FMAs: the GPU gives the
// CPU's bits. c * x + a * y with c = 1 - a.
__device__ __forceinline__ float mix1(float x, float y, float a, float c) {
  return __fadd_rn(__fmul_rn(c, x), __fmul_rn(a, y));
}
__device__ __forceinline__ float madd(float acc, float w, float x) {
  return __fadd_rn(acc, __fmul_rn(w, x));
}

// out may be one of the fp32 inputs: each thread reads all inputs of its elements before it
// writes them, and no other thread touches them, so no __restrict__ here.
template <bool kVec>
__global__ void weighted_sum_kernel(float* out, WsArgs a, size_t n) {
  size_t start = 0;
  if (kVec) {
    const size_t nv = n / 4;
    for (size_t v = global_tid(); v < nv; v += grid_stride()) {
      // The CPU's order: acc = w0 * x0, then acc += wj * xj.
      const float4 t0 = load4(a.p[0], a.dt[0], v);
      const float w0 = a.w[0];
      float4 acc = make_float4(__fmul_rn(w0, t0.x), __fmul_rn(w0, t0.y), __fmul_rn(w0, t0.z),
                               __fmul_rn(w0, t0.w));
#pragma unroll
      for (int j = 1; j < kMaxInputs; ++j) {
        if (j < a.k) {
          float4 t = load4(a.p[j], a.dt[j], v);
          const float w = a.w[j];
          acc.x = madd(acc.x, w, t.x); acc.y = madd(acc.y, w, t.y);
          acc.z = madd(acc.z, w, t.z); acc.w = madd(acc.w, w, t.w);
        }
      }
      reinterpret_cast<float4*>(out)[v] = acc;
    }
    start = nv * 4;
  }
  for (size_t i = start + global_tid(); i < n; i += grid_stride()) {
    float acc = __fmul_rn(a.w[0], load1(a.p[0], a.dt[0], i));
#pragma unroll
    for (int j = 1; j < kMaxInputs; ++j) {
      if (j < a.k) acc = madd(acc, a.w[j], load1(a.p[j], a.dt[j], i));
    }
    out[i] = acc;
  }
}

// y may be x itself (a self-mix), so no __restrict__.
template <bool kVec>
__global__ void mix_kernel(float* x, const float* y, float a, size_t n) {
  const float b = 1.f - a;
  size_t start = 0;
  if (kVec) {
    const size_t nv = n / 4;
    float4* xv = reinterpret_cast<float4*>(x);
    const float4* yv = reinterpret_cast<const float4*>(y);
    for (size_t v = global_tid(); v < nv; v += grid_stride()) {
      float4 p = xv[v];
      const float4 q = yv[v];
      p.x = mix1(p.x, q.x, a, b); p.y = mix1(p.y, q.y, a, b);
      p.z = mix1(p.z, q.z, a, b); p.w = mix1(p.w, q.w, a, b);
      xv[v] = p;
    }
    start = nv * 4;
  }
  for (size_t i = start + global_tid(); i < n; i += grid_stride()) x[i] = mix1(x[i], y[i], a, b);
}

}  // namespace

Status weighted_sum(Device& dev, float* out, const Input* in, int k, size_t n, Stream* s) {
  if (k < 1 || k > kMaxInputs)
    return Error(Code::kInvalidArgument, "weighted_sum: k out of range");
  if (n == 0) return Ok();
  // A misaligned pointer would fault the GPU and poison the context: refuse it here.
  if (reinterpret_cast<uintptr_t>(out) % 4 != 0)
    return Error(Code::kInvalidArgument, "weighted_sum: out not 4-byte aligned");
  for (int j = 0; j < k; ++j) {
    const uintptr_t need = in[j].dtype == kDtF32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(in[j].data) % need != 0)
      return Error(Code::kInvalidArgument, "weighted_sum: input not aligned to its dtype");
  }
  MYCEL_CHECK(use_device(dev));
  WsArgs a{};
  bool vec = aligned16(out);
  for (int j = 0; j < k; ++j) {
    a.p[j] = in[j].data;
    a.w[j] = in[j].weight;
    a.dt[j] = in[j].dtype;
    vec = vec && (in[j].dtype == kDtF32 ? aligned16(in[j].data) : aligned8(in[j].data));
  }
  a.k = k;
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  if (vec) weighted_sum_kernel<true><<<grid_for(dev, n / 4 + 1), kThreads, 0, st>>>(out, a, n);
  else weighted_sum_kernel<false><<<grid_for(dev, n), kThreads, 0, st>>>(out, a, n);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status mix(Device& dev, float* x, const float* y, float a, size_t n, Stream* s) {
  if (n == 0) return Ok();
  if (reinterpret_cast<uintptr_t>(x) % 4 != 0 || reinterpret_cast<uintptr_t>(y) % 4 != 0)
    return Error(Code::kInvalidArgument, "mix: pointers not 4-byte aligned");
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  if (aligned16(x) && aligned16(y))
    mix_kernel<true><<<grid_for(dev, n / 4 + 1), kThreads, 0, st>>>(x, y, a, n);
  else
    mix_kernel<false><<<grid_for(dev, n), kThreads, 0, st>>>(x, y, a, n);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

}  // namespace mycel::cuda
