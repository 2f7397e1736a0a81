// Internals shared by the CUDA kernels behind cuda_kernels(): launch geometry, alignment
// checks, block reductions and scans, and the per-device scratch cache. Device code stays C++17
// (nvcc 11.4 on JetPack 5 must build it).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>

#include "common/status.h"
#include "kernels/cuda/cuda_api.h"
#include "kernels/cuda/cuda_check.h"

namespace mycel::cuda {

constexpr int kThreads = 256;           // threads per block of every element-wise kernel
constexpr int kWarps = kThreads / 32;
constexpr int kMaxReduceBlocks = 1024;  // partials of a reduction, summed on the host

// Blocks for a grid-stride loop over `work` items of kThreads each: enough to fill every SM
// (8 resident blocks of 256 threads each), never more than the work needs.
inline unsigned grid_for(const Device& dev, size_t work, int per_sm = 8) {
  size_t want = (work + kThreads - 1) / kThreads;
  size_t cap = static_cast<size_t>(dev.threads() > 0 ? dev.threads() : 1) * per_sm;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  return static_cast<unsigned>(want);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline bool aligned8(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 7u) == 0; }

// Kernel launches go to the calling thread's current device; make it the device's own.
inline Status use_device(const Device& dev) {
  MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  return Ok();
}

__device__ __forceinline__ size_t global_tid() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_stride() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ bool nonfinite_bits(uint32_t u) {
  return (u & 0x7f800000u) == 0x7f800000u;
}

// Sum of v over the block (blockDim.x == kThreads); the result is valid in thread 0. The order
// of the additions is fixed, so the result is deterministic.
template <typename T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T warp_sums[kWarps];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  T r = T(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) r += warp_sums[w];
  }
  __syncthreads();  // warp_sums may be reused by a following call
  return r;
}

// Minimum / maximum over the block, valid in thread 0 (unsigned integers).
template <typename T>
__device__ __forceinline__ T block_min(T v) {
  __shared__ T warp_v[kWarps];
  for (int o = 16; o > 0; o >>= 1) {
    T t = __shfl_down_sync(0xffffffffu, v, o);
    v = t < v ? t : v;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_v[warp] = v;
  __syncthreads();
  T r = v;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) r = warp_v[w] < r ? warp_v[w] : r;
  }
  __syncthreads();
  return r;
}

template <typename T>
__device__ __forceinline__ T block_max(T v) {
  __shared__ T warp_v[kWarps];
  for (int o = 16; o > 0; o >>= 1) {
    T t = __shfl_down_sync(0xffffffffu, v, o);
    v = t > v ? t : v;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_v[warp] = v;
  __syncthreads();
  T r = v;
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarps; ++w) r = warp_v[w] > r ? warp_v[w] : r;
  }
  __syncthreads();
  return r;
}

// Exclusive prefix sum of v over the block (blockDim.x == kThreads), in thread order; *total
// receives the block's sum in every thread.
__device__ __forceinline__ uint32_t block_exclusive_scan(uint32_t v, uint32_t* total) {
  __shared__ uint32_t warp_tot[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t inc = v;
  for (int o = 1; o < 32; o <<= 1) {
    uint32_t t = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += t;
  }
  if (lane == 31) warp_tot[warp] = inc;
  __syncthreads();
  uint32_t before = 0, all = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += warp_tot[w];
    all += warp_tot[w];
  }
  __syncthreads();
  *total = all;
  return before + inc - v;
}

// Scratch memory of one GPU, grown on demand and kept for the process (CUB's TempStorage habit,
// cached). Whoever holds the lock owns both buffers and must synchronise its stream before it
// lets go, so no queued kernel still uses them.
class Scratch {
 public:
  // Locks the scratch of dev and makes sure it has at least the given sizes.
  static Result<Scratch*> acquire(const Device& dev, size_t device_bytes, size_t host_bytes,
                                  std::unique_lock<std::mutex>* lock);
  void* dev() { return d_; }
  void* host() { return h_; }

 private:
  std::mutex mu_;
  void* d_ = nullptr;
  size_t d_bytes_ = 0;
  void* h_ = nullptr;  // page-locked
  size_t h_bytes_ = 0;
};

// Copies `blocks` x `r` per-block partials from the scratch's device buffer, waits for the
// stream, and sums them on the host in block order (deterministic for a given grid).
template <typename T>
inline Status sum_partials(cudaStream_t st, Scratch* s, unsigned blocks, int r, T* out) {
  const size_t bytes = static_cast<size_t>(blocks) * static_cast<size_t>(r) * sizeof(T);
  MYCEL_CUDA_CHECK(cudaMemcpyAsync(s->host(), s->dev(), bytes, cudaMemcpyDeviceToHost, st));
  MYCEL_CUDA_CHECK(cudaStreamSynchronize(st));
  const T* h = static_cast<const T*>(s->host());
  for (int j = 0; j < r; ++j) out[j] = T(0);
  for (unsigned b = 0; b < blocks; ++b)
    for (int j = 0; j < r; ++j) out[j] += h[static_cast<size_t>(b) * r + j];
  return Ok();
}

}  // namespace mycel::cuda
