// Every CUDA kernel against its CPU twin on the same inputs (llm.c dev/cuda, ggml
// test-backend-ops habit): random and edge-case inputs (all zeros, one huge value, ties) at sizes
// {1, 7, 255, 256, 257, 1000003}, aligned and misaligned pointers (the vectorised and the scalar
// paths). Payloads must be byte-identical, error-feedback residuals bit-identical; merges and
// decodes are compared at atol + rtol * |ref| (the GPU rounds as the CPU does, so in practice
// they are equal, but an FMA on either side is allowed); NaN must meet NaN. Without a GPU every
// test is skipped with the reason.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/half.h"
#include "kernels/codec.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace mycel {
namespace {

const size_t kSizes[] = {1, 7, 255, 256, 257, 1000003};
const char* kSpecs[] = {"fp32",
                        "fp16",
                        "bf16",
                        "int8",
                        "int8:block=7",
                        "int8:block=1",
                        "int8:block=65536",
                        "int4",
                        "int4:block=5",
                        "int4:block=64",
                        "int4:block=1",
                        "topk:0.01",
                        "topk:0.3",
                        "topk:1",
                        "randk:0.1",
                        "randk:1"};

enum class Kind { kRandom, kZeros, kOneHuge, kTies, kTiny };
const Kind kKinds[] = {Kind::kRandom, Kind::kZeros, Kind::kOneHuge, Kind::kTies, Kind::kTiny};
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kRandom:
      return "random";
    case Kind::kZeros:
      return "zeros";
    case Kind::kOneHuge:
      return "one-huge";
    case Kind::kTies:
      return "ties";
    case Kind::kTiny:
      return "tiny";
  }
  return "?";
}

std::vector<float> make_input(size_t n, Kind kind, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(n);
  switch (kind) {
    case Kind::kRandom:  // magnitudes spread over 2^-8 .. 2^7, so blocks have different scales
      for (auto& x : v) x = nd(g) * std::ldexp(1.f, static_cast<int>(g() % 16) - 8);
      break;
    case Kind::kZeros:  // with negative zeros: |-0| ties with 0
      for (size_t i = 0; i < n; ++i) v[i] = (i % 3 == 1) ? -0.f : 0.f;
      break;
    case Kind::kOneHuge:  // fp16 saturates it; every other int8 code of its block becomes 0
      for (auto& x : v) x = nd(g) * 1e-3f;
      v[n / 2] = 1e30f;
      break;
    case Kind::kTies: {  // few distinct magnitudes: the top-k threshold falls inside a tie
      const float vals[] = {1.f, -1.f, 0.5f, -0.5f, 2.f, -2.f, 0.f};
      for (auto& x : v) x = vals[g() % 7];
      break;
    }
    case Kind::kTiny:  // 2^-130 .. 2^-119: fp32 subnormals (a GPU flushing them would differ),
                       // and int8/int4 blocks whose 1 / scale overflows (inv_scale_of gives 0)
      for (auto& x : v) x = nd(g) * std::ldexp(1.f, static_cast<int>(g() % 12) - 130);
      break;
  }
  return v;
}

[[maybe_unused]] std::string skip_reason() {
  std::string why;
  if (cuda_device_count(&why) > 0) return {};
  if (why.rfind("no cuda device", 0) == 0) return why;
  return "no cuda device: " + why;
}

CodecSpec spec_of(const std::string& s) {
  auto r = parse_codec(s);
  EXPECT_TRUE(r.is_ok()) << s << ": " << r.status().to_string();
  return r.is_ok() ? *r : CodecSpec{};
}

// The tolerance of a merge result: an FMA on either side changes a sum of products by at most
// about an ulp of its largest term, so the bound is kTermTol * sum of |terms| (about 16 ulps),
// element by element; an element whose terms are all 0 must match exactly.
constexpr double kTermTol = 1e-6;

