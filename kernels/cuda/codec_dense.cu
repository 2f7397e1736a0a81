// CUDA codec kernels: encode (with optional error feedback), validate, decode and the fused
// decode+merge for every codec of codec.h; top-k's exact select lives in codec_topk.cu.
// Payload bits equal the CPU's (kernels/cpu/cpu_codec.cpp): both use codec_math.h and half.h,
// and every product whose rounding matters is written with __fmul_rn / __fadd_rn / __fsub_rn
// so nvcc cannot fuse it into an FMA. The merge formula is the CPU's, c * x + a * d with
// c = 1 - a, rounded the same way, so decode+merge also gives the CPU's bits.
//
// The fused decode+merge is memory-bound: a thread handles units of 4 parameters (one float4 of
// x, 4 / 8 / 16 bytes of int8 / fp16 / fp32 body, 2 bytes of int4) so that every warp-wide load
// and store covers whole 128-byte lines, four independent units per loop trip to keep enough
// bytes in flight, grid-stride over a grid sized from the SM count, no atomics, and the scale
// of a unit read once (a warp-wide broadcast from L1) when the block size is a multiple of 4.
#include <cuda_fp16.h>

#include <cfloat>
#include <string>

#include "common/half.h"
#include "kernels/codec_math.h"
#include "kernels/cuda/cuda_common.cuh"

