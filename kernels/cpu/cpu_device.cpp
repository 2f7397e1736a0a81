#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include "common/thread_pool.h"
#include "kernels/device.h"
#include "kernels/device_impl.h"

namespace mycel {
namespace {

class CpuStream final : public Stream {
 public:
  void* native() override { return nullptr; }
};

class CpuDevice final : public Device {
 public:
  explicit CpuDevice(int threads)
      : own_pool_(threads > 0 && threads != ThreadPool::global().size()
                      ? std::make_unique<ThreadPool>(threads) : nullptr),
        pool_(own_pool_ ? own_pool_.get() : &ThreadPool::global()) {}

  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override { return "cpu (" + std::to_string(pool_->size()) + " threads)"; }
  int threads() const override { return pool_->size(); }

  Result<void*> alloc(size_t bytes) override {
    if (bytes == 0) return static_cast<void*>(nullptr);
    // 64-byte alignment: whole cache lines, aligned vector loads.
    size_t rounded = (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) return Error(Code::kNoResource, "cpu alloc of " + std::to_string(bytes) + " bytes failed");
    return p;
  }
  void free(void* p) override { std::free(p); }
  Result<void*> alloc_host(size_t bytes) override { return alloc(bytes); }
  void free_host(void* p) override { std::free(p); }

  Stream* stream() override { return &stream_; }
  Result<std::unique_ptr<Stream>> create_stream() override {
    return std::unique_ptr<Stream>(std::make_unique<CpuStream>());
  }

  Status copy(void* dst, const void* src, size_t bytes, CopyKind, Stream*) override {
    if (bytes == 0) return Ok();
    if (!dst || !src) return Error(Code::kInvalidArgument, "copy with a null pointer");
    // Large copies are split over the pool so a copy runs at the machine's bandwidth.
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    pool_->parallel_for(bytes, size_t(1) << 20, 64, [&](size_t b, size_t e, int) {
      std::memcpy(d + b, s + b, e - b);
    });
    return Ok();
  }
  Status memset(void* dst, int value, size_t bytes, Stream*) override {
    if (bytes == 0) return Ok();
    if (!dst) return Error(Code::kInvalidArgument, "memset with a null pointer");
    auto* d = static_cast<char*>(dst);
    pool_->parallel_for(bytes, size_t(1) << 20, 64, [&](size_t b, size_t e, int) {
      std::memset(d + b, value, e - b);
    });
    return Ok();
  }
  Status sync(Stream*) override { return Ok(); }
  Result<uint64_t> record(Stream*) override { return next_mark_.fetch_add(1); }
  Result<bool> query(uint64_t mark) override {
    if (mark == 0 || mark >= next_mark_.load()) {
      return Error(Code::kNotFound, "unknown completion mark");
    }
    return true;  // CPU work is done when its call returns
  }
  ThreadPool* pool() override { return pool_; }

 private:
  std::unique_ptr<ThreadPool> own_pool_;
  ThreadPool* pool_;
  CpuStream stream_;
  std::atomic<uint64_t> next_mark_{1};
};

}  // namespace

std::shared_ptr<Device> make_cpu_device(int threads) { return std::make_shared<CpuDevice>(threads); }

}  // namespace mycel
