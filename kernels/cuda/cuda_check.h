// One macro for CUDA runtime, cuBLAS and NCCL errors (NCCL's CUDACHECK habit): it turns a failed
// call into a Status (kInternal) naming the call, file and line, and returns it.
#pragma once

#include <cuda_runtime.h>

#include <string>

#include "common/status.h"

namespace mycel::cuda {
inline Status from_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  return Error(Code::kInternal, std::string(expr) + " failed: " + cudaGetErrorString(e) + " (" +
                                    file + ":" + std::to_string(line) + ")");
}
}  // namespace mycel::cuda

#define MYCEL_CUDA_CHECK(expr)                                                 \
  do {                                                                         \
    cudaError_t _mycel_e = (expr);                                             \
    if (_mycel_e != cudaSuccess)                                               \
      return ::mycel::cuda::from_cuda(_mycel_e, #expr, __FILE__, __LINE__);    \
  } while (0)

// After a kernel launch: catches bad launch configurations at once.
#define MYCEL_CUDA_LAUNCH_CHECK() MYCEL_CUDA_CHECK(cudaGetLastError())

// The cudaStream_t of a mycel Stream (the device's default stream when s is null).
#define MYCEL_CUDA_STREAM(dev, s) \
  static_cast<cudaStream_t>(((s) ? (s) : (dev).stream())->native())