namespace mycel::cuda {
namespace cm = codec_math;
namespace {

constexpr float kF16Max = 65504.f;
constexpr uint32_t kBf16MaxBits = 0x7f7f0000u;  // largest finite bfloat16
constexpr unsigned long long kNone = ~0ull;

// ---- layout of a body (codec.h's top comment), computed on the host ----

using Layout = codec_math::BodyLayout;

Layout layout(const Header& h, const uint8_t* body) {
  return codec_math::body_layout(h.n, h.k, h.block,
                                 h.codec == kCodecInt8 || h.codec == kCodecInt4,
                                 h.codec == kCodecTopK, body);
}

// Index of the quantisation block of parameter i: a shift for power-of-two blocks.
struct BlockOf {
  uint64_t block;
  int shift;  // log2(block), or -1
  __device__ __forceinline__ size_t operator()(size_t i) const {
    return shift >= 0 ? (i >> shift) : (i / block);
  }
};

BlockOf block_of(size_t block) {
  int shift = -1;
  if (block && (block & (block - 1)) == 0) {
    shift = 0;
    while ((size_t(1) << shift) < block) ++shift;
  }
  return BlockOf{block, shift};
}

// Bodies hold fp32 / uint32 arrays (2-byte fp16 / bf16): a misaligned pointer would fault the
// GPU and poison the context, so it is refused at the boundary instead.
Status check_alignment(const Header& h, const void* body, const float* x) {
  const uintptr_t need = (h.codec == kCodecFp16 || h.codec == kCodecBf16) ? 2 : 4;
  if (reinterpret_cast<uintptr_t>(body) % need != 0)
    return Error(Code::kInvalidArgument,
                 "cuda codec: body pointer not " + std::to_string(need) + "-byte aligned");
  if (x && reinterpret_cast<uintptr_t>(x) % 4 != 0)
    return Error(Code::kInvalidArgument, "cuda codec: float pointer not 4-byte aligned");
  return Ok();
}

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ float mix1(float x, float d, float a, float c) {
  return __fadd_rn(__fmul_rn(c, x), __fmul_rn(a, d));
}

__device__ __forceinline__ uint32_t umax32(uint32_t a, uint32_t b) { return a > b ? a : b; }

__device__ __forceinline__ float vload(const float* x, const float* r, size_t i) {
  return r ? __fadd_rn(x[i], r[i]) : x[i];
}

// ---- decode sources: unit(u) gives parameters 4u .. 4u+3, at(i) parameter i ----

struct F32Src {
  const float* p;
  __device__ __forceinline__ float4 unit(size_t u) const {
    return __ldg(reinterpret_cast<const float4*>(p) + u);
  }
  __device__ __forceinline__ float at(size_t i) const { return __ldg(p + i); }
};

template <bool kBf16>
struct Half16Src {
  const uint16_t* p;
  __device__ __forceinline__ static float cvt(uint32_t h) {
    return kBf16 ? bf16_to_f32(static_cast<uint16_t>(h)) : h2f(static_cast<uint16_t>(h));
  }
  __device__ __forceinline__ float4 unit(size_t u) const {
    const uint2 w = __ldg(reinterpret_cast<const uint2*>(p) + u);
    return make_float4(cvt(w.x & 0xffffu), cvt(w.x >> 16), cvt(w.y & 0xffffu), cvt(w.y >> 16));
  }
  __device__ __forceinline__ float at(size_t i) const { return cvt(__ldg(p + i)); }
};

__device__ __forceinline__ float q8(uint32_t w, int byte) {
  return static_cast<float>(static_cast<int8_t>(static_cast<uint8_t>(w >> (8 * byte))));
}

struct Int8Src {
  const float* scales;
  const int8_t* q;
  BlockOf blk;
  bool uniform4;  // block % 4 == 0: the 4 parameters of a unit share one scale
  __device__ __forceinline__ float4 unit(size_t u) const {
    const uint32_t w = __ldg(reinterpret_cast<const uint32_t*>(q) + u);
    const size_t i = 4 * u;
    float s0, s1, s2, s3;
    if (uniform4) {
      s0 = s1 = s2 = s3 = __ldg(scales + blk(i));
    } else {
      s0 = __ldg(scales + blk(i));
      s1 = __ldg(scales + blk(i + 1));
      s2 = __ldg(scales + blk(i + 2));
      s3 = __ldg(scales + blk(i + 3));
    }
    return make_float4(__fmul_rn(q8(w, 0), s0), __fmul_rn(q8(w, 1), s1),
                       __fmul_rn(q8(w, 2), s2), __fmul_rn(q8(w, 3), s3));
  }
  __device__ __forceinline__ float at(size_t i) const {
    return __fmul_rn(static_cast<float>(q[i]), __ldg(scales + blk(i)));
  }
};

struct Int4Src {
  const float* scales;
  const uint8_t* p;  // element 2j in the low nibble of byte j, 2j+1 in the high one
  BlockOf blk;
  bool uniform4;
  __device__ __forceinline__ float4 unit(size_t u) const {
    const uint32_t w = __ldg(reinterpret_cast<const unsigned short*>(p) + u);
    const uint8_t b0 = static_cast<uint8_t>(w), b1 = static_cast<uint8_t>(w >> 8);
    const size_t i = 4 * u;
    float s0, s1, s2, s3;
    if (uniform4) {
      s0 = s1 = s2 = s3 = __ldg(scales + blk(i));
    } else {
      s0 = __ldg(scales + blk(i));
      s1 = __ldg(scales + blk(i + 1));
      s2 = __ldg(scales + blk(i + 2));
      s3 = __ldg(scales + blk(i + 3));
    }
    return make_float4(__fmul_rn(static_cast<float>(cm::unpack4_lo(b0)), s0),
                       __fmul_rn(static_cast<float>(cm::unpack4_hi(b0)), s1),
                       __fmul_rn(static_cast<float>(cm::unpack4_lo(b1)), s2),
                       __fmul_rn(static_cast<float>(cm::unpack4_hi(b1)), s3));
  }
  __device__ __forceinline__ float at(size_t i) const {
    const uint8_t b = __ldg(p + (i >> 1));
    const int qi = (i & 1) ? cm::unpack4_hi(b) : cm::unpack4_lo(b);
    return __fmul_rn(static_cast<float>(qi), __ldg(scales + blk(i)));
  }
};

__device__ __forceinline__ float4 mix4(float4 x, float4 d, float a, float c) {
  return make_float4(mix1(x.x, d.x, a, c), mix1(x.y, d.y, a, c), mix1(x.z, d.z, a, c),
                     mix1(x.w, d.w, a, c));
}

// x = decode(src) (kMerge false) or x = (1 - a) x + a decode(src), dense codecs.
template <class Src, bool kMerge, bool kVec>
__global__ void dense_decode_kernel(Src src, float* __restrict__ x, float a, size_t n) {
  const float c = 1.f - a;
  const size_t stride = grid_stride();
  size_t start = 0;
  if (kVec) {
    const size_t nu = n / 4;
    float4* xv = reinterpret_cast<float4*>(x);
    size_t u = global_tid();
    for (; u + 3 * stride < nu; u += 4 * stride) {
      float4 d[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) d[r] = src.unit(u + r * stride);
      if (kMerge) {
        float4 p[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) p[r] = xv[u + r * stride];
#pragma unroll
        for (int r = 0; r < 4; ++r) d[r] = mix4(p[r], d[r], a, c);
      }
#pragma unroll
      for (int r = 0; r < 4; ++r) xv[u + r * stride] = d[r];
    }
    for (; u < nu; u += stride) {
      float4 d = src.unit(u);
      if (kMerge) d = mix4(xv[u], d, a, c);
      xv[u] = d;
    }
    start = nu * 4;
  }
  for (size_t i = start + global_tid(); i < n; i += stride) {
    const float d = src.at(i);
    x[i] = kMerge ? mix1(x[i], d, a, c) : d;
  }
}

template <bool kMerge>
__global__ void topk_decode_kernel(const uint32_t* __restrict__ idx, const float* __restrict__ v,
                                   size_t k, float* __restrict__ x, float a, size_t n) {
  const float c = 1.f - a;
  for (size_t j = global_tid(); j < k; j += grid_stride()) {
    const size_t i = idx[j];
    if (i >= n) continue;  // validated before; never write out of bounds regardless
    const float d = v[j];
    x[i] = kMerge ? mix1(x[i], d, a, c) : d;
  }
}

template <bool kMerge>
__global__ void randk_decode_kernel(cm::RandKPerm perm, const float* __restrict__ v, size_t k,
                                    float* __restrict__ x, float a) {
  const float c = 1.f - a;
  for (size_t j = global_tid(); j < k; j += grid_stride()) {
    const uint64_t i = cm::randk_index(perm, j);  // < perm.n, distinct for distinct j
    const float d = v[j];
    x[i] = kMerge ? mix1(x[i], d, a, c) : d;
  }
}

// ---- encode ----

__global__ void enc_f32_kernel(const float* __restrict__ x, float* __restrict__ r,
                               float* __restrict__ out, size_t n) {
  for (size_t i = global_tid(); i < n; i += grid_stride()) {
    out[i] = vload(x, r, i);
    if (r) r[i] = 0.f;
  }
}

template <bool kBf16>
__global__ void enc_16_kernel(const float* __restrict__ x, float* __restrict__ r,
                              uint16_t* __restrict__ out, size_t n) {
  // Saturate, as the CPU does: a finite model never turns into Inf on the wire.
  const float lim = kBf16 ? __uint_as_float(kBf16MaxBits) : kF16Max;
  for (size_t i = global_tid(); i < n; i += grid_stride()) {
    const float v = vload(x, r, i);
    const float cl = fminf(fmaxf(v, -lim), lim);
    const uint16_t q = kBf16 ? f32_to_bf16(cl) : f32_to_f16(cl);
    out[i] = q;
    if (r) r[i] = __fsub_rn(v, kBf16 ? bf16_to_f32(q) : f16_to_f32(q));
  }
}

// scales[b] = quant_scale(max |v| over block b, qmax). Small blocks: one thread per block;
// larger ones: one thread block per quantisation block, looping over blocks of any size.
template <bool kThreadPerBlock>
__global__ void scales_kernel(const float* __restrict__ x, const float* __restrict__ r, size_t n,
                              size_t block, size_t nblocks, int qmax, float* __restrict__ scales) {
  if (kThreadPerBlock) {
    for (size_t b = global_tid(); b < nblocks; b += grid_stride()) {
      const size_t s = b * block, t = s + block < n ? s + block : n;
      uint32_t m = 0;
      for (size_t i = s; i < t; ++i) m = umax32(m, __float_as_uint(vload(x, r, i)) & 0x7fffffffu);
      scales[b] = cm::quant_scale(__uint_as_float(m), qmax);
    }
  } else {
    for (size_t b = blockIdx.x; b < nblocks; b += gridDim.x) {  // uniform per thread block
      const size_t s = b * block, t = s + block < n ? s + block : n;
      uint32_t m = 0;
      for (size_t i = s + threadIdx.x; i < t; i += blockDim.x)
        m = umax32(m, __float_as_uint(vload(x, r, i)) & 0x7fffffffu);
      m = block_max(m);
      if (threadIdx.x == 0) scales[b] = cm::quant_scale(__uint_as_float(m), qmax);
    }
  }
}

__device__ __forceinline__ int quant_one(const float* x, float* r, size_t i, float s, int qmax) {
  const float v = vload(x, r, i);
  const int q = cm::quantize(v, cm::inv_scale_of(s), qmax);
  if (r) r[i] = __fsub_rn(v, __fmul_rn(static_cast<float>(q), s));
  return q;
}

__global__ void enc_int8_kernel(const float* __restrict__ x, float* __restrict__ r, size_t n,
                                BlockOf blk, const float* __restrict__ scales,
                                int8_t* __restrict__ q) {
  for (size_t i = global_tid(); i < n; i += grid_stride())
    q[i] = static_cast<int8_t>(quant_one(x, r, i, scales[blk(i)], 127));
}

// One byte (two parameters, possibly of two quantisation blocks) per step, so no two threads
// share a byte; for odd n the last high nibble is 0, as on the CPU.
__global__ void enc_int4_kernel(const float* __restrict__ x, float* __restrict__ r, size_t n,
                                BlockOf blk, const float* __restrict__ scales,
                                uint8_t* __restrict__ out) {
  const size_t nbytes = (n + 1) / 2;
  for (size_t j = global_tid(); j < nbytes; j += grid_stride()) {
    const size_t i = 2 * j;
    const int lo = quant_one(x, r, i, scales[blk(i)], 7);
    const int hi = i + 1 < n ? quant_one(x, r, i + 1, scales[blk(i + 1)], 7) : 0;
    out[j] = cm::pack4(lo, hi);
  }
}

__global__ void add_into_kernel(const float* __restrict__ x, float* __restrict__ r, size_t n) {
  for (size_t i = global_tid(); i < n; i += grid_stride()) r[i] = __fadd_rn(x[i], r[i]);
}

// values[j] = v[perm(j)]; with a residual (already holding v), the sent entries move from the
// residual into the body.
__global__ void randk_gather_kernel(cm::RandKPerm perm, const float* __restrict__ x,
                                    float* __restrict__ r, size_t k, float* __restrict__ vals) {
  for (size_t j = global_tid(); j < k; j += grid_stride()) {
    const uint64_t i = cm::randk_index(perm, j);
    if (r) {
      vals[j] = r[i];
      r[i] = 0.f;
    } else {
      vals[j] = x[i];
    }
  }
}

// ---- validate: each block reports its first non-finite and first corrupt position ----

__device__ __forceinline__ void put_firsts(unsigned long long nf, unsigned long long bad,
                                           unsigned long long* partials) {
  nf = block_min(nf);
  bad = block_min(bad);
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = nf;
    partials[2 * blockIdx.x + 1] = bad;
  }
}

// Values: 16-byte loads when the body allows (this pass reads the whole body before a decode,
// so it should run at memory speed too), then a scalar tail.
template <bool kVec>
__global__ void validate_f32_kernel(const float* __restrict__ v, size_t n,
                                    unsigned long long* __restrict__ partials) {
  unsigned long long nf = kNone;
  size_t start = 0;
  if (kVec) {
    const size_t nv = n / 4;
    for (size_t u = global_tid(); u < nv; u += grid_stride()) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(v) + u);
      const uint32_t lanes[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int q = 0; q < 4; ++q)
        if (nonfinite_bits(lanes[q]) && 4 * u + q < nf) nf = 4 * u + q;
    }
    start = nv * 4;
  }
  for (size_t i = start + global_tid(); i < n; i += grid_stride())
    if (nonfinite_bits(__float_as_uint(v[i])) && i < nf) nf = i;
  put_firsts(nf, kNone, partials);
}

