// The table of kernel entry points each backend fills (UCX's ops-table habit). ops.cpp and
// codec.cpp check arguments, then call through the table of the device's kind. Functions here
// may assume valid, non-null arguments of consistent sizes.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/codec.h"
#include "kernels/ops.h"

namespace mycel {

struct KernelTable {
  Status (*weighted_sum)(Device&, float* out, const MergeInput* in, int k, size_t n, Stream*);
  Status (*mix)(Device&, float* x, const float* y, float a, size_t n, Stream*);
  Status (*l2_norm)(Device&, const float* x, size_t n, double* out, Stream*);
  Status (*l2_distance)(Device&, const float* x, const float* y, size_t n, double* out, Stream*);
  Status (*count_nonfinite)(Device&, const float* x, size_t n, uint64_t* out, Stream*);

  // h is complete (raw body size known); cap >= raw size checked by the caller.
  Status (*encode_body)(Device&, const PayloadHeader& h, const float* x, float* residual,
                        uint8_t* body, Stream*);
  // len == raw size checked by the caller.
  Status (*validate_body)(Device&, const PayloadHeader& h, const uint8_t* body, Stream*);
  Status (*decode_body)(Device&, const PayloadHeader& h, const uint8_t* body, float* out, Stream*);
  Status (*decode_merge_body)(Device&, const PayloadHeader& h, const uint8_t* body, float* x,
                              float a, Stream*);
};

const KernelTable& cpu_kernels();
// nullptr in a build without CUDA.
const KernelTable* cuda_kernels();

}  // namespace mycel
