// Reductions: L2 norm, L2 distance, NaN/Inf counts. Each thread accumulates in fp64 (as the CPU
// does), each block writes one partial to the device scratch, and the host sums the partials in
// block order, so results are deterministic and differ from the CPU's only by summation order.
#include <cmath>

#include "kernels/cuda/cuda_common.cuh"

namespace mycel::cuda {
namespace {

template <bool kDist, bool kVec>
__global__ void sumsq_kernel(const float* __restrict__ x, const float* __restrict__ y, size_t n,
                             double* __restrict__ partials) {
  double acc = 0.0;
  size_t start = 0;
  if (kVec) {
    const size_t nv = n / 4;
    const float4* xv = reinterpret_cast<const float4*>(x);
    const float4* yv = reinterpret_cast<const float4*>(y);
    for (size_t i = global_tid(); i < nv; i += grid_stride()) {
      const float4 a = xv[i];
      double d0 = a.x, d1 = a.y, d2 = a.z, d3 = a.w;
      if (kDist) {
        const float4 b = yv[i];
        d0 -= b.x; d1 -= b.y; d2 -= b.z; d3 -= b.w;
      }
      acc += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
    }
    start = nv * 4;
  }
  for (size_t i = start + global_tid(); i < n; i += grid_stride()) {
    double d = kDist ? static_cast<double>(x[i]) - static_cast<double>(y[i])
                     : static_cast<double>(x[i]);
    acc += d * d;
  }
  double t = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = t;
}

// counts[0] = NaN/Inf in x; with a residual, counts[1] = NaN/Inf in x + residual.
template <bool kEf>
__global__ void nonfinite_kernel(const float* __restrict__ x, const float* __restrict__ r,
                                 size_t n, unsigned long long* __restrict__ partials) {
  unsigned long long cx = 0, cv = 0;
  for (size_t i = global_tid(); i < n; i += grid_stride()) {
    float xi = x[i];
    cx += nonfinite_bits(__float_as_uint(xi)) ? 1u : 0u;
    if (kEf) {
      float v = __fadd_rn(xi, r[i]);
      cv += nonfinite_bits(__float_as_uint(v)) ? 1u : 0u;
    }
  }
  unsigned long long tx = block_sum(cx);
  unsigned long long tv = kEf ? block_sum(cv) : 0ull;
  if (threadIdx.x == 0) {
    partials[2 * blockIdx.x] = tx;
    partials[2 * blockIdx.x + 1] = tv;
  }
}

Status sumsq(Device& dev, const float* x, const float* y, size_t n, double* out, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  const bool vec = aligned16(x) && (y == nullptr || aligned16(y));
  unsigned blocks = grid_for(dev, vec ? n / 4 + 1 : n, 4);
  if (blocks > kMaxReduceBlocks) blocks = kMaxReduceBlocks;
  std::unique_lock<std::mutex> lock;
  MYCEL_ASSIGN_OR_RETURN(Scratch * sc,
                         Scratch::acquire(dev, blocks * sizeof(double), blocks * sizeof(double),
                                          &lock));
  double* partials = static_cast<double*>(sc->dev());
  if (y) {
    if (vec) sumsq_kernel<true, true><<<blocks, kThreads, 0, st>>>(x, y, n, partials);
    else sumsq_kernel<true, false><<<blocks, kThreads, 0, st>>>(x, y, n, partials);
  } else {
    if (vec) sumsq_kernel<false, true><<<blocks, kThreads, 0, st>>>(x, y, n, partials);
    else sumsq_kernel<false, false><<<blocks, kThreads, 0, st>>>(x, y, n, partials);
  }
  MYCEL_CUDA_LAUNCH_CHECK();
  return sum_partials(st, sc, blocks, 1, out);
}

}  // namespace

Status l2_norm(Device& dev, const float* x, size_t n, double* out, Stream* s) {
  double ss = 0.0;
  MYCEL_CHECK(sumsq(dev, x, nullptr, n, &ss, s));
  *out = std::sqrt(ss);
  return Ok();
}

Status l2_distance(Device& dev, const float* x, const float* y, size_t n, double* out,
                   Stream* s) {
  double ss = 0.0;
  MYCEL_CHECK(sumsq(dev, x, y, n, &ss, s));
  *out = std::sqrt(ss);
  return Ok();
}

Status count_nonfinite_ef(Device& dev, const float* x, const float* residual, size_t n,
                          uint64_t* in_x, uint64_t* in_v, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  unsigned blocks = grid_for(dev, n, 4);
  if (blocks > kMaxReduceBlocks) blocks = kMaxReduceBlocks;
  const size_t bytes = 2 * blocks * sizeof(unsigned long long);
  std::unique_lock<std::mutex> lock;
  MYCEL_ASSIGN_OR_RETURN(Scratch * sc, Scratch::acquire(dev, bytes, bytes, &lock));
  auto* partials = static_cast<unsigned long long*>(sc->dev());
  if (residual) nonfinite_kernel<true><<<blocks, kThreads, 0, st>>>(x, residual, n, partials);
  else nonfinite_kernel<false><<<blocks, kThreads, 0, st>>>(x, residual, n, partials);
  MYCEL_CUDA_LAUNCH_CHECK();
  unsigned long long c[2] = {0, 0};
  MYCEL_CHECK(sum_partials(st, sc, blocks, 2, c));
  if (in_x) *in_x = c[0];
  if (in_v) *in_v = residual ? c[1] : c[0];
  return Ok();
}

Status count_nonfinite(Device& dev, const float* x, size_t n, uint64_t* out, Stream* s) {
  return count_nonfinite_ef(dev, x, nullptr, n, out, nullptr, s);
}

}  // namespace mycel::cuda
