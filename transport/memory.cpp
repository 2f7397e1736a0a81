#include "transport/memory.h"

#include <fmt/format.h>

namespace mycel::transport {

std::string_view memory_type_name(MemoryType t) {
  switch (t) {
    case MemoryType::kHost: return "host";
    case MemoryType::kCuda: return "cuda";
  }
  return "unknown";
}

Result<MemoryRegion> RegionRegistry::add(void* base, size_t bytes, MemoryType type, void* impl) {
  if (base == nullptr || bytes == 0) {
    return Error(Code::kInvalidArgument, "cannot register an empty region");
  }
  if (type != MemoryType::kHost && type != MemoryType::kCuda) {
    return Error(Code::kInvalidArgument, "unknown memory type");
  }
  std::lock_guard lock(mu_);
  MemoryRegion r{next_id_++, base, bytes, type};
  map_[r.id] = Entry{r, impl, 0};
  return r;
}

Result<void*> RegionRegistry::use(const MemoryRegion& r, size_t offset, size_t bytes,
                                  bool acquire) {
  std::lock_guard lock(mu_);
  auto it = map_.find(r.id);
  if (it == map_.end() || it->second.region.base != r.base ||
      it->second.region.bytes != r.bytes || it->second.region.type != r.type) {
    return Error(Code::kNotFound, fmt::format("region {} is not registered with this transport",
                                              r.id));
  }
  if (offset > r.bytes || bytes > r.bytes - offset) {
    return Error(Code::kOutOfRange,
                 fmt::format("range [{}, {}) lies outside region {} of {} bytes", offset,
                             offset + bytes, r.id, r.bytes));
  }
  if (acquire) it->second.busy++;
  return it->second.impl;
}

void RegionRegistry::release(uint64_t id) {
  std::lock_guard lock(mu_);
  auto it = map_.find(id);
  if (it != map_.end() && it->second.busy > 0) it->second.busy--;
}

Result<void*> RegionRegistry::remove(const MemoryRegion& r) {
  std::lock_guard lock(mu_);
  auto it = map_.find(r.id);
  if (it == map_.end() || it->second.region.base != r.base || it->second.region.bytes != r.bytes) {
    return Error(Code::kNotFound, fmt::format("region {} is not registered with this transport",
                                              r.id));
  }
  if (it->second.busy > 0) {
    return Error(Code::kNoResource,
                 fmt::format("region {} is still read by {} send(s) in flight", r.id,
                             it->second.busy));
  }
  void* impl = it->second.impl;
  map_.erase(it);
  return impl;
}

std::vector<void*> RegionRegistry::clear() {
  std::lock_guard lock(mu_);
  std::vector<void*> out;
  for (auto& [id, e] : map_) out.push_back(e.impl);
  map_.clear();
  return out;
}

}  // namespace mycel::transport
