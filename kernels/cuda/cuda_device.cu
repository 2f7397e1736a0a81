#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/device_impl.h"

namespace mycel {
namespace {

class CudaStream final : public Stream {
 public:
  explicit CudaStream(cudaStream_t s, bool owned) : s_(s), owned_(owned) {}
  ~CudaStream() override {
    if (owned_ && s_) cudaStreamDestroy(s_);
  }
  void* native() override { return s_; }

 private:
  cudaStream_t s_;
  bool owned_;
};

cudaMemcpyKind to_cuda(CopyKind k) {
  switch (k) {
    case CopyKind::kHostToDevice: return cudaMemcpyHostToDevice;
    case CopyKind::kDeviceToHost: return cudaMemcpyDeviceToHost;
    case CopyKind::kDeviceToDevice: return cudaMemcpyDeviceToDevice;
    case CopyKind::kHostToHost: return cudaMemcpyHostToHost;
  }
  return cudaMemcpyDefault;
}

class CudaDevice final : public Device {
 public:
  CudaDevice(int ordinal, cudaStream_t s, const cudaDeviceProp& prop)
      : ordinal_(ordinal), stream_(s, true), prop_(prop) {}

  DeviceKind kind() const override { return DeviceKind::kCuda; }
  std::string name() const override {
    return "cuda:" + std::to_string(ordinal_) + " " + prop_.name + " (sm_" +
           std::to_string(prop_.major) + std::to_string(prop_.minor) + ")";
  }
  int ordinal() const override { return ordinal_; }
  int threads() const override { return prop_.multiProcessorCount; }

  Result<void*> alloc(size_t bytes) override {
    if (bytes == 0) return static_cast<void*>(nullptr);
    cudaSetDevice(ordinal_);
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(Code::kNoResource, "cudaMalloc of " + std::to_string(bytes) +
                                          " bytes failed: " + cudaGetErrorString(e));
    }
    return p;
  }
  void free(void* p) override {
    if (p) cudaFree(p);
  }
  Result<void*> alloc_host(size_t bytes) override {
    if (bytes == 0) return static_cast<void*>(nullptr);
    void* p = nullptr;
    cudaError_t e = cudaMallocHost(&p, bytes);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(Code::kNoResource, "cudaMallocHost failed: " + std::string(cudaGetErrorString(e)));
    }
    return p;
  }
  void free_host(void* p) override {
    if (p) cudaFreeHost(p);
  }

  Stream* stream() override { return &stream_; }
  Result<std::unique_ptr<Stream>> create_stream() override {
    cudaSetDevice(ordinal_);
    cudaStream_t s;
    MYCEL_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return std::unique_ptr<Stream>(std::make_unique<CudaStream>(s, true));
  }

  Status copy(void* dst, const void* src, size_t bytes, CopyKind kind, Stream* s) override {
    if (bytes == 0) return Ok();
    MYCEL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, to_cuda(kind), MYCEL_CUDA_STREAM(*this, s)));
    return Ok();
  }
  Status memset(void* dst, int value, size_t bytes, Stream* s) override {
    if (bytes == 0) return Ok();
    MYCEL_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, MYCEL_CUDA_STREAM(*this, s)));
    return Ok();
  }
  Status sync(Stream* s) override {
    MYCEL_CUDA_CHECK(cudaStreamSynchronize(MYCEL_CUDA_STREAM(*this, s)));
    return Ok();
  }

  Result<uint64_t> record(Stream* s) override {
    std::lock_guard lock(mu_);
    cudaEvent_t ev = nullptr;
    if (!free_events_.empty()) {
      ev = free_events_.back();
      free_events_.pop_back();
    } else {
      cudaSetDevice(ordinal_);
      MYCEL_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    }
    cudaError_t e = cudaEventRecord(ev, MYCEL_CUDA_STREAM(*this, s));
    if (e != cudaSuccess) {
      cudaGetLastError();
      free_events_.push_back(ev);
      return Error(Code::kInternal, std::string("cudaEventRecord: ") + cudaGetErrorString(e));
    }
    uint64_t mark = next_mark_++;
    marks_[mark] = ev;
    return mark;
  }
  Result<bool> query(uint64_t mark) override {
    std::lock_guard lock(mu_);
    auto it = marks_.find(mark);
    if (it == marks_.end()) return Error(Code::kNotFound, "unknown completion mark");
    cudaError_t e = cudaEventQuery(it->second);
    if (e == cudaErrorNotReady) return false;
    free_events_.push_back(it->second);
    marks_.erase(it);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(Code::kInternal, std::string("cudaEventQuery: ") + cudaGetErrorString(e));
    }
    return true;
  }
  ~CudaDevice() override {
    for (auto& [m, ev] : marks_) cudaEventDestroy(ev);
    for (cudaEvent_t ev : free_events_) cudaEventDestroy(ev);
  }

 private:
  std::mutex mu_;  // the marks: recorded by one thread, queried by another
  uint64_t next_mark_ = 1;
  std::unordered_map<uint64_t, cudaEvent_t> marks_;
  std::vector<cudaEvent_t> free_events_;
  int ordinal_;
  CudaStream stream_;
  cudaDeviceProp prop_;
};

}  // namespace

Result<std::shared_ptr<Device>> make_cuda_device(int ordinal) {
  MYCEL_CUDA_CHECK(cudaSetDevice(ordinal));
  cudaDeviceProp prop;
  MYCEL_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal));
  cudaStream_t s;
  MYCEL_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  auto dev = std::make_shared<CudaDevice>(ordinal, s, prop);
  MYCEL_LOG_INFO("kernels", "using {}", dev->name());
  return std::shared_ptr<Device>(dev);
}

int cuda_device_count_impl(std::string* why_none) {
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (why_none) *why_none = std::string("no cuda device: ") + cudaGetErrorString(e);
    return 0;
  }
  if (n == 0 && why_none) *why_none = "no cuda device present";
  return n;
}

bool cuda_compiled_impl() { return true; }

}  // namespace mycel
