// Built only when the CUDA toolkit is absent: the CUDA backend reports zero devices and why.
#include "kernels/device_impl.h"

namespace mycel {
Result<std::shared_ptr<Device>> make_cuda_device(int) {
  return Error(Code::kUnavailable, "this build has no cuda support (configured without the toolkit)");
}
int cuda_device_count_impl(std::string* why_none) {
  if (why_none) *why_none = "this build has no cuda support";
  return 0;
}
bool cuda_compiled_impl() { return false; }
}  // namespace mycel

#include "kernels/backend.h"
namespace mycel {
const KernelTable* cuda_kernels() { return nullptr; }
}  // namespace mycel

#include "kernels/train_ops.h"
namespace mycel {
const TrainKernelTable* cuda_train_kernels() { return nullptr; }
}  // namespace mycel
