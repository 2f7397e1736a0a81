// The CUDA kernels' own view of the kernel table's arguments. The .cu files are C++17 (nvcc
// 11.4 on JetPack 5 must build them) and cannot include ops.h / codec.h, which use std::span;
// cuda_table.cpp (C++20) translates MergeInput / PayloadHeader into these plain structs, with
// static_asserts that keep the enum values in step.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/status.h"
#include "kernels/device.h"

namespace mycel::cuda {

// Values of CodecId and DType.
enum : int {
  kCodecFp32 = 0, kCodecFp16 = 1, kCodecBf16 = 2, kCodecInt8 = 3, kCodecInt4 = 4,
  kCodecTopK = 5, kCodecRandK = 6,
};
enum : int { kDtF32 = 0, kDtF16 = 1, kDtBf16 = 2 };
constexpr int kMaxInputs = 8;  // kMaxMergeInputs

struct Input {
  const void* data;
  int dtype;
  float weight;
};

struct Header {
  int codec;
  uint32_t block;  // int8 / int4
  uint64_t n, k, seed;
};

Status weighted_sum(Device&, float* out, const Input* in, int k, size_t n, Stream*);
Status mix(Device&, float* x, const float* y, float a, size_t n, Stream*);
Status l2_norm(Device&, const float* x, size_t n, double* out, Stream*);
Status l2_distance(Device&, const float* x, const float* y, size_t n, double* out, Stream*);
Status count_nonfinite(Device&, const float* x, size_t n, uint64_t* out, Stream*);
// NaN/Inf entries of x and of x + residual (residual may be null: v = x).
Status count_nonfinite_ef(Device&, const float* x, const float* residual, size_t n,
                          uint64_t* in_x, uint64_t* in_v, Stream*);

Status encode_body(Device&, const Header& h, const float* x, float* residual, uint8_t* body,
                   Stream*);
// Top-k encode after the finiteness pre-pass (codec_topk.cu).
Status encode_topk(Device&, const Header& h, const float* x, float* residual, uint8_t* body,
                   Stream*);
Status validate_body(Device&, const Header& h, const uint8_t* body, Stream*);
Status decode_body(Device&, const Header& h, const uint8_t* body, float* out, Stream*);
Status decode_merge_body(Device&, const Header& h, const uint8_t* body, float* x, float a,
                         Stream*);

}  // namespace mycel::cuda
