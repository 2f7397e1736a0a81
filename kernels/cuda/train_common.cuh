// Internals of the CUDA training kernels behind cuda_train_kernels() (kernels/train_ops.h):
// the cuBLAS check macro, the per-(device, stream) context that owns a cuBLAS handle and the
// scratch of the column-sum reduction, launch geometry, and the launchers of each kernel family
// (one train_*.cu file each). Device code stays C++17 (nvcc 11.4 on JetPack 5 must build it).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "common/status.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/train_ops.h"

namespace mycel::cuda::train {

const char* cublas_status_name(cublasStatus_t st);

// cuBLAS is loaded on first use (dlopen), not linked: libcublasLt alone is half a gigabyte, and
// a linked library is mapped and relocated at start-up by every process, including CPU-only
// peers of a CUDA build (226 MB of resident memory each before this). Only the entry points
// used here; their types come from cublas_v2.h (whose macros name the _v2 symbols).
struct Cublas {
  decltype(&cublasCreate) create = nullptr;
  decltype(&cublasDestroy) destroy = nullptr;
  decltype(&cublasSetStream) set_stream = nullptr;
  decltype(&cublasSetWorkspace) set_workspace = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(&cublasSetPointerMode) set_pointer_mode = nullptr;
  decltype(&cublasSgemm) sgemm = nullptr;
};
// The loaded library, or kUnavailable naming what failed (library or symbol not found).
Result<const Cublas*> cublas();

inline Status from_cublas(cublasStatus_t st, const char* expr, const char* file, int line) {
  return Error(Code::kInternal, std::string(expr) + " failed: " + cublas_status_name(st) + " (" +
                                    file + ":" + std::to_string(line) + ")");
}

}  // namespace mycel::cuda::train

// The cuBLAS twin of MYCEL_CUDA_CHECK: a failed call becomes a kInternal Status naming it.
#define MYCEL_CUBLAS_CHECK(expr)                                                         \
  do {                                                                                   \
    cublasStatus_t _mycel_b = (expr);                                                    \
    if (_mycel_b != CUBLAS_STATUS_SUCCESS)                                               \
      return ::mycel::cuda::train::from_cublas(_mycel_b, #expr, __FILE__, __LINE__);     \
  } while (0)

namespace mycel::cuda::train {

constexpr int kThreads = 256;  // threads per block of the element-wise kernels

// What one stream of one GPU needs beyond its kernels: a cuBLAS handle bound to that stream
// with its own workspace (so two streams never share one, and nothing is allocated inside a
// GEMM call: cuBLAS then is safe to capture in a CUDA graph), and the scratch that holds the
// per-block partial sums of bias_grad and softmax_xent (reduced in a fixed order by a second
// kernel, so results are deterministic without atomics). Created on first use and kept for the process; `mu` serialises the host threads
// that enqueue on the same stream, and is held only while enqueueing, never while waiting.
struct StreamContext {
  std::mutex mu;
  int ordinal = 0;
  cudaStream_t stream = nullptr;
  const Cublas* api = nullptr;
  cublasHandle_t blas = nullptr;
  void* blas_workspace = nullptr;
  size_t blas_workspace_bytes = 0;
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

// The context of (dev, s); s == nullptr is the device's default stream. Makes dev current.
Result<StreamContext*> context_for(Device& dev, Stream* s);

// Grows ctx->scratch to at least `bytes` (caller holds ctx->mu). Only the first call of a larger
// size allocates (and waits for the stream, so the old buffer is idle when freed): warm up
// before capturing a CUDA graph.
Status reserve_scratch(StreamContext* ctx, size_t bytes);

// Kernel launches go to the calling thread's current device: make it dev's.
inline Status use_device(const Device& dev) {
  int cur = -1;
  MYCEL_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != dev.ordinal()) MYCEL_CUDA_CHECK(cudaSetDevice(dev.ordinal()));
  return Ok();
}

// Blocks for a grid-stride loop over `work` items: enough to fill every SM (8 resident blocks
// of kThreads each), never more than the work needs, never zero.
inline unsigned grid_for(const Device& dev, size_t work, int threads = kThreads) {
  size_t want = (work + size_t(threads) - 1) / size_t(threads);
  const size_t cap = size_t(dev.threads() > 0 ? dev.threads() : 1) * 8;
  if (want > cap) want = cap;
  if (want < 1) want = 1;
  return static_cast<unsigned>(want);
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ size_t global_tid() {
  return size_t(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t grid_stride() { return size_t(gridDim.x) * blockDim.x; }

// Launchers, one family per file. Arguments were validated by train_dispatch.cpp.
// train_gemm.cu
Status gemm(Device&, bool trans_a, bool trans_b, int m, int n, int k, float alpha,
            const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc,
            Stream*);
// train_elementwise.cu
Status bias_act(Device&, float* y, const float* bias, size_t rows, size_t cols, Activation act,
                Stream*);
Status relu_backward(Device&, float* dy, const float* y, size_t n, Stream*);
Status sgd_update(Device&, float* p, const float* g, float* v, size_t n, const SgdParams& opt,
                  Stream*);
Status gather_rows(Device&, const float* src_x, const int32_t* src_y, size_t src_rows,
                   size_t dim, const int32_t* idx, size_t count, float* dst_x, int32_t* dst_y,
                   Stream*);
Status nchw_to_nhwc(Device&, const float* x, float* y, int batch, int channels, int height,
                    int width, Stream*);
// train_reduce.cu
Status bias_grad(Device&, float* db, const float* dy, size_t rows, size_t cols, float beta,
                 Stream*);
Status softmax_xent(Device&, const float* logits, const int32_t* labels, size_t rows,
                    int classes, float* dlogits, float grad_scale, float* acc, Stream*);
// train_conv.cu
Status maxpool_forward(Device&, const float* x, float* y, int32_t* argmax, const PoolShape& s,
                       Stream*);
Status maxpool_backward(Device&, const float* dy, const int32_t* argmax, float* dx,
                        const PoolShape& s, Stream*);
Status im2col(Device&, const float* x, float* col, const ConvShape& s, Stream*);
Status col2im(Device&, const float* col, float* dx, const ConvShape& s, Stream*);

}  // namespace mycel::cuda::train
