// The default registered-memory calls of Transport (see transport.h): a region is checked and
// its range copied into a vector that send() then owns. Transports that can read registered
// memory in place (ucx) override all three.
#include "transport/transport.h"

#include <fmt/format.h>

#include <chrono>
#include <cstring>
#include <thread>

namespace mycel::transport {

Result<MemoryRegion> Transport::register_memory(void* base, size_t bytes, MemoryType type) {
  if (type == MemoryType::kCuda && device_ops_ == nullptr) {
    return Error(Code::kUnavailable,
                 "cannot register device memory: this transport has no DeviceMemoryOps "
                 "(Options::device_ops) to copy it out with");
  }
  return regions_.add(base, bytes, type);
}

Status Transport::deregister_memory(const MemoryRegion& r) {
  auto impl = regions_.remove(r);
  return impl.is_ok() ? Ok() : impl.status();
}

SendBuffer& SendBuffer::operator=(SendBuffer&& o) noexcept {
  if (this != &o) {
    reset();
    owner_ = o.owner_;
    id_ = o.id_;
    data_ = o.data_;
    size_ = o.size_;
    vec_ = std::move(o.vec_);
    o.owner_ = nullptr;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

void SendBuffer::reset() {
  if (owner_ != nullptr) owner_->release_send_buffer(id_, std::move(vec_));
  owner_ = nullptr;
  data_ = nullptr;
  size_ = 0;
  vec_ = {};
}

SendBuffer Transport::make_send_buffer(uint64_t id, uint8_t* data, size_t size,
                                       std::vector<uint8_t> vec) {
  SendBuffer b;
  b.owner_ = this;
  b.id_ = id;
  b.vec_ = std::move(vec);
  b.data_ = b.vec_.empty() ? data : b.vec_.data();
  b.size_ = b.vec_.empty() ? size : b.vec_.size();
  return b;
}

Result<SendBuffer> Transport::acquire_send_buffer(size_t bytes) {
  return Error(Code::kUnavailable, "this transport has no send buffers");
}

Status Transport::send_buffer(const Address& peer, SendBuffer&& buf, size_t used, uint8_t tclass,
                              uint64_t* token) {
  buf.reset();
  return Error(Code::kUnavailable, "this transport has no send buffers");
}

Status Transport::send_region(const Address& peer, const MemoryRegion& r, size_t offset,
                              size_t bytes, uint64_t* token, uint8_t tclass) {
  MYCEL_CHECK(regions_.use(r, offset, bytes, /*acquire=*/false).status());
  const auto* src = static_cast<const uint8_t*>(r.base) + offset;
  std::vector<uint8_t> copy(bytes);
  if (r.type == MemoryType::kHost) {
    if (bytes > 0) std::memcpy(copy.data(), src, bytes);
    return send(peer, std::move(copy), token, tclass);
  }
  // Device memory: copy out through the ops and wait (the inproc transport is for tests and
  // the simulator; ucx stages without waiting).
  if (device_ops_ == nullptr) return Error(Code::kUnavailable, "no DeviceMemoryOps");
  if (bytes > 0) {
    MYCEL_ASSIGN_OR_RETURN(uint64_t ticket, device_ops_->copy_to_host(copy.data(), src, bytes));
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      MYCEL_ASSIGN_OR_RETURN(bool done, device_ops_->copy_done(ticket));
      if (done) break;
      if (std::chrono::steady_clock::now() > end) {
        // The copy may still write into the buffer: leak it rather than free it under DMA.
        new std::vector<uint8_t>(std::move(copy));
        return Error(Code::kTimeout, "device-to-host copy did not finish in 60 s");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  return send(peer, std::move(copy), token, tclass);
}

}  // namespace mycel::transport
