// The arithmetic every codec shares between the CPU reference and the CUDA twin, written once
// as host/device inline functions so both produce bit-identical payloads.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "common/half.h"

namespace mycel::codec_math {

// ---- blockwise quantisation (int8: qmax = 127, int4: qmax = 7) ----
// scale = absmax / qmax (0 for an all-zero block); q = round_half_even(x / scale), clamped to
// [-qmax, qmax]; x' = q * scale. |x - x'| <= scale / 2 = absmax / (2 * qmax).
MYCEL_HD float quant_scale(float absmax, int qmax) { return absmax / static_cast<float>(qmax); }

MYCEL_HD int quantize(float x, float inv_scale, int qmax) {
  float r = rintf(x * inv_scale);  // round half to even on both host and device
  // Comparisons rather than fminf/fmaxf: same result for the finite values encoders see, and
  // on x86 the host compiler turns them into vector min/max instead of a libm call per element.
  const float q = static_cast<float>(qmax);
  r = r < -q ? -q : r;
  r = r > q ? q : r;
  return static_cast<int>(r);
}
// inv_scale is 0 when scale is 0 (all-zero block) so every q is 0. It is 0 too when 1/scale
// overflows (a block of subnormals, absmax < qmax * 2^-128): x * Inf would give Inf or NaN
// (0 * Inf) and q = +-qmax; with 0 the block sends zeros and the error stays below absmax.
MYCEL_HD float inv_scale_of(float scale) {
  const float inv = 1.f / (scale > 0.f ? scale : 1.f);
  return scale > 0.f && inv <= 3.40282347e+38f ? inv : 0.f;
}

// int4 packing: element 2i in the low nibble, 2i+1 in the high nibble, two's complement.
MYCEL_HD uint8_t pack4(int lo, int hi) {
  return static_cast<uint8_t>((lo & 0xf) | ((hi & 0xf) << 4));
}
MYCEL_HD int unpack4_lo(uint8_t b) { return static_cast<int>(static_cast<int8_t>(b << 4) >> 4); }
MYCEL_HD int unpack4_hi(uint8_t b) { return static_cast<int>(static_cast<int8_t>(b) >> 4); }

// ---- a body split into its arrays (the layout comment of codec.h), on the host ----
// One definition for the CPU codecs and the CUDA launchers, so the two cannot drift apart.
struct BodyLayout {
  size_t n = 0, k = 0, block = 0, nblocks = 0;
  float* scales = nullptr;   // int8 / int4: ceil(n / block) scales first
  uint8_t* data = nullptr;   // dense values, int8 / int4 codes, topk / randk values
  uint32_t* idx = nullptr;   // topk: k indices first
};

inline BodyLayout body_layout(size_t n, size_t k, size_t block, bool quantised, bool topk,
                              const uint8_t* body) {
  auto* p = const_cast<uint8_t*>(body);
  BodyLayout l;
  l.n = n;
  l.k = k;
  l.block = block;
  if (quantised) {
    l.nblocks = block ? (n + block - 1) / block : 0;
    l.scales = reinterpret_cast<float*>(p);
    l.data = p + 4 * l.nblocks;
  } else if (topk) {
    l.idx = reinterpret_cast<uint32_t*>(p);
    l.data = p + 4 * k;
  } else {
    l.data = p;
  }
  return l;
}

// ---- random-k: the first k elements of a seeded pseudo-random permutation of [0, n) ----
// A 4-round Feistel network over the smallest even power of two >= n, with cycle walking, so
// index j < k maps to a distinct position in [0, n), computed independently for every j (no
// state, parallel on the GPU). Sender and receiver derive the same indices from header.seed.
MYCEL_HD uint32_t mix32(uint32_t x) {
  x ^= x >> 16; x *= 0x7feb352du;
  x ^= x >> 15; x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

struct RandKPerm {
  uint32_t half_bits;  // each Feistel half has this many bits
  uint32_t mask;       // (1 << half_bits) - 1
  uint32_t keys[4];
  uint64_t n;
};

inline RandKPerm make_randk_perm(uint64_t n, uint64_t seed) {
  RandKPerm p{};
  uint32_t bits = 2;
  while ((uint64_t{1} << bits) < n) bits += 2;  // total bits even, >= 2
  p.half_bits = bits / 2;
  p.mask = (1u << p.half_bits) - 1u;
  uint64_t s = seed;
  for (int r = 0; r < 4; ++r) {
    s += 0x9e3779b97f4a7c15ull;  // splitmix64
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    p.keys[r] = static_cast<uint32_t>(z ^ (z >> 31));
  }
  p.n = n;
  return p;
}

MYCEL_HD uint64_t feistel(const RandKPerm& p, uint64_t x) {
  uint32_t l = static_cast<uint32_t>(x >> p.half_bits) & p.mask;
  uint32_t r = static_cast<uint32_t>(x) & p.mask;
  for (int i = 0; i < 4; ++i) {
    uint32_t t = l ^ (mix32(r ^ p.keys[i]) & p.mask);
    l = r;
    r = t;
  }
  return (static_cast<uint64_t>(l) << p.half_bits) | r;
}

// The j-th index (j < n) of the permutation: a bijection on [0, n), by cycle walking (the
// domain is at most 4n, so the expected number of steps is below 4).
MYCEL_HD uint64_t randk_index(const RandKPerm& p, uint64_t j) {
  uint64_t x = feistel(p, j);
  while (x >= p.n) x = feistel(p, x);
  return x;
}

}  // namespace mycel::codec_math
