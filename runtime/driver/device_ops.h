// The transport's window on device memory (transport::DeviceMemoryOps) built from a kernels
// Device: page-locked host buffers from Device::alloc_host, device-to-host copies on a stream
// of their own (so that staging a model does not queue behind training kernels), and
// completion marks (Device::record / query) so the transport polls a copy instead of waiting.
#pragma once

#include <memory>

#include "common/status.h"
#include "kernels/device.h"
#include "transport/memory.h"

namespace mycel::runtime {

Result<std::shared_ptr<const transport::DeviceMemoryOps>> device_memory_ops(
    std::shared_ptr<Device> dev);

}  // namespace mycel::runtime
