// Device: where buffers live and kernels run. The CPU device is always built and is the
// reference; the CUDA device is its twin, present when the toolkit was found at build time and
// a GPU at run time (ggml-backend's "best available, with an override").
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "common/status.h"

namespace mycel {

class ThreadPool;

enum class DeviceKind : uint8_t { kCpu = 0, kCuda = 1 };
std::string_view device_kind_name(DeviceKind k);

enum class CopyKind : uint8_t { kHostToDevice, kDeviceToHost, kDeviceToDevice, kHostToHost };

// An ordered queue of work on a device. On the CPU, work runs at once on the calling thread
// (using the pool inside), so a CPU stream is always idle when a call returns.
class Stream {
 public:
  virtual ~Stream() = default;
  virtual void* native() = 0;  // cudaStream_t on CUDA, nullptr on the CPU
};

class Device {
 public:
  virtual ~Device() = default;

  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;       // "cpu (2 threads)", "cuda:0 NVIDIA H100 ..."
  virtual int ordinal() const { return 0; }
  virtual int threads() const { return 1; }   // CPU: pool size; CUDA: SM count

  // Device memory (host memory on the CPU). free(nullptr) is a no-op.
  virtual Result<void*> alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  // Page-locked host memory for staging (plain host memory on the CPU device).
  virtual Result<void*> alloc_host(size_t bytes) = 0;
  virtual void free_host(void* p) = 0;

  // The default stream (never null). create_stream gives an independent one.
  virtual Stream* stream() = 0;
  virtual Result<std::unique_ptr<Stream>> create_stream() = 0;

  virtual Status copy(void* dst, const void* src, size_t bytes, CopyKind kind,
                      Stream* s = nullptr) = 0;       // asynchronous on CUDA
  virtual Status memset(void* dst, int value, size_t bytes, Stream* s = nullptr) = 0;
  virtual Status sync(Stream* s = nullptr) = 0;       // wait for the stream's work

  // Completion marks, for callers that must not wait (the transport's staging copies):
  // record() marks the current end of stream s; query() says, without waiting, whether the
  // work before the mark has finished. A mark found finished (or failed: an error) is spent.
  // On the CPU, work is done when its call returns, so every mark is finished.
  virtual Result<uint64_t> record(Stream* s = nullptr) = 0;
  virtual Result<bool> query(uint64_t mark) = 0;

  // CPU device: its pool. CUDA device: nullptr.
  virtual ThreadPool* pool() { return nullptr; }
};

// "auto" | "cpu" | "cuda" | "cuda:N". auto takes CUDA when a GPU is present; a CUDA build on a
// machine without a GPU falls back to the CPU and logs one line saying so. "cuda" with no GPU
// (or no CUDA in the build) is an error.
Result<std::shared_ptr<Device>> make_device(std::string_view spec, int cpu_threads = 0);

// Number of CUDA devices visible (0 in a CPU-only build or without a GPU), and why none.
int cuda_device_count(std::string* why_none = nullptr);
bool cuda_compiled();

// A typed RAII buffer on a device.
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  static Result<Buffer> make(Device& dev, size_t count) {
    Buffer b;
    b.dev_ = &dev;
    b.count_ = count;
    if (count == 0) return b;
    auto p = dev.alloc(count * sizeof(T));
    if (!p) return p.status();
    b.ptr_ = static_cast<T*>(*p);
    return b;
  }
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      dev_ = o.dev_; ptr_ = o.ptr_; count_ = o.count_;
      o.ptr_ = nullptr; o.count_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }
  void reset() {
    if (ptr_ && dev_) dev_->free(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return count_; }
  size_t bytes() const { return count_ * sizeof(T); }
  Device* device() const { return dev_; }

  Status upload(const T* host, size_t count, size_t offset = 0) {
    if (offset + count > count_) return Error(Code::kOutOfRange, "buffer upload past the end");
    return dev_->copy(ptr_ + offset, host, count * sizeof(T), CopyKind::kHostToDevice);
  }
  Status download(T* host, size_t count, size_t offset = 0) const {
    if (offset + count > count_) return Error(Code::kOutOfRange, "buffer download past the end");
    MYCEL_CHECK(dev_->copy(host, ptr_ + offset, count * sizeof(T), CopyKind::kDeviceToHost));
    return dev_->sync();
  }

 private:
  Device* dev_ = nullptr;
  T* ptr_ = nullptr;
  size_t count_ = 0;
};

}  // namespace mycel
