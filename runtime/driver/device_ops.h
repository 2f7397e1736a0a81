// The transport's window on device memory (transport::DeviceMemoryOps) built from a kernels
// Device: page-locked host buffers from Device::alloc_host, device-to-host copies on a stream
// of their own (so that staging a model does not queue behind training kernels), and
// completion marks (Device::record / query) so the transport polls a copy instead of waiting.
// Header-only: the transport benchmark (bench/, which does not link the runtime) uses it too.
#pragma once

#include <memory>

#include "common/status.h"
#include "kernels/device.h"
#include "transport/memory.h"

namespace mycel::runtime {

inline Result<std::shared_ptr<const transport::DeviceMemoryOps>> device_memory_ops(
    std::shared_ptr<Device> dev) {
  if (dev == nullptr) return Error(Code::kInvalidArgument, "no device");
  MYCEL_ASSIGN_OR_RETURN(std::unique_ptr<Stream> owned, dev->create_stream());
  // The ops share ownership of the device and the copy stream; the stream is destroyed before
  // the device (declaration order in the holder).
  struct Holder {
    std::shared_ptr<Device> dev;
    std::unique_ptr<Stream> stream;
  };
  auto h = std::make_shared<Holder>(Holder{std::move(dev), std::move(owned)});
  auto ops = std::make_shared<transport::DeviceMemoryOps>();
  ops->alloc_pinned = [h](size_t bytes) { return h->dev->alloc_host(bytes); };
  ops->free_pinned = [h](void* p) { h->dev->free_host(p); };
  ops->copy_to_host = [h](void* dst, const void* src, size_t bytes) -> Result<uint64_t> {
    MYCEL_CHECK(h->dev->copy(dst, src, bytes, CopyKind::kDeviceToHost, h->stream.get()));
    return h->dev->record(h->stream.get());
  };
  ops->copy_done = [h](uint64_t ticket) { return h->dev->query(ticket); };
  return std::shared_ptr<const transport::DeviceMemoryOps>(std::move(ops));
}


}  // namespace mycel::runtime
