// Merge and reduction kernels over flat parameter vectors. Every function takes the device
// whose memory the pointers live in, checks its arguments at the boundary (null pointers,
// sizes, k, weights) and dispatches to the CPU reference or its CUDA twin.
// Pointers are device pointers for a CUDA device and host pointers for the CPU device.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "common/status.h"
#include "kernels/device.h"

namespace mycel {

enum class DType : uint8_t { kF32 = 0, kF16 = 1, kBF16 = 2 };
size_t dtype_size(DType t);

// One input of a weighted sum.
struct MergeInput {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  float weight = 0.f;
};

constexpr int kMaxMergeInputs = 8;

// out[i] = sum_j w_j * x_j[i] for j < k, 1 <= k <= 8, accumulated in fp32. out may alias an
// fp32 input (in-place merge).
Status weighted_sum(Device& dev, float* out, std::span<const MergeInput> inputs, size_t n,
                    Stream* s = nullptr);

// x = (1 - a) * x + a * y, in place.
Status mix(Device& dev, float* x, const float* y, float a, size_t n, Stream* s = nullptr);

// Gossip learning's merge weight (Hegedűs et al.): a = age_recv / (age + age_recv); 0.5 when
// both ages are 0.
float age_weight(uint64_t age, uint64_t age_recv);

// x = (1 - a) * x + a * y with a = age_weight(*age, age_y); then *age = max(*age, age_y).
Status age_merge(Device& dev, float* x, uint64_t* age, const float* y, uint64_t age_y, size_t n,
                 Stream* s = nullptr);

// Reductions (fp64 accumulation); they synchronise the stream to return a host value.
Result<double> l2_norm(Device& dev, const float* x, size_t n, Stream* s = nullptr);
Result<double> l2_distance(Device& dev, const float* x, const float* y, size_t n,
                           Stream* s = nullptr);
// Number of NaN or Inf entries.
Result<uint64_t> count_nonfinite(Device& dev, const float* x, size_t n, Stream* s = nullptr);

}  // namespace mycel
