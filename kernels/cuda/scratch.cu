// The per-device scratch cache that the reductions, validation and the top-k select share.
#include <array>
#include <string>

#include "kernels/cuda/cuda_common.cuh"

namespace mycel::cuda {
namespace {
constexpr int kMaxDevices = 64;
}  // namespace

Result<Scratch*> Scratch::acquire(const Device& dev, size_t device_bytes, size_t host_bytes,
                                  std::unique_lock<std::mutex>* lock) {
  // Never destroyed: freeing CUDA memory from a static destructor races the driver's own
  // shutdown, and the process is ending anyway.
  static std::array<Scratch, kMaxDevices>* all = new std::array<Scratch, kMaxDevices>();
  const int ord = dev.ordinal();
  if (ord < 0 || ord >= kMaxDevices)
    return Error(Code::kInvalidArgument,
                 "cuda device ordinal " + std::to_string(ord) + " beyond the scratch table");
  Scratch* s = &(*all)[static_cast<size_t>(ord)];
  *lock = std::unique_lock<std::mutex>(s->mu_);
  MYCEL_CUDA_CHECK(cudaSetDevice(ord));
  if (device_bytes > s->d_bytes_) {
    // Grow by half again, so a slowly rising size does not reallocate on every call.
    const size_t want = device_bytes + device_bytes / 2;
    if (s->d_) {
      MYCEL_CUDA_CHECK(cudaFree(s->d_));  // the previous owner synchronised before unlocking
      s->d_ = nullptr;
      s->d_bytes_ = 0;
    }
    void* p = nullptr;
    cudaError_t e = cudaMalloc(&p, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(Code::kNoResource,
                   "cuda scratch of " + std::to_string(want) + " bytes: " + cudaGetErrorString(e));
    }
    s->d_ = p;
    s->d_bytes_ = want;
  }
  if (host_bytes > s->h_bytes_) {
    const size_t want = host_bytes + host_bytes / 2;
    if (s->h_) {
      MYCEL_CUDA_CHECK(cudaFreeHost(s->h_));
      s->h_ = nullptr;
      s->h_bytes_ = 0;
    }
    void* p = nullptr;
    cudaError_t e = cudaMallocHost(&p, want);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return Error(Code::kNoResource, "pinned cuda scratch of " + std::to_string(want) +
                                          " bytes: " + cudaGetErrorString(e));
    }
    s->h_ = p;
    s->h_bytes_ = want;
  }
  return s;
}

}  // namespace mycel::cuda
