// Boundary checks for the merge and reduction kernels, then dispatch to the device's backend.
#include "kernels/ops.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/backend.h"

namespace mycel {
namespace {

Result<const KernelTable*> table_for(Device& dev) {
  if (dev.kind() == DeviceKind::kCpu) return &cpu_kernels();
  const KernelTable* t = cuda_kernels();
  if (!t) return Error(Code::kUnavailable, "no cuda kernels in this build");
  return t;
}

// True when [a, a + an) and [b, b + bn) share a byte.
bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return an > 0 && bn > 0 && pa < pb + bn && pb < pa + an;
}

Status need(const void* p, size_t n, const char* what) {
  if (n > 0 && !p) return Error(Code::kInvalidArgument, std::string(what) + " is null");
  return Ok();
}

Status need_size(size_t n, size_t elem) {
  if (n > SIZE_MAX / 8 / elem)
    return Error(Code::kOutOfRange, "vector of " + std::to_string(n) + " elements is too large");
  return Ok();
}

}  // namespace

size_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

Status weighted_sum(Device& dev, float* out, std::span<const MergeInput> inputs, size_t n,
                    Stream* s) {
  const int k = static_cast<int>(inputs.size());
  if (inputs.empty() || inputs.size() > static_cast<size_t>(kMaxMergeInputs))
    return Error(Code::kInvalidArgument,
                 "weighted_sum takes 1 to 8 inputs, got " + std::to_string(inputs.size()));
  MYCEL_CHECK(need_size(n, 4));
  MYCEL_CHECK(need(out, n, "weighted_sum output"));
  for (int j = 0; j < k; ++j) {
    const MergeInput& in = inputs[j];
    if (in.dtype != DType::kF32 && in.dtype != DType::kF16 && in.dtype != DType::kBF16)
      return Error(Code::kInvalidArgument, "weighted_sum input " + std::to_string(j) +
                                               " has an unknown dtype");
    MYCEL_CHECK(need(in.data, n, "weighted_sum input"));
    if (!std::isfinite(in.weight))
      return Error(Code::kInvalidArgument,
                   "weighted_sum weight " + std::to_string(j) + " is not finite");
    // out may be exactly an fp32 input (in-place), but not a shifted view of one.
    const bool same = in.data == out && in.dtype == DType::kF32;
    if (!same && overlaps(out, n * 4, in.data, n * dtype_size(in.dtype)))
      return Error(Code::kInvalidArgument,
                   "weighted_sum output partly overlaps input " + std::to_string(j));
  }
  if (n == 0) return Ok();
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  return t->weighted_sum(dev, out, inputs.data(), k, n, s);
}

Status mix(Device& dev, float* x, const float* y, float a, size_t n, Stream* s) {
  MYCEL_CHECK(need_size(n, 4));
  MYCEL_CHECK(need(x, n, "mix x"));
  MYCEL_CHECK(need(y, n, "mix y"));
  if (!std::isfinite(a)) return Error(Code::kInvalidArgument, "mix weight is not finite");
  if (x != y && overlaps(x, n * 4, y, n * 4))
    return Error(Code::kInvalidArgument, "mix x partly overlaps y");
  if (n == 0) return Ok();
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  return t->mix(dev, x, y, a, n, s);
}

float age_weight(uint64_t age, uint64_t age_recv) {
  if (age == 0 && age_recv == 0) return 0.5f;
  // In double: the sum of two uint64 ages cannot overflow there.
  return static_cast<float>(static_cast<double>(age_recv) /
                            (static_cast<double>(age) + static_cast<double>(age_recv)));
}

Status age_merge(Device& dev, float* x, uint64_t* age, const float* y, uint64_t age_y, size_t n,
                 Stream* s) {
  if (!age) return Error(Code::kInvalidArgument, "age_merge age is null");
  MYCEL_CHECK(mix(dev, x, y, age_weight(*age, age_y), n, s));
  *age = std::max(*age, age_y);
  return Ok();
}

Result<double> l2_norm(Device& dev, const float* x, size_t n, Stream* s) {
  MYCEL_CHECK(need_size(n, 4));
  MYCEL_CHECK(need(x, n, "l2_norm x"));
  if (n == 0) return 0.0;
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  double out = 0;
  MYCEL_CHECK(t->l2_norm(dev, x, n, &out, s));
  return out;
}

Result<double> l2_distance(Device& dev, const float* x, const float* y, size_t n, Stream* s) {
  MYCEL_CHECK(need_size(n, 4));
  MYCEL_CHECK(need(x, n, "l2_distance x"));
  MYCEL_CHECK(need(y, n, "l2_distance y"));
  if (n == 0) return 0.0;
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  double out = 0;
  MYCEL_CHECK(t->l2_distance(dev, x, y, n, &out, s));
  return out;
}

Result<uint64_t> count_nonfinite(Device& dev, const float* x, size_t n, Stream* s) {
  MYCEL_CHECK(need_size(n, 4));
  MYCEL_CHECK(need(x, n, "count_nonfinite x"));
  if (n == 0) return uint64_t{0};
  MYCEL_ASSIGN_OR_RETURN(const KernelTable* t, table_for(dev));
  uint64_t out = 0;
  MYCEL_CHECK(t->count_nonfinite(dev, x, n, &out, s));
  return out;
}

}  // namespace mycel
