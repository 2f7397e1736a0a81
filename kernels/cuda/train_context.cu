// cuda_train_kernels(): the CUDA twin of cpu_train_kernels(), and the per-(device, stream)
// contexts its cuBLAS calls and reductions share.
#include <dlfcn.h>

#include <cstdlib>
#include <type_traits>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "common/log.h"
#include "kernels/cuda/train_common.cuh"

namespace mycel {
namespace cuda::train {

const char* cublas_status_name(cublasStatus_t st) {
  // Spelled out rather than cublasGetStatusName, which older toolkits (JetPack 5) lack.
  switch (st) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
  }
  return "unknown cublas status";
}

namespace {

// MYCEL_CUDA_TF32=1 lets cuBLAS round GEMM inputs to TF32 on tensor cores (Ampere and newer):
// faster large GEMMs, but only ~1e-3 relative agreement with the CPU. Off by default so that
// the CUDA backend matches the CPU reference within fp32 rounding.
bool tf32_allowed() {
  static const bool on = [] {
    const char* e = std::getenv("MYCEL_CUDA_TF32");
    return e && (std::strcmp(e, "1") == 0 || std::strcmp(e, "on") == 0 ||
                 std::strcmp(e, "true") == 0);
  }();
  return on;
}

// cuBLAS's recommended workspace: 32 MiB on Hopper, 4 MiB before it.
size_t blas_workspace_bytes(int ordinal) {
  int major = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal) != cudaSuccess) {
    cudaGetLastError();
    major = 0;
  }
  return major >= 9 ? (size_t(32) << 20) : (size_t(4) << 20);
}

Status init_context(StreamContext* ctx) {
  MYCEL_ASSIGN_OR_RETURN(ctx->api, cublas());
  const Cublas& api = *ctx->api;
  cublasHandle_t h = nullptr;
  MYCEL_CUBLAS_CHECK(api.create(&h));
  ctx->blas = h;  // only a handle that was made is kept (and destroyed on a later failure)
  MYCEL_CUBLAS_CHECK(api.set_stream(ctx->blas, ctx->stream));
  const size_t ws = blas_workspace_bytes(ctx->ordinal);
  cudaError_t e = cudaMalloc(&ctx->blas_workspace, ws);
  if (e != cudaSuccess) {
    cudaGetLastError();
    ctx->blas_workspace = nullptr;
    return Error(Code::kNoResource, "cublas workspace of " + std::to_string(ws) +
                                        " bytes: " + cudaGetErrorString(e));
  }
  ctx->blas_workspace_bytes = ws;
  // After cublasSetStream, which resets the workspace to the library's default pool.
  MYCEL_CUBLAS_CHECK(api.set_workspace(ctx->blas, ctx->blas_workspace, ws));
  // CUBLAS_DEFAULT_MATH keeps sgemm in true fp32 (no TF32) unless asked otherwise.
  MYCEL_CUBLAS_CHECK(api.set_math_mode(
      ctx->blas, tf32_allowed() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  MYCEL_CUBLAS_CHECK(api.set_pointer_mode(ctx->blas, CUBLAS_POINTER_MODE_HOST));
  MYCEL_LOG_DEBUG("kernels", "cuda:{} training context for stream {} (tf32 {})", ctx->ordinal,
                  static_cast<const void*>(ctx->stream), tf32_allowed() ? "on" : "off");
  return Ok();
}

}  // namespace

#define MYCEL_STR2(x) #x
#define MYCEL_STR(x) MYCEL_STR2(x)  // the macro-expanded name: cublasCreate -> "cublasCreate_v2"

Result<const Cublas*> cublas() {
  static const Result<const Cublas*> loaded = []() -> Result<const Cublas*> {
    const std::string versioned = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* lib = dlopen(versioned.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* why = dlerror();
      return Error(Code::kUnavailable, "cannot load cuBLAS (" + versioned + "): " + (why ? why : "not found"));
    }
    static Cublas api;
    bool ok = true;
    std::string missing;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      if (!fn) {
        ok = false;
        missing += std::string(missing.empty() ? "" : ", ") + name;
      }
    };
    sym(api.create, MYCEL_STR(cublasCreate));
    sym(api.destroy, MYCEL_STR(cublasDestroy));
    sym(api.set_stream, MYCEL_STR(cublasSetStream));
    sym(api.set_workspace, MYCEL_STR(cublasSetWorkspace));
    sym(api.set_math_mode, MYCEL_STR(cublasSetMathMode));
    sym(api.set_pointer_mode, MYCEL_STR(cublasSetPointerMode));
    sym(api.sgemm, MYCEL_STR(cublasSgemm));
    if (!ok) return Error(Code::kUnavailable, versioned + " lacks " + missing);
    MYCEL_LOG_DEBUG("kernels", "loaded {}", versioned);
    return &api;
  }();
  return loaded;
}