template <bool kVec>
__global__ void validate_16_kernel(const uint16_t* __restrict__ v, uint32_t expmask, size_t n,
                                   unsigned long long* __restrict__ partials) {
  unsigned long long nf = kNone;
  size_t start = 0;
  if (kVec) {
    const size_t nv = n / 8;
    for (size_t u = global_tid(); u < nv; u += grid_stride()) {
      const uint4 w = __ldg(reinterpret_cast<const uint4*>(v) + u);
      const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        const uint32_t h = (words[q / 2] >> (16 * (q % 2))) & 0xffffu;
        if ((h & expmask) == expmask && 8 * u + q < nf) nf = 8 * u + q;
      }
    }
    start = nv * 8;
  }
  for (size_t i = start + global_tid(); i < n; i += grid_stride())
    if ((v[i] & expmask) == expmask && i < nf) nf = i;
  put_firsts(nf, kNone, partials);
}

__global__ void validate_scales_kernel(const float* __restrict__ s, size_t nblocks, float lim,
                                       unsigned long long* __restrict__ partials) {
  unsigned long long nf = kNone, bad = kNone;
  for (size_t j = global_tid(); j < nblocks; j += grid_stride()) {
    const float v = s[j];
    if (nonfinite_bits(__float_as_uint(v))) {
      if (j < nf) nf = j;
    } else if (!(v >= 0.f && v <= lim)) {
      if (j < bad) bad = j;
    }
  }
  put_firsts(nf, bad, partials);
}

