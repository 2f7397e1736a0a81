// Codecs on the CPU device: round-trip error bounds, exact top-k, random-k indices, error
// feedback, fused decode+merge against decode-then-mix, zstd stage, codec text and headers.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/codec.h"
#include "kernels/codec_math.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace mycel {
namespace {

const size_t kSizes[] = {1, 7, 255, 256, 257, 1000003};
const char* kSpecs[] = {"fp32",        "fp16",         "bf16",      "int8",      "int8:block=7",
                        "int8:block=1", "int4",        "int4:block=5", "int4:block=64",
                        "topk:0.1",    "topk:1",       "randk:0.1", "randk:1"};

std::shared_ptr<Device> cpu(int threads = 0) {
  auto d = make_device("cpu", threads);
  EXPECT_TRUE(d.is_ok());
  return *d;
}

CodecSpec spec_of(const std::string& s) {
  auto r = parse_codec(s);
  EXPECT_TRUE(r.is_ok()) << s;
  return *r;
}

std::vector<float> randv(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

// A raw body encoded on the device (host memory on the CPU), with its header.
struct Encoded {
  PayloadHeader h;
  std::vector<uint8_t> body;
};

Encoded encode(Device& dev, const std::string& spec, const std::vector<float>& x,
               std::vector<float>* residual = nullptr, uint64_t seed = 42) {
  auto h = make_header(spec_of(spec), x.size(), seed);
  EXPECT_TRUE(h.is_ok()) << h.status().to_string();
  Encoded e{*h, std::vector<uint8_t>(h->body_bytes + 4)};
  Status s = encode_body(dev, e.h, x.data(), residual ? residual->data() : nullptr, e.body.data(),
                         e.body.size(), nullptr);
  EXPECT_TRUE(s.is_ok()) << spec << ": " << s.to_string();
  e.body.resize(e.h.body_bytes);
  return e;
}

// The coordinates a payload carries (all of them for dense codecs).
std::vector<uint64_t> sent_indices(const Encoded& e) {
  std::vector<uint64_t> idx;
  if (e.h.codec == CodecId::kTopK) {
    for (uint64_t j = 0; j < e.h.k; ++j) {
      uint32_t i;
      std::memcpy(&i, e.body.data() + 4 * j, 4);
      idx.push_back(i);
    }
  } else if (e.h.codec == CodecId::kRandK) {
    auto p = codec_math::make_randk_perm(e.h.n, e.h.seed);
    for (uint64_t j = 0; j < e.h.k; ++j) idx.push_back(codec_math::randk_index(p, j));
  } else {
    idx.resize(e.h.n);
    std::iota(idx.begin(), idx.end(), 0);
  }
  return idx;
}

// decode into a vector whose unsent coordinates are 0 (the error-feedback meaning of decode).
std::vector<float> decode0(Device& dev, const Encoded& e) {
  std::vector<float> d(e.h.n, 0.f);
  Status s = decode_body(dev, e.h, e.body.data(), e.body.size(), d.data());
  EXPECT_TRUE(s.is_ok()) << s.to_string();
  return d;
}

// The stated bound of each codec for one element, given the absmax of its block.
void expect_within_bound(const CodecSpec& spec, const std::vector<float>& x,
                         const std::vector<float>& d, const std::vector<uint64_t>& sent,
                         const std::string& what) {
  const size_t n = x.size();
  std::vector<float> absmax;
  if (spec.id == CodecId::kInt8 || spec.id == CodecId::kInt4) {
    absmax.assign((n + spec.block - 1) / spec.block, 0.f);
    for (size_t i = 0; i < n; ++i)
      absmax[i / spec.block] = std::max(absmax[i / spec.block], std::fabs(x[i]));
  }
  int bad = 0;
  for (uint64_t i : sent) {
    const double xi = x[i], di = d[i], err = std::fabs(xi - di), ax = std::fabs(xi);
    double bound = 0;
    switch (spec.id) {
      case CodecId::kFp32:
      case CodecId::kTopK:
      case CodecId::kRandK: bound = 0; break;
      case CodecId::kFp16:
        if (ax > 65504) {
          bound = ax - 65504;  // saturated to the largest finite half
          if (di != std::copysign(65504.0, xi)) ++bad;
        } else {
          bound = ax >= 0x1p-14 ? ax * 0x1p-11 : 0x1p-25;
        }
        break;
      case CodecId::kBf16: bound = std::max(ax * 0x1p-8, 0x1p-134); break;
      case CodecId::kInt8: bound = absmax[i / spec.block] / 254.0 * (1 + 1e-5) + 4e-37; break;
      case CodecId::kInt4: bound = absmax[i / spec.block] / 14.0 * (1 + 1e-5) + 4e-37; break;
    }
    if (!(err <= bound) || !std::isfinite(di)) {
      if (++bad < 5)
        ADD_FAILURE() << what << " i=" << i << " x=" << xi << " d=" << di << " bound=" << bound;
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

std::vector<std::vector<float>> adversarial(size_t n) {
  std::vector<std::vector<float>> out;
  out.push_back(std::vector<float>(n, 0.f));                // all zeros
  auto huge = randv(n, 7, 1e-3f);                          // one huge value among small ones
  huge[n / 2] = 1e30f;
  out.push_back(huge);
  std::vector<float> den(n);                               // subnormals
  for (size_t i = 0; i < n; ++i)
    den[i] = std::numeric_limits<float>::denorm_min() * static_cast<float>((i * 37) % 1000) *
             (i % 2 ? -1.f : 1.f);
  out.push_back(den);
  std::vector<float> wide(n);                              // beyond fp16's range, mixed
  for (size_t i = 0; i < n; ++i) wide[i] = (i % 3 == 0 ? 1e6f : 0.5f) * (i % 2 ? -1.f : 1.f);
  out.push_back(wide);
  out.push_back(std::vector<float>(n, -3.25f));            // constant
  return out;
}

TEST(CodecRoundTrip, WithinStatedBoundRandomAndAdversarial) {
  auto dev = cpu();
  for (const char* s : kSpecs) {
    const CodecSpec spec = spec_of(s);
    for (size_t n : kSizes) {
      std::vector<std::vector<float>> inputs{randv(n, static_cast<uint32_t>(n))};
      if (n < 1000000)
        for (auto& a : adversarial(n)) inputs.push_back(a);
      for (size_t t = 0; t < inputs.size(); ++t) {
        const auto& x = inputs[t];
        Encoded e = encode(*dev, s, x);
        std::vector<float> d = decode0(*dev, e);
        auto sent = sent_indices(e);
        const std::string what = std::string(s) + " n=" + std::to_string(n) + " input " +
                                 std::to_string(t);
        expect_within_bound(spec, x, d, sent, what);
        if (codec_is_sparse(spec.id)) {
          // Exactly the listed coordinates were written.
          std::vector<float> sentinel(n, 123.f);
          ASSERT_TRUE(decode_body(*dev, e.h, e.body.data(), e.body.size(), sentinel.data()).is_ok());
          std::vector<char> is_sent(n, 0);
          for (auto i : sent) is_sent[i] = 1;
          for (size_t i = 0; i < n; ++i)
            if (!is_sent[i]) {
              ASSERT_EQ(sentinel[i], 123.f) << what << " wrote unsent " << i;
            }
        }
      }
    }
  }
}

TEST(CodecRoundTrip, PayloadBitsDoNotDependOnThreadCount) {
  auto d1 = cpu(1), d3 = cpu(3);
  auto x = randv(300007, 9);
  for (int i = 0; i < 1000; ++i) x[(i * 7919) % x.size()] = 0.5f;  // ties for top-k
  for (const char* s : kSpecs) {
    std::vector<float> r1(x.size(), 0.01f), r3 = r1;
    Encoded a = encode(*d1, s, x, &r1), b = encode(*d3, s, x, &r3);
    EXPECT_EQ(a.body, b.body) << s;
    EXPECT_EQ(std::memcmp(r1.data(), r3.data(), r1.size() * 4), 0) << s;
  }
}

TEST(CodecRoundTrip, Fp16SaturatesInsteadOfOverflowing) {
  auto dev = cpu();
  std::vector<float> x{1e30f, -1e30f, 65519.f, 65520.f, std::numeric_limits<float>::max(), 1.f};
  Encoded e = encode(*dev, "fp16", x);
  auto d = decode0(*dev, e);
  EXPECT_EQ(d[0], 65504.f);
  EXPECT_EQ(d[1], -65504.f);
  EXPECT_EQ(d[2], 65504.f);
  EXPECT_EQ(d[3], 65504.f);
  EXPECT_EQ(d[4], 65504.f);
  EXPECT_EQ(d[5], 1.f);
  Encoded b = encode(*dev, "bf16", x);
  for (float v : decode0(*dev, b)) EXPECT_TRUE(std::isfinite(v));
}

TEST(CodecRoundTrip, Fp16DecodeMatchesTheReferenceConversionForEveryFiniteHalf) {
  // The CPU decoder has its own branch-free fp16 conversion (it vectorises); it must give the
  // bits of common/half.h's f16_to_f32 for every finite half.
  auto dev = cpu();
  std::vector<uint16_t> halves;
  for (uint32_t h = 0; h < 65536; ++h)
    if ((h & 0x7c00u) != 0x7c00u) halves.push_back(static_cast<uint16_t>(h));
  PayloadHeader hdr = *make_header(spec_of("fp16"), halves.size());
  std::vector<float> out(halves.size());
  ASSERT_TRUE(decode_body(*dev, hdr, reinterpret_cast<const uint8_t*>(halves.data()),
                          halves.size() * 2, out.data()).is_ok());
  for (size_t i = 0; i < halves.size(); ++i)
    ASSERT_EQ(f32_bits(out[i]), f32_bits(f16_to_f32(halves[i]))) << std::hex << halves[i];
  // Non-finite halves are refused before anything is written.
  halves[5] = 0x7c00;
  std::vector<float> untouched(halves.size(), 2.f);
  EXPECT_EQ(decode_body(*dev, hdr, reinterpret_cast<const uint8_t*>(halves.data()),
                        halves.size() * 2, untouched.data()).code(), Code::kNonFinite);
  for (float v : untouched) ASSERT_EQ(v, 2.f);
}

TEST(CodecRoundTrip, Int8WorstCaseIsHalfAStep) {
  // absmax 127 gives scale 1 exactly: x = q + 0.5 rounds half to even, error exactly 0.5.
  auto dev = cpu();
  std::vector<float> x{127.f, 0.5f, 1.5f, -2.5f, 3.49f, -126.5f};
  Encoded e = encode(*dev, "int8:block=6", x);
  auto d = decode0(*dev, e);
  EXPECT_EQ(d[0], 127.f);
  EXPECT_EQ(d[1], 0.f);
  EXPECT_EQ(d[2], 2.f);
  EXPECT_EQ(d[3], -2.f);
  EXPECT_EQ(d[4], 3.f);
  EXPECT_EQ(d[5], -126.f);
}

TEST(CodecNonFinite, ReportedAndResidualUntouched) {
  auto dev = cpu();
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(),
                              std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (const char* s : kSpecs) {
    for (size_t n : {size_t(1), size_t(257), size_t(70001)}) {
      for (float bad : bad_values) {
        auto x = randv(n, 3);
        x[n - 1 - n / 3] = bad;
        auto h = make_header(spec_of(s), n, 5);
        ASSERT_TRUE(h.is_ok());
        std::vector<uint8_t> body(h->body_bytes, 0xab);
        std::vector<float> r(n, 0.25f);
        const auto r0 = r;
        Status st = encode_body(*dev, *h, x.data(), r.data(), body.data(), body.size());
        EXPECT_EQ(st.code(), Code::kNonFinite) << s << " " << st.to_string();
        EXPECT_EQ(std::memcmp(r.data(), r0.data(), n * 4), 0) << s << " residual changed";
        for (uint8_t b : body) ASSERT_EQ(b, 0xab) << s << " body written";
        st = encode_body(*dev, *h, x.data(), nullptr, body.data(), body.size());
        EXPECT_EQ(st.code(), Code::kNonFinite) << s;
      }
      // Finite x and residual whose sum overflows.
      std::vector<float> x(n, 3e38f), r(n, 3e38f);
      auto h = make_header(spec_of(s), n, 5);
      std::vector<uint8_t> body(h->body_bytes);
      EXPECT_EQ(encode_body(*dev, *h, x.data(), r.data(), body.data(), body.size()).code(),
                Code::kNonFinite);
      EXPECT_EQ(r[0], 3e38f);
    }
  }
}

// Reference top-k: sort by magnitude, larger first, ties to the lower index; then by index.
std::vector<uint64_t> ref_topk(const std::vector<float>& v, size_t k) {
  std::vector<uint64_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(),
                   [&](uint64_t a, uint64_t b) { return std::fabs(v[a]) > std::fabs(v[b]); });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

TEST(TopK, ExactlyTheKLargestMagnitudesWithTiesToLowerIndex) {
  for (int threads : {1, 2, 3}) {
    auto dev = cpu(threads);
    for (size_t n : {size_t(1), size_t(7), size_t(255), size_t(256), size_t(257), size_t(100003)}) {
      std::mt19937 g(static_cast<uint32_t>(n));
      std::uniform_int_distribution<int> small(-3, 3);
      std::vector<std::vector<float>> inputs{randv(n, 1)};
      std::vector<float> ties(n);  // few distinct magnitudes, both signs: many ties
      for (auto& t : ties) t = static_cast<float>(small(g)) * 0.5f;
      inputs.push_back(ties);
      inputs.push_back(std::vector<float>(n, 0.f));
      std::vector<float> close(n);  // magnitudes that differ only in their low bits
      for (size_t i = 0; i < n; ++i) close[i] = bits_f32(0x3f800000u + (i * 2654435761u) % 97);
      inputs.push_back(close);
      for (const auto& x : inputs) {
        for (double f : {0.001, 0.1, 0.5, 1.0}) {
          CodecSpec spec;
          spec.id = CodecId::kTopK;
          spec.fraction = f;
          auto h = make_header(spec, n);
          ASSERT_TRUE(h.is_ok());
          std::vector<uint8_t> body(h->body_bytes);
          ASSERT_TRUE(encode_body(*dev, *h, x.data(), nullptr, body.data(), body.size()).is_ok());
          Encoded e{*h, body};
          auto got = sent_indices(e);
          ASSERT_EQ(got, ref_topk(x, h->k)) << "n=" << n << " k=" << h->k << " t=" << threads;
          for (size_t j = 0; j < h->k; ++j) {
            float v;
            std::memcpy(&v, body.data() + 4 * h->k + 4 * j, 4);
            ASSERT_EQ(f32_bits(v), f32_bits(x[got[j]]));
          }
        }
      }
    }
  }
}

TEST(RandK, IndicesDistinctAndReproducibleFromTheSeed) {
  auto dev = cpu();
  for (size_t n : {size_t(1), size_t(7), size_t(1000), size_t(65537)}) {
    auto x = randv(n, 2);
    CodecSpec spec = spec_of("randk:0.3");
    Encoded a = encode(*dev, "randk:0.3", x, nullptr, 77);
    Encoded b = encode(*dev, "randk:0.3", x, nullptr, 77);
    Encoded c = encode(*dev, "randk:0.3", x, nullptr, 78);
    auto ia = sent_indices(a), ic = sent_indices(c);
    std::set<uint64_t> sa(ia.begin(), ia.end());
    EXPECT_EQ(sa.size(), ia.size()) << "duplicate indices, n=" << n;
    for (auto i : ia) EXPECT_LT(i, n);
    EXPECT_EQ(a.body, b.body);
    if (n >= 1000) {
      EXPECT_NE(ia, ic) << "another seed gives other indices";
    }
    // A full permutation (k = n) covers every index.
    CodecSpec all = spec;
    all.fraction = 1.0;
    auto h = make_header(all, n, 99);
    auto p = codec_math::make_randk_perm(n, 99);
    std::vector<char> seen(n, 0);
    for (uint64_t j = 0; j < h->k; ++j) seen[codec_math::randk_index(p, j)]++;
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(seen[i], 1) << n;
  }
}

TEST(ErrorFeedback, SplitsTheInputBetweenPayloadAndResidual) {
  auto dev = cpu();
  for (const char* s : kSpecs) {
    const CodecSpec spec = spec_of(s);
    for (size_t n : {size_t(1), size_t(257), size_t(10007)}) {
      auto x = randv(n, 21);
      auto r = randv(n, 22, 0.1f);
      if (n > 10) r[3] = 1e-40f;  // a subnormal residual
      const auto r_old = r;
      Encoded e = encode(*dev, s, x, &r);
      auto d = decode0(*dev, e);
      for (size_t i = 0; i < n; ++i) {
        const float v = x[i] + r_old[i];  // what the kernel encodes
        const double recon = double(d[i]) + double(r[i]);
        if (codec_is_sparse(spec.id) || spec.id == CodecId::kFp32) {
          // Values are sent exactly: the split is exact.
          ASSERT_EQ(recon, double(v)) << s << " i=" << i;
          ASSERT_TRUE(d[i] == 0.f || r[i] == 0.f) << s << " i=" << i;
        } else {
          // new residual = fl(v - d): exact up to one rounding of v - d.
          ASSERT_LE(std::fabs(recon - double(v)), 0x1p-24 * std::fabs(double(v) - double(d[i])))
              << s << " i=" << i;
        }
      }
    }
  }
}

TEST(ErrorFeedback, CumulativeDecodedSumTracksCumulativeInput) {
  auto dev = cpu();
  const size_t n = 1000;
  const int rounds = 400;
  for (const char* s : {"fp16", "bf16", "int8", "int4:block=32", "topk:0.1", "randk:0.1"}) {
    auto x = randv(n, 31);
    std::vector<float> r(n, 0.f);
    std::vector<double> sum(n, 0.0);
    for (int t = 0; t < rounds; ++t) {
      Encoded e = encode(*dev, s, x, &r, 1000 + t);
      auto d = decode0(*dev, e);
      for (size_t i = 0; i < n; ++i) sum[i] += d[i];
    }
    float xmax = 0, rmax = 0;
    for (size_t i = 0; i < n; ++i) {
      xmax = std::max(xmax, std::fabs(x[i]));
      rmax = std::max(rmax, std::fabs(r[i]));
    }
    for (size_t i = 0; i < n; ++i) {
      // sum d_t = R x - r_R exactly in real arithmetic; allow fp32 rounding per round.
      const double want = double(rounds) * x[i] - r[i];
      ASSERT_NEAR(sum[i], want, 1e-4 * rounds * xmax) << s << " i=" << i;
      // The residual stays bounded, so the mean of what was decoded converges to x: within a
      // quantisation step over R for dense codecs, within the longest unsent streak for sparse.
      const bool sparse = codec_is_sparse(spec_of(s).id);
      ASSERT_NEAR(sum[i] / rounds, x[i], (sparse ? 0.25 : 0.01) * xmax) << s << " i=" << i;
    }
    EXPECT_LT(rmax, (codec_is_sparse(spec_of(s).id) ? 100 : 1) * xmax) << s;
  }
}

TEST(FusedMerge, EqualsDecodeThenMixBitForBit) {
  for (int threads : {1, 3}) {
    auto dev = cpu(threads);
    for (const char* s : kSpecs) {
      for (size_t n : kSizes) {
        auto x = randv(n, 41);
        Encoded e = encode(*dev, s, randv(n, 42));
        for (float a : {0.3f, 1.f, 0.f}) {
          if (n > 1000000 && a != 0.3f) continue;  // the large size once: keep the suite fast
          std::vector<float> want = x;
          if (codec_is_sparse(e.h.codec)) {
            std::vector<float> d = decode0(*dev, e);
            const float c = 1.f - a;
            for (auto i : sent_indices(e)) want[i] = c * want[i] + a * d[i];
          } else {
            std::vector<float> d = decode0(*dev, e);
            ASSERT_TRUE(mix(*dev, want.data(), d.data(), a, n).is_ok());
          }
          std::vector<float> got = x;
          ASSERT_TRUE(
              decode_merge_body(*dev, e.h, e.body.data(), e.body.size(), got.data(), a).is_ok());
          ASSERT_EQ(std::memcmp(got.data(), want.data(), n * 4), 0)
              << s << " n=" << n << " a=" << a << " threads=" << threads;
        }
      }
    }
  }
}

TEST(CodecContextTest, RoundTripEveryCodecWithAndWithoutZstd) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  for (const char* s : kSpecs) {
    for (const char* stage : {"", "+zstd", "+zstd=5"}) {
      const std::string full = std::string(s) + stage;
      const CodecSpec spec = spec_of(full);
      const size_t n = 4099;
      auto x = randv(n, 51);
      std::vector<uint8_t> payload;
      auto h = ctx.encode(spec, x.data(), n, nullptr, 9, &payload);
      ASSERT_TRUE(h.is_ok()) << full << ": " << h.status().to_string();
      ASSERT_EQ(payload.size(), kPayloadHeaderBytes + h->body_bytes);
      ASSERT_LE(payload.size(), max_payload_bytes(spec, n));
      Encoded e = encode(*dev, s, x, nullptr, 9);
      std::vector<float> want(n, 0.f), got(n, 0.f);
      ASSERT_TRUE(decode_body(*dev, e.h, e.body.data(), e.body.size(), want.data()).is_ok());
      ASSERT_TRUE(ctx.decode(payload, got.data(), n).is_ok()) << full;
      ASSERT_EQ(std::memcmp(got.data(), want.data(), n * 4), 0) << full;
      // decode_merge through the context equals the device-level fused call.
      std::vector<float> m1 = randv(n, 52), m2 = m1;
      ASSERT_TRUE(ctx.decode_merge(payload, m1.data(), n, 0.25f).is_ok());
      ASSERT_TRUE(
          decode_merge_body(*dev, e.h, e.body.data(), e.body.size(), m2.data(), 0.25f).is_ok());
      ASSERT_EQ(std::memcmp(m1.data(), m2.data(), n * 4), 0) << full;
      // A payload at an odd address decodes the same (the kernels need aligned floats).
      std::vector<uint8_t> shifted(payload.size() + 1);
      std::memcpy(shifted.data() + 1, payload.data(), payload.size());
      std::vector<float> got2(n, 0.f);
      ASSERT_TRUE(ctx.decode(std::span<const uint8_t>(shifted.data() + 1, payload.size()),
                             got2.data(), n).is_ok());
      ASSERT_EQ(std::memcmp(got2.data(), want.data(), n * 4), 0) << full;
    }
  }
}

TEST(CodecContextTest, ZstdShrinksACompressiblePayload) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 100000;
  std::vector<float> x(n, 0.f);
  for (size_t i = 0; i < n; i += 100) x[i] = 1.f + static_cast<float>(i % 7);
  std::vector<uint8_t> plain, packed;
  ASSERT_TRUE(ctx.encode(spec_of("fp32"), x.data(), n, nullptr, 0, &plain).is_ok());
  auto h = ctx.encode(spec_of("fp32+zstd"), x.data(), n, nullptr, 0, &packed);
  ASSERT_TRUE(h.is_ok());
  EXPECT_TRUE(h->flags & kPayloadFlagZstd);
  EXPECT_LT(packed.size() * 10, plain.size());
  std::vector<float> got(n, 5.f);
  ASSERT_TRUE(ctx.decode(packed, got.data(), n).is_ok());
  EXPECT_EQ(got, x);
}

TEST(CodecContextTest, ErrorFeedbackThroughTheContext) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 5000;
  auto x = randv(n, 61);
  std::vector<float> r(n, 0.f);
  std::vector<uint8_t> payload;
  ASSERT_TRUE(ctx.encode(spec_of("topk:0.05+zstd"), x.data(), n, r.data(), 3, &payload).is_ok());
  std::vector<float> d(n, 0.f);
  ASSERT_TRUE(ctx.decode(payload, d.data(), n).is_ok());
  for (size_t i = 0; i < n; ++i) ASSERT_EQ(d[i] + r[i], x[i]);
  // A failed encode leaves the caller's payload and the residual as they were.
  auto bad = x;
  bad[7] = std::nanf("");
  const auto before = payload;
  const auto r0 = r;
  auto h = ctx.encode(spec_of("int8"), bad.data(), n, r.data(), 3, &payload);
  EXPECT_EQ(h.status().code(), Code::kNonFinite);
  EXPECT_EQ(payload, before);
  EXPECT_EQ(r, r0);
}

TEST(CodecText, ParseAndPrint) {
  struct Case {
    const char* text;
    CodecId id;
    uint32_t block;
    double fraction;
    bool zstd;
    int level;
    const char* canonical;
  } cases[] = {
      {"fp32", CodecId::kFp32, 256, 0.01, false, 1, "fp32"},
      {"fp16", CodecId::kFp16, 256, 0.01, false, 1, "fp16"},
      {"bf16+zstd", CodecId::kBf16, 256, 0.01, true, 1, "bf16+zstd"},
      {"int8", CodecId::kInt8, 256, 0.01, false, 1, "int8:block=256"},
      {"int8:block=128", CodecId::kInt8, 128, 0.01, false, 1, "int8:block=128"},
      {"int4:block=64+zstd=7", CodecId::kInt4, 64, 0.01, true, 7, "int4:block=64+zstd=7"},
      {"topk:0.01", CodecId::kTopK, 256, 0.01, false, 1, "topk:0.01"},
      {"topk", CodecId::kTopK, 256, 0.01, false, 1, "topk:0.01"},
      {"randk:0.1+zstd", CodecId::kRandK, 256, 0.1, true, 1, "randk:0.1+zstd"},
      {"randk:1", CodecId::kRandK, 256, 1.0, false, 1, "randk:1"},
  };
  for (const auto& c : cases) {
    auto r = parse_codec(c.text);
    ASSERT_TRUE(r.is_ok()) << c.text << ": " << r.status().to_string();
    EXPECT_EQ(r->id, c.id) << c.text;
    EXPECT_EQ(r->block, c.block) << c.text;
    EXPECT_EQ(r->fraction, c.fraction) << c.text;
    EXPECT_EQ(r->zstd, c.zstd) << c.text;
    EXPECT_EQ(r->zstd_level, c.level) << c.text;
    EXPECT_EQ(to_string(*r), c.canonical);
    auto again = parse_codec(to_string(*r));
    ASSERT_TRUE(again.is_ok());
    EXPECT_EQ(to_string(*again), c.canonical);
  }
  for (const char* bad : {"", "fp64", "FP32", "int8:block=0", "int8:block=65537", "int8:blk=3",
                          "int8:block=", "int8:block=-1", "topk:0", "topk:1.5", "topk:abc",
                          "topk:", "randk:-0.1", "fp32:3", "fp16+zstd=99", "fp16+gzip",
                          "fp16+", "int8:block=12x", "topk:nan"}) {
    auto r = parse_codec(bad);
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << "'" << bad << "' was accepted";
    if (!r.is_ok()) {
      EXPECT_FALSE(r.status().message().empty());
    }
  }
  for (int i = 0; i < kCodecCount; ++i) {
    auto id = static_cast<CodecId>(i);
    EXPECT_EQ(parse_codec(codec_name(id)).is_ok(), true);
    EXPECT_EQ(codec_is_lossy(id), id != CodecId::kFp32);
    EXPECT_EQ(codec_is_sparse(id), id == CodecId::kTopK || id == CodecId::kRandK);
  }
}

TEST(PayloadHeaderTest, MakeHeaderSizesAndK) {
  auto h = make_header(spec_of("topk:0.01"), 10);
  ASSERT_TRUE(h.is_ok());
  EXPECT_EQ(h->k, 1u);  // round(0.1) = 0, clamped to 1
  EXPECT_EQ(h->body_bytes, 8u);
  h = make_header(spec_of("topk:0.01"), 1000);
  EXPECT_EQ(h->k, 10u);
  EXPECT_EQ(h->seed, 0u);
  h = make_header(spec_of("randk:0.5"), 9, 1234);
  EXPECT_EQ(h->k, 5u);  // round(4.5) = 5 (half away from zero)
  EXPECT_EQ(h->seed, 1234u);
  EXPECT_EQ(h->body_bytes, 20u);
  h = make_header(spec_of("int8:block=7"), 15);
  EXPECT_EQ(h->block, 7u);
  EXPECT_EQ(h->body_bytes, 3u * 4 + 15);
  h = make_header(spec_of("int4:block=7"), 15);
  EXPECT_EQ(h->body_bytes, 3u * 4 + 8);
  h = make_header(spec_of("fp16"), 15, 99);
  EXPECT_EQ(h->seed, 0u);
  EXPECT_EQ(h->body_bytes, 30u);
  EXPECT_TRUE(make_header(spec_of("fp32"), 0).is_ok());
  EXPECT_EQ(make_header(spec_of("topk:0.1"), 0).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(make_header(spec_of("randk:0.1"), size_t(UINT32_MAX) + 1).status().code(),
            Code::kInvalidArgument);
  CodecSpec bad = spec_of("int8");
  bad.block = 0;
  EXPECT_EQ(make_header(bad, 10).status().code(), Code::kInvalidArgument);
  bad = spec_of("topk");
  bad.fraction = 0;
  EXPECT_EQ(make_header(bad, 10).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(max_payload_bytes(spec_of("fp32"), 10), kPayloadHeaderBytes + 40);
  EXPECT_GE(max_payload_bytes(spec_of("fp32+zstd"), 10), kPayloadHeaderBytes + 40);
}

TEST(PayloadHeaderTest, WriteReadRoundTripLittleEndian) {
  PayloadHeader h;
  h.codec = CodecId::kRandK;
  h.n = 0x01020304ull;
  h.k = 0x1000;
  h.seed = 0x1122334455667788ull;
  h.body_bytes = 0x1000 * 4;
  uint8_t buf[kPayloadHeaderBytes];
  write_header(h, buf);
  EXPECT_EQ(buf[0], 6);
  EXPECT_EQ(buf[8], 0x04);
  EXPECT_EQ(buf[11], 0x01);
  EXPECT_EQ(buf[12], 0x00);
  EXPECT_EQ(buf[24], 0x88);
  EXPECT_EQ(buf[31], 0x11);
  std::vector<uint8_t> p(buf, buf + kPayloadHeaderBytes);
  p.resize(kPayloadHeaderBytes + h.body_bytes);
  auto r = read_header(p.data(), p.size(), h.n);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->codec, h.codec);
  EXPECT_EQ(r->n, h.n);
  EXPECT_EQ(r->k, h.k);
  EXPECT_EQ(r->seed, h.seed);
  EXPECT_EQ(r->body_bytes, h.body_bytes);
  EXPECT_EQ(read_header(p.data(), p.size(), h.n - 1).status().code(), Code::kOutOfRange);
}

}  // namespace
}  // namespace mycel
