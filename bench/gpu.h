// The GPU side of the bench harness: cudaEvent timing and the bandwidth-peak kernels. gpu.cu
// implements it when the CUDA backend is built; gpu_stub.cpp (compiled to nothing in a CUDA
// build) answers kUnavailable otherwise, so callers need no #ifdef.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

#include "common/status.h"
#include "kernels/device.h"

namespace mycel::bench::gpu {

bool compiled();

// Calls fn warmup times, then reps times between two cudaEvents on dev's default stream;
// returns the milliseconds of each timed call.
Result<std::vector<double>> time_calls(Device& dev, int warmup, int reps,
                                       const std::function<Status()>& fn);

// Peak kernels, enqueued on dev's default stream (device pointers, n floats each).
Status copy(Device& dev, float* b, const float* a, size_t n);                       // b = a
Status triad(Device& dev, float* a, const float* b, const float* c, float s, size_t n);  // a = b + s*c
Status update(Device& dev, float* x, const float* y, float alpha, float beta, size_t n);  // x = alpha*x + beta*y
Status memcpy_d2d(Device& dev, float* dst, const float* src, size_t n);             // cudaMemcpyAsync

}  // namespace mycel::bench::gpu