__global__ void validate_topk_kernel(const uint32_t* __restrict__ idx,
                                     const float* __restrict__ v, size_t k, size_t n,
                                     unsigned long long* __restrict__ partials) {
  unsigned long long nf = kNone, bad = kNone;
  for (size_t j = global_tid(); j < k; j += grid_stride()) {
    const uint32_t i = idx[j];
    if ((i >= n || (j > 0 && i <= idx[j - 1])) && j < bad) bad = j;
    if (nonfinite_bits(__float_as_uint(v[j])) && j < nf) nf = j;
  }
  put_firsts(nf, bad, partials);
}

// ---- host side ----

template <class Src>
Status launch_decode(Device& dev, cudaStream_t st, const Src& src, bool vec, float* x, float a,
                     size_t n, bool merge) {
  if (vec) {
    const unsigned g = grid_for(dev, n / 4 + 1);
    if (merge) dense_decode_kernel<Src, true, true><<<g, kThreads, 0, st>>>(src, x, a, n);
    else dense_decode_kernel<Src, false, true><<<g, kThreads, 0, st>>>(src, x, a, n);
  } else {
    const unsigned g = grid_for(dev, n);
    if (merge) dense_decode_kernel<Src, true, false><<<g, kThreads, 0, st>>>(src, x, a, n);
    else dense_decode_kernel<Src, false, false><<<g, kThreads, 0, st>>>(src, x, a, n);
  }
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status decode_impl(Device& dev, const Header& h, const uint8_t* body, float* x, float a,
                   bool merge, Stream* s) {
  MYCEL_CHECK(check_alignment(h, body, x));
  if ((h.codec == kCodecInt8 || h.codec == kCodecInt4) && h.block == 0)
    return Error(Code::kInvalidArgument, "cuda decode: block size 0");
  const Layout l = layout(h, body);
  if (l.n == 0) return Ok();
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  const bool xv = aligned16(x);
  switch (h.codec) {
    case kCodecFp32:
      return launch_decode(dev, st, F32Src{reinterpret_cast<const float*>(l.data)},
                           xv && aligned16(l.data), x, a, l.n, merge);
    case kCodecFp16:
      return launch_decode(dev, st, Half16Src<false>{reinterpret_cast<const uint16_t*>(l.data)},
                           xv && aligned8(l.data), x, a, l.n, merge);
    case kCodecBf16:
      return launch_decode(dev, st, Half16Src<true>{reinterpret_cast<const uint16_t*>(l.data)},
                           xv && aligned8(l.data), x, a, l.n, merge);
    case kCodecInt8: {
      // l.data = body + 4 * nblocks: 4-byte aligned whenever body is (checked above).
      Int8Src src{l.scales, reinterpret_cast<const int8_t*>(l.data), block_of(l.block),
                  l.block % 4 == 0};
      return launch_decode(dev, st, src, xv, x, a, l.n, merge);
    }
    case kCodecInt4: {
      Int4Src src{l.scales, l.data, block_of(l.block), l.block % 4 == 0};
      return launch_decode(dev, st, src, xv, x, a, l.n, merge);
    }
    case kCodecTopK: {
      if (l.k == 0) return Ok();
      const float* v = reinterpret_cast<const float*>(l.data);
      const unsigned g = grid_for(dev, l.k);
      if (merge) topk_decode_kernel<true><<<g, kThreads, 0, st>>>(l.idx, v, l.k, x, a, l.n);
      else topk_decode_kernel<false><<<g, kThreads, 0, st>>>(l.idx, v, l.k, x, a, l.n);
      MYCEL_CUDA_LAUNCH_CHECK();
      return Ok();
    }
    case kCodecRandK: {
      if (l.k == 0) return Ok();
      if (l.k > l.n) return Error(Code::kInvalidArgument, "cuda decode: randk k > n");
      const float* v = reinterpret_cast<const float*>(l.data);
      const cm::RandKPerm perm = cm::make_randk_perm(h.n, h.seed);
      const unsigned g = grid_for(dev, l.k);
      if (merge) randk_decode_kernel<true><<<g, kThreads, 0, st>>>(perm, v, l.k, x, a);
      else randk_decode_kernel<false><<<g, kThreads, 0, st>>>(perm, v, l.k, x, a);
      MYCEL_CUDA_LAUNCH_CHECK();
      return Ok();
    }
  }
  return Error(Code::kCorrupt, "unknown codec");
}

}  // namespace