// ref vs got at atol[i] + rtol * |ref|; NaN must meet NaN, Inf the same Inf.
void expect_close(const std::vector<float>& ref, const std::vector<float>& got,
                  const std::vector<double>& atol, double rtol, const std::string& what) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  ASSERT_EQ(ref.size(), atol.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = ref[i], o = got[i];
    bool ok;
    if (std::isnan(r))
      ok = std::isnan(o);
    else if (std::isinf(r))
      ok = (r == o);
    else
      ok = std::isfinite(o) && std::fabs(o - r) <= atol[i] + rtol * std::fabs(r);
    if (!ok && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " mismatches, first at " << first << " (cpu "
                     << (bad ? ref[first] : 0.f) << ", cuda " << (bad ? got[first] : 0.f) << ")";
}

void expect_exact(const std::vector<float>& ref, const std::vector<float>& got,
                  const std::string& what) {
  expect_close(ref, got, std::vector<double>(ref.size(), 0.0), 0.0, what);
}

// Tolerance of c * x + a * d, element by element.
std::vector<double> mix_tol(const std::vector<float>& x, const std::vector<float>& d, float a) {
  std::vector<double> t(x.size());
  const double c = 1.0 - a;
  for (size_t i = 0; i < x.size(); ++i)
    t[i] = kTermTol * (c * std::fabs(x[i]) + a * std::fabs(static_cast<double>(d[i])));
  return t;
}

template <typename T>
void expect_bits_equal(const std::vector<T>& ref, const std::vector<T>& got,
                       const std::string& what) {
  ASSERT_EQ(ref.size(), got.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::memcmp(&ref[i], &got[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << ref.size() << " elements differ, first at "
                     << first;
}

class CudaTwin : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef MYCEL_TWIN_TEST_SELF_CHECK
    // Checks the test itself without a GPU: a 1-thread CPU device stands in for the GPU, so
    // every comparison must hold (compile this file with -DMYCEL_TWIN_TEST_SELF_CHECK).
    auto g = make_device("cpu", 1);
#else
    const std::string why = skip_reason();
    if (!why.empty()) GTEST_SKIP() << why;
    auto g = make_device("cuda");
#endif
    ASSERT_TRUE(g.is_ok()) << g.status().to_string();
    gpu_ = *g;
    auto c = make_device("cpu");
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    cpu_ = *c;
  }

  // A device copy of host data, `pad` spare elements in front (pad = 1 float gives a pointer
  // that is 4- but not 16-byte aligned: the kernels' scalar path).
  template <typename T>
  Buffer<T> up(const std::vector<T>& v, size_t pad = 0) {
    auto b = Buffer<T>::make(*gpu_, v.size() + pad);
    EXPECT_TRUE(b.is_ok()) << b.status().to_string();
    if (!v.empty()) {
      Status s = b->upload(v.data(), v.size(), pad);
      EXPECT_TRUE(s.is_ok()) << s.to_string();
    }
    return std::move(*b);
  }
  template <typename T>
  std::vector<T> down(const Buffer<T>& b, size_t n, size_t pad = 0) {
    std::vector<T> v(n);
    if (n) {
      Status s = b.download(v.data(), n, pad);
      EXPECT_TRUE(s.is_ok()) << s.to_string();
    }
    return v;
  }

  std::shared_ptr<Device> gpu_, cpu_;
};

// ---- merges ----

TEST_F(CudaTwin, WeightedSumEveryKDtypeAndSize) {
  const DType kDt[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (size_t n : kSizes) {
    for (int combo = 0; combo < 4; ++combo) {  // all f32, all f16, all bf16, mixed
      for (int k = 1; k <= kMaxMergeInputs; ++k) {
        for (size_t pad : {size_t{0}, size_t{1}}) {
          if (n > 1000 && (pad || (k != 1 && k != 3 && k != 8))) continue;  // keep it short
          std::vector<std::vector<uint8_t>> host(k);
          std::vector<Buffer<uint8_t>> dev;
          std::vector<MergeInput> cin(k), gin(k);
          std::vector<double> tol(n, 0.0);
          for (int j = 0; j < k; ++j) {
            const DType dt = combo < 3 ? kDt[combo] : kDt[j % 3];
            const std::vector<float> x = make_input(n, Kind::kRandom, 100 + j);
            host[j].resize(n * dtype_size(dt));
            for (size_t i = 0; i < n; ++i) {
              if (dt == DType::kF32) std::memcpy(&host[j][4 * i], &x[i], 4);
              uint16_t h = dt == DType::kF16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
              if (dt != DType::kF32) std::memcpy(&host[j][2 * i], &h, 2);
            }
            const float w = 1.f / static_cast<float>(j + 2);
            for (size_t i = 0; i < n; ++i) tol[i] += kTermTol * w * std::fabs(x[i]) * 1.01;
            const size_t padb = pad * 4;  // keeps 4-byte (and 2-byte) alignment
            dev.push_back(up(host[j], padb));
            cin[j] = MergeInput{host[j].data(), dt, w};
            gin[j] = MergeInput{dev.back().data() + padb, dt, w};
          }
          std::vector<float> ref(n, 0.f);
          ASSERT_TRUE(weighted_sum(*cpu_, ref.data(), cin, n).is_ok());
          Buffer<float> out = up(std::vector<float>(n, 7.f), pad);
          Status s = weighted_sum(*gpu_, out.data() + pad, gin, n);
          ASSERT_TRUE(s.is_ok()) << s.to_string();
          expect_close(ref, down(out, n, pad), tol, 0.0,
                       "weighted_sum n=" + std::to_string(n) + " k=" + std::to_string(k) +
                           " combo=" + std::to_string(combo) + " pad=" + std::to_string(pad));
        }
      }
    }
  }
}

TEST_F(CudaTwin, WeightedSumInPlace) {
  for (size_t n : kSizes) {
    std::vector<float> x = make_input(n, Kind::kRandom, 1), y = make_input(n, Kind::kRandom, 2);
    std::vector<float> ref = x;
    const MergeInput cin[] = {{ref.data(), DType::kF32, 0.25f}, {y.data(), DType::kF32, 0.75f}};
    ASSERT_TRUE(weighted_sum(*cpu_, ref.data(), cin, n).is_ok());
    Buffer<float> gx = up(x), gy = up(y);
    const MergeInput gin[] = {{gx.data(), DType::kF32, 0.25f}, {gy.data(), DType::kF32, 0.75f}};
    ASSERT_TRUE(weighted_sum(*gpu_, gx.data(), gin, n).is_ok());
    std::vector<double> tol(n);
    for (size_t i = 0; i < n; ++i)
      tol[i] = kTermTol * (0.25 * std::fabs(x[i]) + 0.75 * std::fabs(y[i]));
    expect_close(ref, down(gx, n), tol, 0.0, "in-place weighted_sum n=" + std::to_string(n));
  }
}

TEST_F(CudaTwin, MixAlignedAndMisaligned) {
  for (size_t n : kSizes) {
    for (float a : {0.f, 0.3f, 1.f}) {
      for (size_t pad : {size_t{0}, size_t{1}}) {
        std::vector<float> x = make_input(n, Kind::kRandom, 3), y = make_input(n, Kind::kTies, 4);
        std::vector<float> ref = x;
        ASSERT_TRUE(mix(*cpu_, ref.data(), y.data(), a, n).is_ok());
        Buffer<float> gx = up(x, pad), gy = up(y);
        ASSERT_TRUE(mix(*gpu_, gx.data() + pad, gy.data(), a, n).is_ok());
        expect_close(ref, down(gx, n, pad), mix_tol(x, y, a), 0.0,
                     "mix n=" + std::to_string(n) + " a=" + std::to_string(a));
      }
    }
  }
}

// ---- reductions ----

TEST_F(CudaTwin, NormDistanceAndNonFiniteCount) {
  for (size_t n : kSizes) {
    for (Kind kind : kKinds) {
      std::vector<float> x = make_input(n, kind, 5), y = make_input(n, Kind::kRandom, 6);
      Buffer<float> gx = up(x), gy = up(y, 1);
      const std::string what = std::string(kind_name(kind)) + " n=" + std::to_string(n);
      auto cn = l2_norm(*cpu_, x.data(), n), gn = l2_norm(*gpu_, gx.data(), n);
      ASSERT_TRUE(cn.is_ok() && gn.is_ok()) << what;
      EXPECT_NEAR(*gn, *cn, 1e-6 * *cn) << "l2_norm " << what;
      auto cd = l2_distance(*cpu_, x.data(), y.data(), n);
      auto gd = l2_distance(*gpu_, gx.data(), gy.data() + 1, n);  // misaligned y: scalar path
      ASSERT_TRUE(cd.is_ok() && gd.is_ok()) << what;
      EXPECT_NEAR(*gd, *cd, 1e-6 * *cd) << "l2_distance " << what;
      auto gd2 = l2_distance(*gpu_, gx.data(), gx.data(), n);
      ASSERT_TRUE(gd2.is_ok());
      EXPECT_EQ(*gd2, 0.0);
    }
    // count_nonfinite: none, one, and a scatter of NaN / +Inf / -Inf
    std::vector<float> x = make_input(n, Kind::kRandom, 7);
    for (int pattern = 0; pattern < 3; ++pattern) {
      std::vector<float> z = x;
      if (pattern == 1) z[n - 1] = std::numeric_limits<float>::quiet_NaN();
      if (pattern == 2) {
        for (size_t i = 0; i < n; i += 97) {
          z[i] = (i % 3 == 0)   ? std::numeric_limits<float>::infinity()
                 : (i % 3 == 1) ? -std::numeric_limits<float>::infinity()
                                : std::numeric_limits<float>::quiet_NaN();
        }
      }
      Buffer<float> gz = up(z);
      auto cc = count_nonfinite(*cpu_, z.data(), n), gc = count_nonfinite(*gpu_, gz.data(), n);
      ASSERT_TRUE(cc.is_ok() && gc.is_ok());
      EXPECT_EQ(*gc, *cc) << "count_nonfinite n=" << n << " pattern " << pattern;
      if (pattern == 0) {
        EXPECT_EQ(*gc, 0u);
      }
      if (pattern == 1) {
        EXPECT_EQ(*gc, 1u);
      }
      if (pattern == 2) {
        auto gz1 = count_nonfinite(*gpu_, gz.data() + 1, n - 1);  // misaligned start
        auto cz1 = count_nonfinite(*cpu_, z.data() + 1, n - 1);
        ASSERT_TRUE(gz1.is_ok() && cz1.is_ok());
        EXPECT_EQ(*gz1, *cz1);
      }
    }
  }
}

// ---- codecs ----

struct Body {
  PayloadHeader h;
  std::vector<uint8_t> bytes;
};

// Encodes on both devices; payloads must be byte-identical and residuals bit-identical.
TEST_F(CudaTwin, EncodeGivesTheCpuPayloadBytesAndResidual) {
  for (const char* spec_text : kSpecs) {
    const CodecSpec spec = spec_of(spec_text);
    for (size_t n : kSizes) {
      for (Kind kind : kKinds) {
        for (bool ef : {false, true}) {
          const std::string what = std::string(spec_text) + " " + kind_name(kind) +
                                   " n=" + std::to_string(n) + (ef ? " ef" : "");
          auto hr = make_header(spec, n, 0x5eed + n);
          ASSERT_TRUE(hr.is_ok()) << what << ": " << hr.status().to_string();
          const size_t raw = hr->body_bytes;
          const std::vector<float> x = make_input(n, kind, 11);
          std::vector<float> r0 = ef ? make_input(n, Kind::kRandom, 12) : std::vector<float>();
          for (auto& v : r0) v *= 0.01f;

          PayloadHeader ch = *hr;
          std::vector<uint8_t> cbody(raw + 4, 0xab);
          std::vector<float> cres = r0;
          Status cs = encode_body(*cpu_, ch, x.data(), ef ? cres.data() : nullptr, cbody.data(),
                                  raw, nullptr);
          ASSERT_TRUE(cs.is_ok()) << what << ": " << cs.to_string();

          PayloadHeader gh = *hr;
          Buffer<float> gx = up(x), gres = up(r0);
          Buffer<uint8_t> gbody = up(std::vector<uint8_t>(raw + 4, 0xab));
          Status gs = encode_body(*gpu_, gh, gx.data(), ef ? gres.data() : nullptr, gbody.data(),
                                  raw, nullptr);
          ASSERT_TRUE(gs.is_ok()) << what << ": " << gs.to_string();
          EXPECT_EQ(gh.body_bytes, ch.body_bytes) << what;
          expect_bits_equal(cbody, down(gbody, raw + 4), "payload " + what);
          if (ef) {
#if defined(__x86_64__) && !defined(__FMA__)
            // No FMA in an x86-64 baseline build: v - q * scale rounds alike on both sides.
            expect_bits_equal(cres, down(gres, n), "residual " + what);
#else
            // A fused v - q * scale on the CPU may differ by half an ulp of q * scale, and
            // |q * scale| <= 2 |v| whenever q != 0.
            std::vector<double> tol(n);
            for (size_t i = 0; i < n; ++i) tol[i] = std::ldexp(std::fabs(x[i] + r0[i]), -22);
            expect_close(cres, down(gres, n), tol, 0.0, "residual " + what);
#endif
          }
          // x is input only
          expect_bits_equal(x, down(gx, n), "x after encode " + what);
        }
      }
    }
  }
}

TEST_F(CudaTwin, TopKTiesGoToTheLowestIndices) {
  // All magnitudes equal: the k lowest indices are sent, in order.
  const size_t n = 100003;
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = (i % 2) ? -3.f : 3.f;
  CodecSpec spec = spec_of("topk:0.1");
  auto h = make_header(spec, n);
  ASSERT_TRUE(h.is_ok());
  Buffer<float> gx = up(x);
  Buffer<uint8_t> gb = up(std::vector<uint8_t>(h->body_bytes, 0));
  PayloadHeader gh = *h;
  ASSERT_TRUE(encode_body(*gpu_, gh, gx.data(), nullptr, gb.data(), h->body_bytes).is_ok());
  std::vector<uint8_t> body = down(gb, h->body_bytes);
  for (size_t j = 0; j < h->k; ++j) {
    uint32_t i;
    float v;
    std::memcpy(&i, &body[4 * j], 4);
    std::memcpy(&v, &body[4 * h->k + 4 * j], 4);
    ASSERT_EQ(i, j) << "tie at the threshold must go to the lower index";
    ASSERT_EQ(v, x[j]);
  }
  // Many magnitudes, each repeated: 0..999 cycling, with alternating signs. k = 10005: the
  // values 900..999 (100 copies each) plus 5 of the 100 copies of 899, the 5 lowest indices.
  std::vector<float> y(n);
  for (size_t i = 0; i < n; ++i) y[i] = static_cast<float>(i % 1000) * ((i / 1000) % 2 ? -1 : 1);
  auto h2 = make_header(spec_of("topk:0.10005"), n);
  ASSERT_TRUE(h2.is_ok());
  ASSERT_EQ(h2->k, 10005u);
  Buffer<float> gy = up(y);
  Buffer<uint8_t> gb2 = up(std::vector<uint8_t>(h2->body_bytes, 0));
  PayloadHeader gh2 = *h2;
  ASSERT_TRUE(encode_body(*gpu_, gh2, gy.data(), nullptr, gb2.data(), h2->body_bytes).is_ok());
  body = down(gb2, h2->body_bytes);
  const size_t k2 = h2->k;
  std::vector<uint32_t> idx(k2);
  std::memcpy(idx.data(), body.data(), 4 * k2);
  float thr = 1e9f;
  for (size_t j = 0; j < k2; ++j) {
    if (j) {
      ASSERT_LT(idx[j - 1], idx[j]);
    }
    ASSERT_LT(idx[j], n);
    thr = std::min(thr, std::fabs(y[idx[j]]));
  }
  EXPECT_EQ(thr, 899.f);
  size_t above = 0, tied_taken = 0;
  for (size_t i = 0; i < n; ++i) above += std::fabs(y[i]) > thr;
  for (size_t j = 0; j < k2; ++j) tied_taken += std::fabs(y[idx[j]]) == thr;
  EXPECT_EQ(above, 10000u);
  EXPECT_EQ(above + tied_taken, k2);
  // the tied entries taken are the first occurrences, in index order
  size_t seen = 0;
  for (size_t j = 0; j < k2; ++j) {
    if (std::fabs(y[idx[j]]) != thr) continue;
    size_t rank = 0;
    for (size_t i = 0; i < idx[j]; ++i) rank += std::fabs(y[i]) == thr;
    EXPECT_EQ(rank, seen++) << "tied entry " << idx[j] << " skipped a lower index";
  }
}

TEST_F(CudaTwin, EncodeRejectsNonFiniteAndLeavesResidualUntouched) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const char* spec_text : {"fp32", "fp16", "int8", "int4", "topk:0.1", "randk:0.1"}) {
    for (int mode = 0; mode < 3; ++mode) {  // NaN in x, Inf in x, finite x but x + r overflows
      const size_t n = 1000;
      std::vector<float> x = make_input(n, Kind::kRandom, 21), r(n, 0.5f);
      if (mode == 0) x[777] = nan;
      if (mode == 1) x[0] = -std::numeric_limits<float>::infinity();
      if (mode == 2) {
        x[500] = 3e38f;
        r[500] = 3e38f;
      }
      const std::string what = std::string(spec_text) + " mode " + std::to_string(mode);
      auto h = make_header(spec_of(spec_text), n, 9);
      ASSERT_TRUE(h.is_ok());
      std::vector<float> cres = r;
      std::vector<uint8_t> cbody(h->body_bytes);
      PayloadHeader ch = *h;
      Status cs = encode_body(*cpu_, ch, x.data(), cres.data(), cbody.data(), cbody.size());
      Buffer<float> gx = up(x), gres = up(r);
      Buffer<uint8_t> gb = up(std::vector<uint8_t>(h->body_bytes, 0));
      PayloadHeader gh = *h;
      Status gs = encode_body(*gpu_, gh, gx.data(), gres.data(), gb.data(), h->body_bytes);
      EXPECT_EQ(gs.code(), Code::kNonFinite) << what << ": " << gs.to_string();
      EXPECT_EQ(gs.code(), cs.code()) << what;
      expect_bits_equal(r, down(gres, n), "residual after failed encode " + what);
      if (mode != 2) {  // without a residual only x counts
        Status g2 = encode_body(*gpu_, gh, gx.data(), nullptr, gb.data(), h->body_bytes);
        EXPECT_EQ(g2.code(), Code::kNonFinite) << what;
      }
    }
  }
}

// Decode and decode+merge of CPU-made payloads, at aligned and misaligned body / x pointers.
TEST_F(CudaTwin, DecodeAndDecodeMergeMatchTheCpu) {
  for (const char* spec_text : kSpecs) {
    const CodecSpec spec = spec_of(spec_text);
    for (size_t n : kSizes) {
      for (Kind kind : kKinds) {
        const std::string what =
            std::string(spec_text) + " " + kind_name(kind) + " n=" + std::to_string(n);
        auto hr = make_header(spec, n, 77 + n);
        ASSERT_TRUE(hr.is_ok()) << what;
        PayloadHeader h = *hr;
        const std::vector<float> x = make_input(n, kind, 31);
        std::vector<uint8_t> body(h.body_bytes);
        ASSERT_TRUE(encode_body(*cpu_, h, x.data(), nullptr, body.data(), body.size()).is_ok())
            << what;
        const std::vector<float> base = make_input(n, Kind::kRandom, 32);  // the local model
        // Body offsets 0 and 4 bytes (4- but not 16-byte aligned), x offsets 0 and 1 float.
        for (size_t pad : {size_t{0}, size_t{1}}) {
          if (n > 1000 && pad && kind != Kind::kRandom) continue;
          const size_t bpad = 4 * pad;
          Buffer<uint8_t> gb = up(body, bpad);
          const uint8_t* gbody = gb.data() + bpad;

          std::vector<float> cdec = base;
          ASSERT_TRUE(decode_body(*cpu_, h, body.data(), body.size(), cdec.data()).is_ok());
          Buffer<float> gdec = up(base, pad);
          Status s = decode_body(*gpu_, h, gbody, body.size(), gdec.data() + pad);
          ASSERT_TRUE(s.is_ok()) << what << ": " << s.to_string();
          // A decode is one product per entry at most: no FMA can differ, so exact.
          expect_exact(cdec, down(gdec, n, pad), "decode " + what + " pad=" + std::to_string(pad));

          for (float a : {0.25f, 1.f}) {
            std::vector<float> cm = base;
            ASSERT_TRUE(
                decode_merge_body(*cpu_, h, body.data(), body.size(), cm.data(), a).is_ok());
            Buffer<float> gm = up(base, pad);
            s = decode_merge_body(*gpu_, h, gbody, body.size(), gm.data() + pad, a);
            ASSERT_TRUE(s.is_ok()) << what << ": " << s.to_string();
            expect_close(
                cm, down(gm, n, pad), mix_tol(base, cdec, a), 0.0,
                "decode_merge " + what + " a=" + std::to_string(a) + " pad=" + std::to_string(pad));
          }
        }
      }
    }
  }
}

// The GPU's own payload decoded on the GPU, through the host-level CodecContext (staging, zstd).
TEST_F(CudaTwin, CodecContextRoundTripMatchesTheCpu) {
  const size_t n = 100003;
  const std::vector<float> x = make_input(n, Kind::kRandom, 41);
  const std::vector<float> base = make_input(n, Kind::kRandom, 42);
  for (const char* spec_text :
       {"fp16+zstd", "int8", "int4:block=64+zstd", "topk:0.05", "randk:0.2+zstd"}) {
    const CodecSpec spec = spec_of(spec_text);
    CodecContext cctx(*cpu_), gctx(*gpu_);
    std::vector<uint8_t> cpay, gpay;
    auto ch = cctx.encode(spec, x.data(), n, nullptr, 5, &cpay);
    Buffer<float> gx = up(x);
    auto gh = gctx.encode(spec, gx.data(), n, nullptr, 5, &gpay);
    ASSERT_TRUE(ch.is_ok() && gh.is_ok()) << spec_text << ": " << gh.status().to_string();
    expect_bits_equal(cpay, gpay, std::string("payload ") + spec_text);
    std::vector<float> cdec = base, cm = base;
    ASSERT_TRUE(cctx.decode(cpay, cdec.data(), n).is_ok());
    ASSERT_TRUE(cctx.decode_merge(cpay, cm.data(), n, 0.5f).is_ok());
    Buffer<float> gd = up(base);
    Status s = gctx.decode(gpay, gd.data(), n);
    ASSERT_TRUE(s.is_ok()) << s.to_string();
    expect_exact(cdec, down(gd, n), std::string("context decode ") + spec_text);
    Buffer<float> gm = up(base);
    s = gctx.decode_merge(gpay, gm.data(), n, 0.5f);
    ASSERT_TRUE(s.is_ok()) << s.to_string();
    expect_close(cm, down(gm, n), mix_tol(base, cdec, 0.5f), 0.0,
                 std::string("context decode_merge ") + spec_text);
  }
}

// ---- malformed bodies: same error code on both devices, x unchanged ----

TEST_F(CudaTwin, MalformedBodiesRejectedLikeTheCpu) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    const char* spec;
    const char* what;
    Code code;
    void (*corrupt)(PayloadHeader& h, std::vector<uint8_t>& b);
  };
  // Captureless lambdas (function pointers) read these.
  static const float s_nan = nan, s_inf = inf;
  const Case cases[] = {
      {"fp32", "nan value", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) { std::memcpy(&b[4 * 600], &s_nan, 4); }},
      {"fp32", "inf last value", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) { std::memcpy(&b[b.size() - 4], &s_inf, 4); }},
      {"fp16", "inf half", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         b[2 * 10] = 0x00;
         b[2 * 10 + 1] = 0x7c;
       }},
      {"fp16", "nan half", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         b[2 * 999] = 0x01;
         b[2 * 999 + 1] = 0xfe;
       }},
      {"bf16", "nan bf16", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         b[2 * 5] = 0xc1;
         b[2 * 5 + 1] = 0x7f;
       }},
      {"int8", "nan scale", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) { std::memcpy(&b[4 * 2], &s_nan, 4); }},
      {"int8", "negative scale", Code::kCorrupt,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         const float v = -1.f;
         std::memcpy(&b[4 * 3], &v, 4);
       }},
      {"int8:block=7", "huge scale", Code::kCorrupt,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         const float v = std::numeric_limits<float>::max();
         std::memcpy(&b[4 * 100], &v, 4);
       }},
      {"int4", "inf scale", Code::kNonFinite,
       [](PayloadHeader&, std::vector<uint8_t>& b) { std::memcpy(&b[0], &s_inf, 4); }},
      {"int4:block=5", "negative scale", Code::kCorrupt,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         const float v = -0.5f;
         std::memcpy(&b[4 * 199], &v, 4);
       }},
      {"topk:0.1", "index out of range", Code::kCorrupt,
       [](PayloadHeader& h, std::vector<uint8_t>& b) {
         const uint32_t i = static_cast<uint32_t>(h.n);
         std::memcpy(&b[4 * (h.k - 1)], &i, 4);
       }},
      {"topk:0.1", "indices not increasing", Code::kCorrupt,
       [](PayloadHeader&, std::vector<uint8_t>& b) {
         uint32_t i;
         std::memcpy(&i, &b[4 * 5], 4);
         std::memcpy(&b[4 * 6], &i, 4);  // duplicate
       }},
      {"topk:0.1", "nan value", Code::kNonFinite,
       [](PayloadHeader& h, std::vector<uint8_t>& b) {
         std::memcpy(&b[4 * h.k + 4 * 3], &s_nan, 4);
       }},
      {"randk:0.1", "inf value", Code::kNonFinite,
       [](PayloadHeader& h, std::vector<uint8_t>& b) {
         std::memcpy(&b[4 * (h.k - 1)], &s_inf, 4);
       }},
  };
  const size_t n = 1000;
  const std::vector<float> x = make_input(n, Kind::kRandom, 51);
  const std::vector<float> base = make_input(n, Kind::kRandom, 52);
  for (const Case& c : cases) {
    const std::string what = std::string(c.spec) + " " + c.what;
    auto hr = make_header(spec_of(c.spec), n, 3);
    ASSERT_TRUE(hr.is_ok()) << what;
    PayloadHeader h = *hr;
    std::vector<uint8_t> body(h.body_bytes);
    ASSERT_TRUE(encode_body(*cpu_, h, x.data(), nullptr, body.data(), body.size()).is_ok());
    c.corrupt(h, body);
    Buffer<uint8_t> gb = up(body);

    Status cv = validate_body(*cpu_, h, body.data(), body.size());
    Status gv = validate_body(*gpu_, h, gb.data(), body.size());
    EXPECT_EQ(cv.code(), c.code) << what << ": cpu says " << cv.to_string();
    EXPECT_EQ(gv.code(), cv.code()) << what << ": cuda says " << gv.to_string();
    // The same body at a 4- but not 16-byte aligned address (the kernels' scalar path).
    Buffer<uint8_t> gb4 = up(body, 4);
    Status gv4 = validate_body(*gpu_, h, gb4.data() + 4, body.size());
    EXPECT_EQ(gv4.code(), cv.code()) << what << " (offset body): cuda says " << gv4.to_string();

    std::vector<float> cm = base;
    Status cs = decode_merge_body(*cpu_, h, body.data(), body.size(), cm.data(), 0.5f);
    Buffer<float> gm = up(base);
    Status gs = decode_merge_body(*gpu_, h, gb.data(), body.size(), gm.data(), 0.5f);
    EXPECT_EQ(gs.code(), cs.code()) << what;
    EXPECT_FALSE(gs.is_ok()) << what;
    expect_bits_equal(base, down(gm, n), "x after rejected decode_merge " + what);
    Buffer<float> gd = up(base);
    gs = decode_body(*gpu_, h, gb.data(), body.size(), gd.data());
    EXPECT_EQ(gs.code(), c.code) << what;
    expect_bits_equal(base, down(gd, n), "out after rejected decode " + what);

    // A body one byte short is an error on both, never a read past the end.
    cs = decode_merge_body(*cpu_, h, body.data(), body.size() - 1, cm.data(), 0.5f);
    gs = decode_merge_body(*gpu_, h, gb.data(), body.size() - 1, gm.data(), 0.5f);
    EXPECT_FALSE(gs.is_ok()) << what;
    EXPECT_EQ(gs.code(), cs.code()) << what;
  }
}

