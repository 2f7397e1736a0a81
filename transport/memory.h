// Registered memory for zero-copy sends (NCCL's regMr + isend(mhandle), UCX's ucp_mem_map).
//
// A caller that sends from the same large buffers again and again (a model's encode buffer, a
// staging area) registers them once; a send then names a registered region and a range inside
// it instead of handing over a vector. The transport reads the bytes in place (no copy where
// the network allows it, and no registration on the send path), and the caller keeps them
// alive and unchanged until the send's kSendComplete / kSendFailed event.
//
// Regions may hold host memory or CUDA device memory. Device bytes must be final when
// send_region is called: the work that wrote them has completed (Device::sync on its stream),
// since the transport reads them on a stream of its own. Where the network layer cannot read
// device memory (Debian's UCX is built without CUDA), the transport stages device bytes
// through page-locked host buffers it owns, copying with the DeviceMemoryOps the caller gives
// in Options: the transport layer links no CUDA itself (the runtime builds the ops from its
// kernels::Device; runtime/driver/device_ops.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace mycel::transport {

enum class MemoryType : uint8_t { kHost = 0, kCuda = 1 };
std::string_view memory_type_name(MemoryType t);

// What register_memory gives back; pass it to send_region and deregister_memory unchanged.
struct MemoryRegion {
  uint64_t id = 0;  // 0: not a region
  void* base = nullptr;
  size_t bytes = 0;
  MemoryType type = MemoryType::kHost;
};

// How a transport reaches device memory it cannot hand to the network directly. Every
// function must be callable from the thread that drives the transport, and none may block
// for long: copies are started and then polled.
struct DeviceMemoryOps {
  // Page-locked host memory for staging buffers, and its release.
  std::function<Result<void*>(size_t bytes)> alloc_pinned;
  std::function<void(void*)> free_pinned;
  // Starts copying `bytes` from device memory `src` to host memory `dst`; returns a ticket.
  std::function<Result<uint64_t>(void* dst, const void* src, size_t bytes)> copy_to_host;
  // Whether the copy with this ticket has finished (an error: it failed; the ticket is then
  // spent). Called until it returns true or an error.
  std::function<Result<bool>(uint64_t ticket)> copy_done;
};

// The regions of one transport: ids, bounds checks and the count of sends reading each, so
// that a region is never deregistered under a send. Thread-safe.
class RegionRegistry {
 public:
  // impl: the implementation's handle for the region (a ucp_mem_h), kept with it.
  Result<MemoryRegion> add(void* base, size_t bytes, MemoryType type, void* impl = nullptr);
  // Checks that r is a live region of this registry (same id, base, size and type) and that
  // [offset, offset + bytes) lies inside it; returns its impl handle. acquire: count one more
  // send reading it (release() when that send ends).
  Result<void*> use(const MemoryRegion& r, size_t offset, size_t bytes, bool acquire);
  void release(uint64_t id);
  // Forgets r and returns its impl handle; kNoResource while sends still read it.
  Result<void*> remove(const MemoryRegion& r);
  // Forgets every region (at shutdown) and returns their impl handles.
  std::vector<void*> clear();

 private:
  struct Entry {
    MemoryRegion region;
    void* impl = nullptr;
    size_t busy = 0;
  };
  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, Entry> map_;
};

}  // namespace mycel::transport
