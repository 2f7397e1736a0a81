// cuda_kernels(): the CUDA twin of cpu_kernels(). This file is C++20 (it sees ops.h and
// codec.h); the kernels behind it are C++17 .cu files speaking cuda_api.h.
#include "kernels/backend.h"
#include "kernels/cuda/cuda_api.h"

namespace mycel {
namespace {

static_assert(static_cast<int>(CodecId::kFp32) == cuda::kCodecFp32);
static_assert(static_cast<int>(CodecId::kFp16) == cuda::kCodecFp16);
static_assert(static_cast<int>(CodecId::kBf16) == cuda::kCodecBf16);
static_assert(static_cast<int>(CodecId::kInt8) == cuda::kCodecInt8);
static_assert(static_cast<int>(CodecId::kInt4) == cuda::kCodecInt4);
static_assert(static_cast<int>(CodecId::kTopK) == cuda::kCodecTopK);
static_assert(static_cast<int>(CodecId::kRandK) == cuda::kCodecRandK);
static_assert(kCodecCount == 7);
static_assert(static_cast<int>(DType::kF32) == cuda::kDtF32);
static_assert(static_cast<int>(DType::kF16) == cuda::kDtF16);
static_assert(static_cast<int>(DType::kBF16) == cuda::kDtBf16);
static_assert(kMaxMergeInputs == cuda::kMaxInputs);

cuda::Header to_cuda(const PayloadHeader& h) {
  return cuda::Header{static_cast<int>(h.codec), h.block, h.n, h.k, h.seed};
}

Status weighted_sum(Device& dev, float* out, const MergeInput* in, int k, size_t n, Stream* s) {
  if (k < 1 || k > kMaxMergeInputs)
    return Error(Code::kInvalidArgument, "weighted_sum: k must be 1.." +
                                             std::to_string(kMaxMergeInputs));
  cuda::Input ci[kMaxMergeInputs];
  for (int j = 0; j < k; ++j) ci[j] = cuda::Input{in[j].data, static_cast<int>(in[j].dtype),
                                                  in[j].weight};
  return cuda::weighted_sum(dev, out, ci, k, n, s);
}

Status encode_body(Device& dev, const PayloadHeader& h, const float* x, float* residual,
                   uint8_t* body, Stream* s) {
  return cuda::encode_body(dev, to_cuda(h), x, residual, body, s);
}
Status validate_body(Device& dev, const PayloadHeader& h, const uint8_t* body, Stream* s) {
  return cuda::validate_body(dev, to_cuda(h), body, s);
}
Status decode_body(Device& dev, const PayloadHeader& h, const uint8_t* body, float* out,
                   Stream* s) {
  return cuda::decode_body(dev, to_cuda(h), body, out, s);
}
Status decode_merge_body(Device& dev, const PayloadHeader& h, const uint8_t* body, float* x,
                         float a, Stream* s) {
  return cuda::decode_merge_body(dev, to_cuda(h), body, x, a, s);
}

}  // namespace

const KernelTable* cuda_kernels() {
  static const KernelTable table = {
      weighted_sum,      cuda::mix,     cuda::l2_norm, cuda::l2_distance, cuda::count_nonfinite,
      encode_body,       validate_body, decode_body,   decode_merge_body,
  };
  return &table;
}

}  // namespace mycel