// A valid body with an edge value everywhere the format allows one: int8 -128 codes, int4 -8
// nibbles, fp16 subnormals, zero scales. Both devices accept and decode it the same way.
TEST_F(CudaTwin, EdgeCodesDecodeLikeTheCpu) {
  const size_t n = 1001;
  const std::vector<float> base = make_input(n, Kind::kRandom, 61);
  for (const char* spec_text : {"int8:block=16", "int4:block=3", "fp16"}) {
    auto hr = make_header(spec_of(spec_text), n, 0);
    ASSERT_TRUE(hr.is_ok());
    const PayloadHeader h = *hr;
    std::vector<uint8_t> body(h.body_bytes);
    std::mt19937 g(62);
    for (auto& b : body) b = static_cast<uint8_t>(g());
    if (h.codec == CodecId::kFp16) {
      for (size_t i = 0; i < n; ++i) body[2 * i + 1] &= 0x83;  // small exponents: subnormals
    } else {
      const size_t nb = (n + h.block - 1) / h.block;
      for (size_t j = 0; j < nb; ++j) {
        const float s = (j % 5 == 0) ? 0.f : 0.01f * static_cast<float>(j % 7);
        std::memcpy(&body[4 * j], &s, 4);
      }
      body[4 * nb] = 0x80;  // int8 -128, or int4 -8 in the low nibble
    }
    Buffer<uint8_t> gb = up(body);
    std::vector<float> cdec = base, cm = base;
    Status cs = decode_body(*cpu_, h, body.data(), body.size(), cdec.data());
    ASSERT_TRUE(cs.is_ok()) << spec_text << ": " << cs.to_string();
    Buffer<float> gd = up(base);
    Status gs0 = decode_body(*gpu_, h, gb.data(), body.size(), gd.data());
    ASSERT_TRUE(gs0.is_ok()) << spec_text << ": " << gs0.to_string();
    expect_exact(cdec, down(gd, n), std::string("edge decode ") + spec_text);
    cs = decode_merge_body(*cpu_, h, body.data(), body.size(), cm.data(), 0.75f);
    Buffer<float> gm = up(base);
    Status gs = decode_merge_body(*gpu_, h, gb.data(), body.size(), gm.data(), 0.75f);
    ASSERT_EQ(cs.code(), gs.code())
        << spec_text << ": " << cs.to_string() << " / " << gs.to_string();
    if (cs.is_ok())
      expect_close(cm, down(gm, n), mix_tol(base, cdec, 0.75f), 0.0,
                   std::string("edge ") + spec_text);
  }
}

}  // namespace
}  // namespace mycel