Result<StreamContext*> context_for(Device& dev, Stream* s) {
  MYCEL_CHECK(use_device(dev));
  const cudaStream_t st = MYCEL_CUDA_STREAM(dev, s);
  // Never destroyed: destroying cuBLAS handles or freeing CUDA memory from a static destructor
  // races the driver's own shutdown (PyTorch leaks its handles for the same reason).
  static std::mutex* mu = new std::mutex();
  static auto* all = new std::map<std::pair<int, cudaStream_t>, std::unique_ptr<StreamContext>>();
  std::lock_guard<std::mutex> lock(*mu);
  auto key = std::make_pair(dev.ordinal(), st);
  auto it = all->find(key);
  if (it != all->end()) return it->second.get();
  auto ctx = std::make_unique<StreamContext>();
  ctx->ordinal = dev.ordinal();
  ctx->stream = st;
  Status init = init_context(ctx.get());
  if (!init.is_ok()) {
    // Leave nothing half-made behind: the next call tries again.
    if (ctx->blas) ctx->api->destroy(ctx->blas);
    if (ctx->blas_workspace) cudaFree(ctx->blas_workspace);
    MYCEL_LOG_ERROR("kernels", "cuda:{} training context: {}", dev.ordinal(), init.message());
    return init;
  }
  StreamContext* raw = ctx.get();
  all->emplace(key, std::move(ctx));
  return raw;
}

Status reserve_scratch(StreamContext* ctx, size_t bytes) {
  if (bytes <= ctx->scratch_bytes) return Ok();
  // Headroom, so a slowly rising size rarely regrows; 256-byte multiples keep every sub-array
  // a caller carves out of it aligned.
  const size_t want = ((bytes + bytes / 2) + 255) / 256 * 256;
  if (ctx->scratch) {
    // Kernels queued earlier on this stream may still read the old buffer.
    MYCEL_CUDA_CHECK(cudaStreamSynchronize(ctx->stream));
    MYCEL_CUDA_CHECK(cudaFree(ctx->scratch));
    ctx->scratch = nullptr;
    ctx->scratch_bytes = 0;
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, want);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return Error(Code::kNoResource, "training scratch of " + std::to_string(want) +
                                        " bytes: " + cudaGetErrorString(e));
  }
  ctx->scratch = p;
  ctx->scratch_bytes = want;
  return Ok();
}

}  // namespace cuda::train

const TrainKernelTable* cuda_train_kernels() {
  namespace t = cuda::train;
  // Field by field, so a reordered table cannot silently swap two entries.
  static const TrainKernelTable table = [] {
    TrainKernelTable k{};
    k.gemm = t::gemm;
    k.bias_act = t::bias_act;
    k.relu_backward = t::relu_backward;
    k.bias_grad = t::bias_grad;
    k.softmax_xent = t::softmax_xent;
    k.sgd_update = t::sgd_update;
    k.maxpool_forward = t::maxpool_forward;
    k.maxpool_backward = t::maxpool_backward;
    k.im2col = t::im2col;
    k.col2im = t::col2im;
    k.gather_rows = t::gather_rows;
    k.nchw_to_nhwc = t::nchw_to_nhwc;
    return k;
  }();
  return &table;
}

}  // namespace mycel
