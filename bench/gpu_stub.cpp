// The GPU side of the bench harness in a build without the CUDA backend: nothing is compiled
// in, and every call says so. In a CUDA build gpu.cu provides these and this file is empty.
#include "bench/gpu.h"

#ifndef MYCEL_HAVE_CUDA

namespace mycel::bench::gpu {
namespace {
Status none() { return Error(Code::kUnavailable, "this build has no cuda support"); }
}  // namespace

bool compiled() { return false; }
Result<std::vector<double>> time_calls(Device&, int, int, const std::function<Status()>&) {
  return none();
}
Status copy(Device&, float*, const float*, size_t) { return none(); }
Status triad(Device&, float*, const float*, const float*, float, size_t) { return none(); }
Status update(Device&, float*, const float*, float, float, size_t) { return none(); }
Status memcpy_d2d(Device&, float*, const float*, size_t) { return none(); }
}  // namespace mycel::bench::gpu

#endif  // MYCEL_HAVE_CUDA