Status encode_body(Device& dev, const Header& h, const float* x, float* r, uint8_t* body,
                   Stream* s) {
  MYCEL_CHECK(check_alignment(h, body, x));
  if (r && reinterpret_cast<uintptr_t>(r) % 4 != 0)
    return Error(Code::kInvalidArgument, "cuda codec: residual pointer not 4-byte aligned");
  if ((h.codec == kCodecInt8 || h.codec == kCodecInt4) && h.block == 0)
    return Error(Code::kInvalidArgument, "cuda encode: block size 0");
  if ((h.codec == kCodecTopK || h.codec == kCodecRandK) && h.k > h.n)
    return Error(Code::kInvalidArgument, "cuda encode: k > n");
  // Pre-pass: NaN/Inf anywhere fails the encode with nothing written (residual untouched).
  uint64_t bad_x = 0, bad_v = 0;
  MYCEL_CHECK(count_nonfinite_ef(dev, x, r, h.n, &bad_x, &bad_v, s));
  if (bad_x || bad_v)
    return Error(Code::kNonFinite, r ? "encode input (x + residual) holds nan or inf"
                                     : "encode input holds nan or inf");
  const Layout l = layout(h, body);
  if (l.n == 0) return Ok();
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  const unsigned g = grid_for(dev, l.n);
  switch (h.codec) {
    case kCodecFp32:
      enc_f32_kernel<<<g, kThreads, 0, st>>>(x, r, reinterpret_cast<float*>(l.data), l.n);
      break;
    case kCodecFp16:
      enc_16_kernel<false><<<g, kThreads, 0, st>>>(x, r, reinterpret_cast<uint16_t*>(l.data), l.n);
      break;
    case kCodecBf16:
      enc_16_kernel<true><<<g, kThreads, 0, st>>>(x, r, reinterpret_cast<uint16_t*>(l.data), l.n);
      break;
    case kCodecInt8:
    case kCodecInt4: {
      const int qmax = h.codec == kCodecInt8 ? 127 : 7;
      if (l.block <= 32) {
        scales_kernel<true><<<grid_for(dev, l.nblocks), kThreads, 0, st>>>(
            x, r, l.n, l.block, l.nblocks, qmax, l.scales);
      } else {
        const size_t cap = static_cast<size_t>(dev.threads() > 0 ? dev.threads() : 1) * 8;
        const unsigned gb = static_cast<unsigned>(l.nblocks < cap ? l.nblocks : cap);
        scales_kernel<false><<<gb, kThreads, 0, st>>>(x, r, l.n, l.block, l.nblocks, qmax,
                                                      l.scales);
      }
      MYCEL_CUDA_LAUNCH_CHECK();
      if (h.codec == kCodecInt8) {
        enc_int8_kernel<<<g, kThreads, 0, st>>>(x, r, l.n, block_of(l.block), l.scales,
                                               reinterpret_cast<int8_t*>(l.data));
      } else {
        enc_int4_kernel<<<grid_for(dev, (l.n + 1) / 2), kThreads, 0, st>>>(
            x, r, l.n, block_of(l.block), l.scales, l.data);
      }
      break;
    }
    case kCodecTopK:
      return encode_topk(dev, h, x, r, body, s);
    case kCodecRandK: {
      const cm::RandKPerm perm = cm::make_randk_perm(h.n, h.seed);
      if (r) {  // residual <- v everywhere; the gather then moves the sent entries out of it
        add_into_kernel<<<g, kThreads, 0, st>>>(x, r, l.n);
        MYCEL_CUDA_LAUNCH_CHECK();
      }
      if (l.k == 0) return Ok();
      randk_gather_kernel<<<grid_for(dev, l.k), kThreads, 0, st>>>(
          perm, x, r, l.k, reinterpret_cast<float*>(l.data));
      break;
    }
    default:
      return Error(Code::kInvalidArgument, "unknown codec");
  }
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status validate_body(Device& dev, const Header& h, const uint8_t* body, Stream* s) {
  MYCEL_CHECK(check_alignment(h, body, nullptr));
  if ((h.codec == kCodecInt8 || h.codec == kCodecInt4) && h.block == 0)
    return Error(Code::kCorrupt, "payload block size 0");
  const Layout l = layout(h, body);
  size_t items = 0;
  switch (h.codec) {
    case kCodecInt8:
    case kCodecInt4: items = l.nblocks; break;
    case kCodecTopK:
    case kCodecRandK: items = l.k; break;
    default: items = l.n; break;
  }
  if (items == 0) return Ok();
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  unsigned g = grid_for(dev, items / 4 + 1, 8);
  if (g > kMaxReduceBlocks) g = kMaxReduceBlocks;
  const size_t bytes = 2 * static_cast<size_t>(g) * sizeof(unsigned long long);
  std::unique_lock<std::mutex> lock;
  MYCEL_ASSIGN_OR_RETURN(Scratch * sc, Scratch::acquire(dev, bytes, bytes, &lock));
  auto* partials = static_cast<unsigned long long*>(sc->dev());
  switch (h.codec) {
    case kCodecFp32:
    case kCodecRandK: {
      const float* v = reinterpret_cast<const float*>(l.data);
      if (aligned16(v)) validate_f32_kernel<true><<<g, kThreads, 0, st>>>(v, items, partials);
      else validate_f32_kernel<false><<<g, kThreads, 0, st>>>(v, items, partials);
      break;
    }
    case kCodecFp16:
    case kCodecBf16: {
      const uint16_t* v = reinterpret_cast<const uint16_t*>(l.data);
      const uint32_t mask = h.codec == kCodecFp16 ? 0x7c00u : 0x7f80u;
      if (aligned16(v))
        validate_16_kernel<true><<<g, kThreads, 0, st>>>(v, mask, items, partials);
      else
        validate_16_kernel<false><<<g, kThreads, 0, st>>>(v, mask, items, partials);
      break;
    }
    case kCodecInt8:
    case kCodecInt4:
      validate_scales_kernel<<<g, kThreads, 0, st>>>(
          l.scales, items, h.codec == kCodecInt8 ? FLT_MAX / 128.f : FLT_MAX / 8.f,
          partials);
      break;
    case kCodecTopK:
      validate_topk_kernel<<<g, kThreads, 0, st>>>(l.idx, reinterpret_cast<const float*>(l.data),
                                                   items, l.n, partials);
      break;
    default:
      return Error(Code::kCorrupt, "unknown codec");
  }
  MYCEL_CUDA_LAUNCH_CHECK();
  // Minimum over blocks of each first position (copied to the host in block order).
  MYCEL_CUDA_CHECK(cudaMemcpyAsync(sc->host(), sc->dev(), bytes, cudaMemcpyDeviceToHost, st));
  MYCEL_CUDA_CHECK(cudaStreamSynchronize(st));
  const auto* hp = static_cast<const unsigned long long*>(sc->host());
  unsigned long long nf = kNone, bad = kNone;
  for (unsigned b = 0; b < g; ++b) {
    nf = hp[2 * b] < nf ? hp[2 * b] : nf;
    bad = hp[2 * b + 1] < bad ? hp[2 * b + 1] : bad;
  }
  if (nf == kNone && bad == kNone) return Ok();
  switch (h.codec) {
    case kCodecInt8:
    case kCodecInt4:
      // The first bad scale decides, as on the CPU.
      if (nf < bad)
        return Error(Code::kNonFinite, "scale of block " + std::to_string(nf) + " is nan or inf");
      return Error(Code::kCorrupt, "scale of block " + std::to_string(bad) + " is out of range");
    case kCodecTopK:
      // A broken index list makes the values meaningless: it is reported first.
      if (bad != kNone)
        return Error(Code::kCorrupt, "topk index at " + std::to_string(bad) +
                                         " out of range or not strictly increasing (n=" +
                                         std::to_string(l.n) + ")");
      break;
    default:
      break;
  }
  return Error(Code::kNonFinite, "payload value " + std::to_string(nf) + " is nan or inf");
}

Status decode_body(Device& dev, const Header& h, const uint8_t* body, float* out,
                   Stream* s) {
  return decode_impl(dev, h, body, out, 0.f, false, s);
}

Status decode_merge_body(Device& dev, const Header& h, const uint8_t* body, float* x,
                         float a, Stream* s) {
  return decode_impl(dev, h, body, x, a, true, s);
}

}  // namespace mycel::cuda
