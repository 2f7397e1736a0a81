// GPU side of the bench harness (built with the CUDA backend): cudaEvent timing and the
// bandwidth-peak kernels, as plain grid-stride loops over float4 with a scalar tail.
#include <cuda_runtime.h>

#include <algorithm>

#include "bench/gpu.h"
#include "kernels/cuda/cuda_check.h"

namespace mycel::bench::gpu {
namespace {

constexpr int kThreads = 256;

// Each thread handles float4s at a grid stride; the n % 4 tail goes to the first threads.
// cudaMalloc'd pointers are 256-byte aligned, so the float4 view is aligned.
__global__ void copy_kernel(float* __restrict__ b, const float* __restrict__ a, size_t n) {
  const size_t n4 = n / 4;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t t = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float4* a4 = reinterpret_cast<const float4*>(a);
  float4* b4 = reinterpret_cast<float4*>(b);
  for (size_t i = t; i < n4; i += stride) b4[i] = a4[i];
  if (t < n - n4 * 4) b[n4 * 4 + t] = a[n4 * 4 + t];
}

__global__ void triad_kernel(float* __restrict__ a, const float* __restrict__ b,
                             const float* __restrict__ c, float s, size_t n) {
  const size_t n4 = n / 4;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t t = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float4* b4 = reinterpret_cast<const float4*>(b);
  const float4* c4 = reinterpret_cast<const float4*>(c);
  float4* a4 = reinterpret_cast<float4*>(a);
  for (size_t i = t; i < n4; i += stride) {
    float4 bv = b4[i], cv = c4[i];
    a4[i] = make_float4(bv.x + s * cv.x, bv.y + s * cv.y, bv.z + s * cv.z, bv.w + s * cv.w);
  }
  if (t < n - n4 * 4) a[n4 * 4 + t] = b[n4 * 4 + t] + s * c[n4 * 4 + t];
}

__global__ void update_kernel(float* __restrict__ x, const float* __restrict__ y, float alpha,
                              float beta, size_t n) {
  const size_t n4 = n / 4;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  const size_t t = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const float4* y4 = reinterpret_cast<const float4*>(y);
  float4* x4 = reinterpret_cast<float4*>(x);
  for (size_t i = t; i < n4; i += stride) {
    float4 xv = x4[i], yv = y4[i];
    x4[i] = make_float4(alpha * xv.x + beta * yv.x, alpha * xv.y + beta * yv.y,
                        alpha * xv.z + beta * yv.z, alpha * xv.w + beta * yv.w);
  }
  if (t < n - n4 * 4) x[n4 * 4 + t] = alpha * x[n4 * 4 + t] + beta * y[n4 * 4 + t];
}

// Enough blocks to fill the GPU several times over, capped by the work (at least one block,
// which also covers the tail of up to 3 elements).
unsigned blocks_for(Device& dev, size_t n) {
  size_t want = (n / 4 + kThreads - 1) / kThreads;
  size_t cap = static_cast<size_t>(std::max(1, dev.threads())) * 32;
  return static_cast<unsigned>(std::max<size_t>(1, std::min(want, cap)));
}

cudaStream_t stream_of(Device& dev) { return static_cast<cudaStream_t>(dev.stream()->native()); }

// Two events, destroyed on every path.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  ~EventPair() {
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
  }
};

}  // namespace

bool compiled() { return true; }

Result<std::vector<double>> time_calls(Device& dev, int warmup, int reps,
                                       const std::function<Status()>& fn) {
  if (dev.kind() != DeviceKind::kCuda)
    return Error(Code::kInvalidArgument, "gpu timing asked for a non-cuda device");
  MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  EventPair ev;
  MYCEL_CUDA_CHECK(cudaEventCreate(&ev.start));
  MYCEL_CUDA_CHECK(cudaEventCreate(&ev.stop));
  cudaStream_t st = stream_of(dev);
  for (int i = 0; i < warmup; ++i) MYCEL_CHECK(fn());
  MYCEL_CHECK(dev.sync());
  std::vector<double> ms;
  ms.reserve(reps);
  for (int i = 0; i < reps; ++i) {
    MYCEL_CUDA_CHECK(cudaEventRecord(ev.start, st));
    MYCEL_CHECK(fn());
    MYCEL_CUDA_CHECK(cudaEventRecord(ev.stop, st));
    MYCEL_CUDA_CHECK(cudaEventSynchronize(ev.stop));
    float t = 0;
    MYCEL_CUDA_CHECK(cudaEventElapsedTime(&t, ev.start, ev.stop));
    ms.push_back(static_cast<double>(t));
  }
  MYCEL_CHECK(dev.sync());
  return ms;
}

Status copy(Device& dev, float* b, const float* a, size_t n) {
  if (n == 0) return Ok();
  MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  copy_kernel<<<blocks_for(dev, n), kThreads, 0, stream_of(dev)>>>(b, a, n);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status triad(Device& dev, float* a, const float* b, const float* c, float s, size_t n) {
  if (n == 0) return Ok();
  MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  triad_kernel<<<blocks_for(dev, n), kThreads, 0, stream_of(dev)>>>(a, b, c, s, n);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status update(Device& dev, float* x, const float* y, float alpha, float beta, size_t n) {
  if (n == 0) return Ok();
  MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  update_kernel<<<blocks_for(dev, n), kThreads, 0, stream_of(dev)>>>(x, y, alpha, beta, n);
  MYCEL_CUDA_LAUNCH_CHECK();
  return Ok();
}

Status memcpy_d2d(Device& dev, float* dst, const float* src, size_t n) {
  if (n == 0) return Ok();
  MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  MYCEL_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice,
                                   stream_of(dev)));
  return Ok();
}

}  // namespace mycel::bench::gpu
