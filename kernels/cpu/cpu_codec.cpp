// CPU codec kernels: encode (with optional error feedback), validate, decode and the fused
// decode+merge, for every codec of codec.h. The arithmetic shared with the CUDA twin comes from
// codec_math.h, so both produce the same payload bits.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/codec_math.h"
#include "kernels/cpu/cpu_kernels.h"

namespace mycel::cpu {
namespace cm = codec_math;
namespace {

constexpr float kF16Max = 65504.f;
const float kBf16Max = bits_f32(0x7f7f0000u);  // largest finite bfloat16

using Layout = codec_math::BodyLayout;

Layout layout(const PayloadHeader& h, const uint8_t* body) {
  return codec_math::body_layout(h.n, h.k, h.block,
                                 h.codec == CodecId::kInt8 || h.codec == CodecId::kInt4,
                                 h.codec == CodecId::kTopK, body);
}

size_t lcm_align(size_t block) { return block % 2 == 0 ? block : 2 * block; }

// ---- finiteness pre-pass: NaN/Inf anywhere in x (+ residual) fails the encode untouched ----

MYCEL_CLONES uint32_t max_exp_bits(const float* x, const float* r, size_t b, size_t e) {
  uint32_t m = 0;
  if (r) {
    for (size_t i = b; i < e; ++i) m = std::max(m, f32_bits(x[i] + r[i]) & 0x7f800000u);
  } else {
    for (size_t i = b; i < e; ++i) m = std::max(m, f32_bits(x[i]) & 0x7f800000u);
  }
  return m;
}

bool any_nonfinite(Device& dev, const float* x, const float* r, size_t n) {
  std::vector<uint32_t> part(pool_size(dev), 0);
  parallel(dev, n, 16, [&](size_t b, size_t e, int t) {
    part[t] = std::max(part[t], max_exp_bits(x, r, b, e));
  });
  for (uint32_t m : part)
    if (m == 0x7f800000u) return true;
  return false;
}

// ---- dense float codecs ----

// Saturation to [-lim, lim] (v is finite here); comparisons vectorise where fminf would not.
MYCEL_INLINE float clampf(float v, float lim) {
  v = v < -lim ? -lim : v;
  return v > lim ? lim : v;
}


MYCEL_CLONES void enc_f32(const float* x, float* r, float* out, size_t b, size_t e) {
  if (r) {
    for (size_t i = b; i < e; ++i) {
      out[i] = x[i] + r[i];
      r[i] = 0.f;
    }
  } else {
    std::memcpy(out + b, x + b, (e - b) * sizeof(float));
  }
}

MYCEL_CLONES void enc_f16(const float* x, float* r, uint16_t* out, size_t b, size_t e) {
  // Saturate: a finite model never turns into Inf on the wire.
  if (r) {
    for (size_t i = b; i < e; ++i) {
      const float v = x[i] + r[i];
      const uint16_t q = f32_to_f16(clampf(v, kF16Max));
      out[i] = q;
      r[i] = v - f16_to_f32_fast(q);
    }
  } else {
    for (size_t i = b; i < e; ++i) out[i] = f32_to_f16(clampf(x[i], kF16Max));
  }
}

MYCEL_CLONES void enc_bf16(const float* x, float* r, uint16_t* out, size_t b, size_t e) {
  const float lim = kBf16Max;
  if (r) {
    for (size_t i = b; i < e; ++i) {
      const float v = x[i] + r[i];
      const uint16_t q = f32_to_bf16(clampf(v, lim));
      out[i] = q;
      r[i] = v - bf16_to_f32(q);
    }
  } else {
    for (size_t i = b; i < e; ++i) out[i] = f32_to_bf16(clampf(x[i], lim));
  }
}

// ---- blockwise int8 / int4 ----

MYCEL_INLINE float block_absmax(const float* x, const float* r, size_t s, size_t t) {
  // Max over |v| as integer bits: finite floats order like their magnitude bits, and an integer
  // max reduction vectorises where a float one would need -ffast-math.
  uint32_t m = 0;
  if (r) {
    for (size_t i = s; i < t; ++i) m = std::max(m, f32_bits(x[i] + r[i]) & 0x7fffffffu);
  } else {
    for (size_t i = s; i < t; ++i) m = std::max(m, f32_bits(x[i]) & 0x7fffffffu);
  }
  return bits_f32(m);
}

MYCEL_CLONES void enc_int8(const float* x, float* r, const Layout& l, size_t b, size_t e) {
  auto* q = reinterpret_cast<int8_t*>(l.data);
  for (size_t blk = b / l.block; blk * l.block < e; ++blk) {
    const size_t s = blk * l.block, t = std::min(s + l.block, e);
    const float sc = cm::quant_scale(block_absmax(x, r, s, t), 127);
    const float inv = cm::inv_scale_of(sc);
    l.scales[blk] = sc;
    if (r) {
      for (size_t i = s; i < t; ++i) {
        float v = x[i] + r[i];
        int qi = cm::quantize(v, inv, 127);
        q[i] = static_cast<int8_t>(qi);
        r[i] = v - static_cast<float>(qi) * sc;
      }
    } else {
      for (size_t i = s; i < t; ++i) q[i] = static_cast<int8_t>(cm::quantize(x[i], inv, 127));
    }
  }
}

MYCEL_CLONES void enc_int4(const float* x, float* r, const Layout& l, size_t b, size_t e) {
  uint8_t* out = l.data;
  std::vector<int8_t> qt(std::min(l.block, e - b));
  int pending = 0;  // low nibble of a byte whose high nibble starts the next block
  for (size_t blk = b / l.block; blk * l.block < e; ++blk) {
    const size_t s = blk * l.block, t = std::min(s + l.block, e);
    const float sc = cm::quant_scale(block_absmax(x, r, s, t), 7);
    const float inv = cm::inv_scale_of(sc);
    l.scales[blk] = sc;
    for (size_t i = s; i < t; ++i) {
      float v = r ? x[i] + r[i] : x[i];
      int qi = cm::quantize(v, inv, 7);
      qt[i - s] = static_cast<int8_t>(qi);
      if (r) r[i] = v - static_cast<float>(qi) * sc;
    }
    size_t i = s;
    if (i & 1) {
      out[i >> 1] = cm::pack4(pending, qt[0]);
      ++i;
    }
    for (; i + 1 < t; i += 2) out[i >> 1] = cm::pack4(qt[i - s], qt[i + 1 - s]);
    if (i < t) {
      pending = qt[i - s];
      if (t == e) out[i >> 1] = cm::pack4(pending, 0);  // odd n: the last high nibble is 0
    }
  }
}

// ---- decode / decode+merge. mixv is the one mixing formula (decode-then-mix gives the same
// bits as the fused path because both evaluate exactly this). ----

MYCEL_INLINE float mixv(float x, float d, float a, float c) { return c * x + a * d; }

template <bool kMerge>
MYCEL_INLINE void put(float* x, size_t i, float d, float a, float c) {
  if constexpr (kMerge) x[i] = mixv(x[i], d, a, c);
  else x[i] = d;
}

template <bool kMerge>
MYCEL_CLONES void dec_f32(const float* in, float* x, float a, size_t b, size_t e) {
  const float c = 1.f - a;
  if constexpr (kMerge) {
    for (size_t i = b; i < e; ++i) x[i] = mixv(x[i], in[i], a, c);
  } else {
    std::memcpy(x + b, in + b, (e - b) * sizeof(float));
  }
}

template <bool kMerge>
MYCEL_CLONES void dec_f16(const uint16_t* in, float* x, float a, size_t b, size_t e) {
  const float c = 1.f - a;
  for (size_t i = b; i < e; ++i) put<kMerge>(x, i, f16_to_f32_fast(in[i]), a, c);
}

template <bool kMerge>
MYCEL_CLONES void dec_bf16(const uint16_t* in, float* x, float a, size_t b, size_t e) {
  const float c = 1.f - a;
  for (size_t i = b; i < e; ++i) put<kMerge>(x, i, bf16_to_f32(in[i]), a, c);
}

template <bool kMerge>
MYCEL_CLONES void dec_int8(const Layout& l, float* __restrict x, float a, size_t b, size_t e) {
  const float c = 1.f - a;
  const int8_t* __restrict q = reinterpret_cast<const int8_t*>(l.data);
  for (size_t blk = b / l.block; blk * l.block < e; ++blk) {
    const size_t s = blk * l.block, t = std::min(s + l.block, e);
    const float sc = l.scales[blk];
    for (size_t i = s; i < t; ++i) put<kMerge>(x, i, static_cast<float>(q[i]) * sc, a, c);
  }
}

template <bool kMerge>
MYCEL_CLONES void dec_int4(const Layout& l, float* __restrict x, float a, size_t b, size_t e) {
  const float c = 1.f - a;
  const uint8_t* __restrict p = l.data;
  for (size_t blk = b / l.block; blk * l.block < e; ++blk) {
    const size_t s = blk * l.block, t = std::min(s + l.block, e);
    const float sc = l.scales[blk];
    size_t i = s;
    if (i & 1) {
      put<kMerge>(x, i, static_cast<float>(cm::unpack4_hi(p[i >> 1])) * sc, a, c);
      ++i;
    }
    // Pairs through local pointers with a counted loop, which the vectoriser handles (an index
    // i >> 1 in the loop reads to it like a gather).
    float* __restrict xp = x + i;
    const uint8_t* __restrict pp = p + (i >> 1);
    const size_t pairs = (t - i) / 2;
    for (size_t j = 0; j < pairs; ++j) {
      const uint8_t byte = pp[j];
      put<kMerge>(xp, 2 * j, static_cast<float>(cm::unpack4_lo(byte)) * sc, a, c);
      put<kMerge>(xp, 2 * j + 1, static_cast<float>(cm::unpack4_hi(byte)) * sc, a, c);
    }
    i += 2 * pairs;
    if (i < t) put<kMerge>(x, i, static_cast<float>(cm::unpack4_lo(p[i >> 1])) * sc, a, c);
  }
}

// ---- top-k: exact selection by a two-level radix select on |v|'s bits ----
// Keys are the magnitude bits of v (finite, so <= 0x7f7fffff), which order like |v|. Pass 1
// histograms the top 16 bits, pass 2 the low 16 bits inside the bucket holding the k-th largest
// key; that gives the threshold T and how many keys equal to T to take (the lowest indices
// win). Pass 3 counts per range, pass 4 writes indices in increasing order and the residual.

MYCEL_INLINE uint32_t key_of(const float* x, const float* r, size_t i) {
  return f32_bits(r ? x[i] + r[i] : x[i]) & 0x7fffffffu;
}

Status enc_topk(Device& dev, const float* x, float* r, const Layout& l) {
  const size_t n = l.n, k = l.k;
  const int T = pool_size(dev);
  constexpr size_t kBins = 65536;
  std::vector<uint32_t> hist(static_cast<size_t>(T) * kBins, 0);
  parallel(dev, n, 16, [&](size_t b, size_t e, int t) {
    uint32_t* hh = hist.data() + static_cast<size_t>(t) * kBins;
    for (size_t i = b; i < e; ++i) ++hh[key_of(x, r, i) >> 16];
  });
  for (int t = 1; t < T; ++t)
    for (size_t j = 0; j < kBins; ++j) hist[j] += hist[static_cast<size_t>(t) * kBins + j];
  size_t above = 0;  // keys in buckets above the chosen one
  uint32_t hi = 0;
  for (size_t j = kBins; j-- > 0;) {
    if (above + hist[j] >= k) {
      hi = static_cast<uint32_t>(j);
      break;
    }
    above += hist[j];
  }
  std::fill(hist.begin(), hist.end(), 0u);
  parallel(dev, n, 16, [&](size_t b, size_t e, int t) {
    uint32_t* hh = hist.data() + static_cast<size_t>(t) * kBins;
    for (size_t i = b; i < e; ++i) {
      uint32_t key = key_of(x, r, i);
      if ((key >> 16) == hi) ++hh[key & 0xffffu];
    }
  });
  for (int t = 1; t < T; ++t)
    for (size_t j = 0; j < kBins; ++j) hist[j] += hist[static_cast<size_t>(t) * kBins + j];
  uint32_t lo = 0;
  for (size_t j = kBins; j-- > 0;) {
    if (above + hist[j] >= k) {
      lo = static_cast<uint32_t>(j);
      break;
    }
    above += hist[j];
  }
  const uint32_t thr = (hi << 16) | lo;
  const size_t want_eq = k - above;  // keys equal to thr to take, lowest indices first

  // Pass 3: per range, keys above thr and keys equal to it. The ranges are recorded so pass 4
  // walks exactly the same partition even if the pool ran pass 3 differently.
  struct Range {
    size_t b = 0, e = 0, gt = 0, eq = 0, out = 0, take = 0;
  };
  std::vector<Range> rg(T);
  parallel(dev, n, 16, [&](size_t b, size_t e, int t) {
    size_t gt = 0, eq = 0;
    for (size_t i = b; i < e; ++i) {
      uint32_t key = key_of(x, r, i);
      gt += key > thr;
      eq += key == thr;
    }
    rg[t] = Range{b, e, gt, eq, 0, 0};
  });
  std::sort(rg.begin(), rg.end(), [](const Range& a, const Range& b) { return a.b < b.b; });
  size_t out = 0, eq_before = 0;
  for (Range& g : rg) {
    g.out = out;
    g.take = eq_before >= want_eq ? 0 : std::min(g.eq, want_eq - eq_before);
    eq_before += g.eq;
    out += g.gt + g.take;
  }
  if (out != k) return Error(Code::kInternal, "topk selected " + std::to_string(out) +
                                                  " entries, expected " + std::to_string(k));
  float* vals = reinterpret_cast<float*>(l.data);
  parallel(dev, rg.size(), 1, [&](size_t gb, size_t ge, int) {
    for (size_t g = gb; g < ge; ++g) {
      const Range& R = rg[g];
      size_t pos = R.out, taken = 0;
      for (size_t i = R.b; i < R.e; ++i) {
        float v = r ? x[i] + r[i] : x[i];
        uint32_t key = f32_bits(v) & 0x7fffffffu;
        bool sel = key > thr || (key == thr && taken < R.take);
        taken += key == thr && sel;
        if (sel) {
          l.idx[pos] = static_cast<uint32_t>(i);
          vals[pos] = v;
          ++pos;
        }
        if (r) r[i] = sel ? 0.f : v;
      }
    }
  });
  return Ok();
}

// ---- random-k: values at the first k positions of the seeded permutation ----

// Calls f(j, index_j) for j in [b, e). The indices are scattered over the whole model, so each
// access is a cache miss: computing a batch of indices and prefetching their lines first keeps
// many misses in flight instead of one at a time.
template <typename F>
MYCEL_INLINE void for_randk(const cm::RandKPerm& perm, size_t b, size_t e, const float* base,
                            F f) {
  constexpr size_t kBatch = 64;
  uint64_t idx[kBatch];
  for (size_t j0 = b; j0 < e; j0 += kBatch) {
    const size_t m = std::min(kBatch, e - j0);
    for (size_t t = 0; t < m; ++t) {
      idx[t] = cm::randk_index(perm, j0 + t);
      __builtin_prefetch(base + idx[t], 1);
    }
    for (size_t t = 0; t < m; ++t) f(j0 + t, idx[t]);
  }
}

void enc_randk(Device& dev, const PayloadHeader& h, const float* x, float* r, const Layout& l) {
  const cm::RandKPerm perm = cm::make_randk_perm(h.n, h.seed);
  float* vals = reinterpret_cast<float*>(l.data);
  if (r) {
    // residual <- v everywhere, then the sent coordinates move from the residual to the body.
    parallel(dev, l.n, 16, [&](size_t b, size_t e, int) {
      MYCEL_IVDEP
      for (size_t i = b; i < e; ++i) r[i] = x[i] + r[i];
    });
    parallel(dev, l.k, 16, [&](size_t b, size_t e, int) {
      for_randk(perm, b, e, r, [&](size_t j, uint64_t i) {
        vals[j] = r[i];
        r[i] = 0.f;
      });
    });
  } else {
    parallel(dev, l.k, 16, [&](size_t b, size_t e, int) {
      for_randk(perm, b, e, x, [&](size_t j, uint64_t i) { vals[j] = x[i]; });
    });
  }
}

// ---- validation helpers: each range reports its first bad position ----

struct Bad {
  size_t pos = SIZE_MAX;
  Code code = Code::kOk;
  std::string what;
};

template <typename Check>
Status check_ranges(Device& dev, size_t n, size_t align, Check check) {
  std::vector<Bad> bad(pool_size(dev));
  parallel(dev, n, align, [&](size_t b, size_t e, int t) {
    Bad got = check(b, e);
    if (got.pos < bad[t].pos) bad[t] = std::move(got);
  });
  const Bad* first = nullptr;
  for (const Bad& b : bad)
    if (b.pos != SIZE_MAX && (!first || b.pos < first->pos)) first = &b;
  if (first) return Error(first->code, first->what);
  return Ok();
}

MYCEL_CLONES size_t first_nonfinite_f32(const float* v, size_t b, size_t e) {
  uint32_t m = 0;
  for (size_t i = b; i < e; ++i) m = std::max(m, f32_bits(v[i]) & 0x7f800000u);
  if (m != 0x7f800000u) return SIZE_MAX;
  for (size_t i = b; i < e; ++i)
    if ((f32_bits(v[i]) & 0x7f800000u) == 0x7f800000u) return i;
  return SIZE_MAX;
}

MYCEL_CLONES size_t first_nonfinite_16(const uint16_t* v, uint16_t expmask, size_t b, size_t e) {
  uint16_t m = 0;
  for (size_t i = b; i < e; ++i) m = std::max<uint16_t>(m, v[i] & expmask);
  if (m != expmask) return SIZE_MAX;
  for (size_t i = b; i < e; ++i)
    if ((v[i] & expmask) == expmask) return i;
  return SIZE_MAX;
}

Bad nonfinite_value(size_t i) {
  return Bad{i, Code::kNonFinite, "payload value " + std::to_string(i) + " is nan or inf"};
}

}  // namespace

Status encode_body(Device& dev, const PayloadHeader& h, const float* x, float* r, uint8_t* body,
                   Stream*) {
  if (any_nonfinite(dev, x, r, h.n))
    return Error(Code::kNonFinite, r ? "encode input (x + residual) holds nan or inf"
                                     : "encode input holds nan or inf");
  const Layout l = layout(h, body);
  switch (h.codec) {
    case CodecId::kFp32:
      parallel(dev, l.n, 16, [&](size_t b, size_t e, int) {
        enc_f32(x, r, reinterpret_cast<float*>(l.data), b, e);
      });
      return Ok();
    case CodecId::kFp16:
      parallel(dev, l.n, 16, [&](size_t b, size_t e, int) {
        enc_f16(x, r, reinterpret_cast<uint16_t*>(l.data), b, e);
      });
      return Ok();
    case CodecId::kBf16:
      parallel(dev, l.n, 16, [&](size_t b, size_t e, int) {
        enc_bf16(x, r, reinterpret_cast<uint16_t*>(l.data), b, e);
      });
      return Ok();
    case CodecId::kInt8:
      parallel(dev, l.n, l.block, [&](size_t b, size_t e, int) { enc_int8(x, r, l, b, e); });
      return Ok();
    case CodecId::kInt4:
      parallel(dev, l.n, lcm_align(l.block),
               [&](size_t b, size_t e, int) { enc_int4(x, r, l, b, e); });
      return Ok();
    case CodecId::kTopK:
      return enc_topk(dev, x, r, l);
    case CodecId::kRandK:
      enc_randk(dev, h, x, r, l);
      return Ok();
  }
  return Error(Code::kInvalidArgument, "unknown codec");
}

Status validate_body(Device& dev, const PayloadHeader& h, const uint8_t* body, Stream*) {
  const Layout l = layout(h, body);
  switch (h.codec) {
    case CodecId::kFp32: {
      const float* v = reinterpret_cast<const float*>(l.data);
      return check_ranges(dev, l.n, 16, [&](size_t b, size_t e) {
        size_t i = first_nonfinite_f32(v, b, e);
        return i == SIZE_MAX ? Bad{} : nonfinite_value(i);
      });
    }
    case CodecId::kFp16:
    case CodecId::kBf16: {
      const uint16_t* v = reinterpret_cast<const uint16_t*>(l.data);
      const uint16_t mask = h.codec == CodecId::kFp16 ? 0x7c00 : 0x7f80;
      return check_ranges(dev, l.n, 16, [&](size_t b, size_t e) {
        size_t i = first_nonfinite_16(v, mask, b, e);
        return i == SIZE_MAX ? Bad{} : nonfinite_value(i);
      });
    }
    case CodecId::kInt8:
    case CodecId::kInt4: {
      // A scale above FLT_MAX / 128 could turn a finite payload into an Inf model (q * scale);
      // an encoder never writes one (scale = absmax / qmax).
      const float lim = h.codec == CodecId::kInt8 ? FLT_MAX / 128.f : FLT_MAX / 8.f;
      return check_ranges(dev, l.nblocks, 16, [&](size_t b, size_t e) {
        for (size_t j = b; j < e; ++j) {
          float s = l.scales[j];
          if (!std::isfinite(s))
            return Bad{j, Code::kNonFinite, "scale of block " + std::to_string(j) + " is nan or inf"};
          if (!(s >= 0.f && s <= lim))
            return Bad{j, Code::kCorrupt, "scale of block " + std::to_string(j) + " is out of range"};
        }
        return Bad{};
      });
    }
    case CodecId::kTopK: {
      const float* v = reinterpret_cast<const float*>(l.data);
      return check_ranges(dev, l.k, 16, [&](size_t b, size_t e) {
        for (size_t j = b; j < e; ++j) {
          if (l.idx[j] >= l.n)
            return Bad{j, Code::kCorrupt, "topk index " + std::to_string(l.idx[j]) + " at " +
                                              std::to_string(j) + " is out of range (n=" +
                                              std::to_string(l.n) + ")"};
          if (j > 0 && l.idx[j] <= l.idx[j - 1])
            return Bad{j, Code::kCorrupt,
                       "topk indices not strictly increasing at " + std::to_string(j)};
        }
        size_t i = first_nonfinite_f32(v, b, e);
        return i == SIZE_MAX ? Bad{} : nonfinite_value(i);
      });
    }
    case CodecId::kRandK: {
      const float* v = reinterpret_cast<const float*>(l.data);
      return check_ranges(dev, l.k, 16, [&](size_t b, size_t e) {
        size_t i = first_nonfinite_f32(v, b, e);
        return i == SIZE_MAX ? Bad{} : nonfinite_value(i);
      });
    }
  }
  return Error(Code::kCorrupt, "unknown codec");
}

namespace {

template <bool kMerge>
Status decode_impl(Device& dev, const PayloadHeader& h, const uint8_t* body, float* x, float a) {
  const Layout l = layout(h, body);
  switch (h.codec) {
    case CodecId::kFp32: {
      const float* in = reinterpret_cast<const float*>(l.data);
      parallel(dev, l.n, 16, [&](size_t b, size_t e, int) { dec_f32<kMerge>(in, x, a, b, e); });
      return Ok();
    }
    case CodecId::kFp16: {
      const uint16_t* in = reinterpret_cast<const uint16_t*>(l.data);
      parallel(dev, l.n, 16, [&](size_t b, size_t e, int) { dec_f16<kMerge>(in, x, a, b, e); });
      return Ok();
    }
    case CodecId::kBf16: {
      const uint16_t* in = reinterpret_cast<const uint16_t*>(l.data);
      parallel(dev, l.n, 16, [&](size_t b, size_t e, int) { dec_bf16<kMerge>(in, x, a, b, e); });
      return Ok();
    }
    case CodecId::kInt8:
      parallel(dev, l.n, l.block, [&](size_t b, size_t e, int) { dec_int8<kMerge>(l, x, a, b, e); });
      return Ok();
    case CodecId::kInt4:
      parallel(dev, l.n, lcm_align(l.block),
               [&](size_t b, size_t e, int) { dec_int4<kMerge>(l, x, a, b, e); });
      return Ok();
    case CodecId::kTopK: {
      const float* v = reinterpret_cast<const float*>(l.data);
      const float c = 1.f - a;
      parallel(dev, l.k, 16, [&](size_t b, size_t e, int) {
        for (size_t j = b; j < e; ++j) put<kMerge>(x, l.idx[j], v[j], a, c);
      });
      return Ok();
    }
    case CodecId::kRandK: {
      const float* v = reinterpret_cast<const float*>(l.data);
      const float c = 1.f - a;
      const cm::RandKPerm perm = cm::make_randk_perm(h.n, h.seed);
      parallel(dev, l.k, 16, [&](size_t b, size_t e, int) {
        for_randk(perm, b, e, x, [&](size_t j, uint64_t i) { put<kMerge>(x, i, v[j], a, c); });
      });
      return Ok();
    }
  }
  return Error(Code::kCorrupt, "unknown codec");
}

}  // namespace

Status decode_body(Device& dev, const PayloadHeader& h, const uint8_t* body, float* out,
                   Stream*) {
  return decode_impl<false>(dev, h, body, out, 0.f);
}

Status decode_merge_body(Device& dev, const PayloadHeader& h, const uint8_t* body, float* x,
                         float a, Stream*) {
  return decode_impl<true>(dev, h, body, x, a);
}

}  // namespace mycel::cpu
