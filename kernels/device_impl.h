// Constructors of the concrete devices, for device.cpp's factory. cuda_stub.cpp provides the
// CUDA ones in a build without the toolkit (zero devices, with the reason).
#pragma once

#include <memory>
#include <string>

#include "kernels/device.h"

namespace mycel {
std::shared_ptr<Device> make_cpu_device(int threads);
Result<std::shared_ptr<Device>> make_cuda_device(int ordinal);
int cuda_device_count_impl(std::string* why_none);
bool cuda_compiled_impl();
}  // namespace mycel
