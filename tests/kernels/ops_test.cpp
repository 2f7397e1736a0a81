// Merge and reduction kernels of the CPU backend against plain scalar loops.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "common/half.h"
#include "kernels/device.h"
#include "kernels/ops.h"

namespace mycel {
namespace {

const size_t kSizes[] = {1, 7, 255, 256, 257, 1000003};

std::shared_ptr<Device> cpu(int threads = 0) {
  auto d = make_device("cpu", threads);
  EXPECT_TRUE(d.is_ok());
  return *d;
}

std::vector<float> randv(size_t n, uint32_t seed, float lo = -2.f, float hi = 2.f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = u(g);
  return v;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b, size_t* where) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (f32_bits(a[i]) != f32_bits(b[i])) {
      *where = i;
      return false;
    }
  return true;
}

// An input of a weighted sum in its dtype, and its fp32 reading.
struct Input {
  DType dtype;
  std::vector<float> f32;
  std::vector<uint16_t> h16;
  float weight;
  const void* data() const { return dtype == DType::kF32 ? (const void*)f32.data() : h16.data(); }
  float at(size_t i) const {
    switch (dtype) {
      case DType::kF32: return f32[i];
      case DType::kF16: return f16_to_f32(h16[i]);
      default: return bf16_to_f32(h16[i]);
    }
  }
};

Input make_input(DType t, size_t n, uint32_t seed) {
  Input in{t, randv(n, seed), {}, 0.f};
  if (t != DType::kF32) {
    in.h16.resize(n);
    for (size_t i = 0; i < n; ++i)
      in.h16[i] = t == DType::kF16 ? f32_to_f16(in.f32[i]) : f32_to_bf16(in.f32[i]);
  }
  in.weight = 0.1f + 0.13f * static_cast<float>(seed % 7);
  return in;
}

// The plain loop: acc = w0*x0; acc += wj*xj, in fp32 and in input order.
std::vector<float> ref_wsum(const std::vector<Input>& in, size_t n) {
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    float acc = in[0].weight * in[0].at(i);
    for (size_t j = 1; j < in.size(); ++j) acc += in[j].weight * in[j].at(i);
    out[i] = acc;
  }
  return out;
}

std::vector<MergeInput> merge_inputs(const std::vector<Input>& in) {
  std::vector<MergeInput> m;
  for (const auto& x : in) m.push_back({x.data(), x.dtype, x.weight});
  return m;
}

class WeightedSum : public ::testing::TestWithParam<int> {};  // param: dtype pattern

TEST_P(WeightedSum, MatchesScalarLoopForEveryKAndSize) {
  auto dev = cpu();
  const int pattern = GetParam();  // 0 f32, 1 f16, 2 bf16, 3 mixed
  for (size_t n : kSizes) {
    for (int k = 1; k <= kMaxMergeInputs; ++k) {
      std::vector<Input> in;
      for (int j = 0; j < k; ++j) {
        DType t = pattern < 3 ? static_cast<DType>(pattern) : static_cast<DType>(j % 3);
        in.push_back(make_input(t, n, static_cast<uint32_t>(n * 31 + j * 7 + k)));
      }
      std::vector<float> out(n, -1.f);
      ASSERT_TRUE(weighted_sum(*dev, out.data(), merge_inputs(in), n).is_ok());
      size_t at = 0;
      ASSERT_TRUE(same_bits(out, ref_wsum(in, n), &at))
          << "n=" << n << " k=" << k << " pattern=" << pattern << " first mismatch at " << at;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, WeightedSum, ::testing::Values(0, 1, 2, 3));

TEST(WeightedSumTest, OutputMayAliasAnFp32Input) {
  for (int threads : {1, 3}) {
    auto dev = cpu(threads);
    for (size_t n : kSizes) {
      for (int k : {1, 2, 3, 8}) {
        for (int pos : {0, k - 1}) {
          std::vector<Input> in;
          for (int j = 0; j < k; ++j)
            in.push_back(make_input(j == pos ? DType::kF32 : static_cast<DType>(j % 3), n,
                                    static_cast<uint32_t>(j + 100 * k)));
          std::vector<float> want = ref_wsum(in, n);
          auto m = merge_inputs(in);
          float* out = in[pos].f32.data();
          ASSERT_TRUE(weighted_sum(*dev, out, m, n).is_ok());
          size_t at = 0;
          ASSERT_TRUE(same_bits(in[pos].f32, want, &at))
              << "n=" << n << " k=" << k << " pos=" << pos << " mismatch at " << at;
        }
      }
    }
  }
}

TEST(WeightedSumTest, LargeOutOfPlaceSumsMatchTheScalarLoop) {
  // Beyond 2^23 elements the out-of-place fp32 path uses streaming stores (x86-64): check it,
  // with the output both 16-byte aligned and not.
  auto dev = cpu();
  const size_t n = (size_t(1) << 23) + 3;
  for (int k : {1, 2, 3}) {
    std::vector<Input> in;
    for (int j = 0; j < k; ++j) in.push_back(make_input(DType::kF32, n, 300 + j));
    const auto want = ref_wsum(in, n);
    for (size_t shift : {size_t(0), size_t(1)}) {
      std::vector<float> buf(n + 1, -1.f);
      ASSERT_TRUE(weighted_sum(*dev, buf.data() + shift, merge_inputs(in), n).is_ok());
      std::vector<float> got(buf.begin() + shift, buf.begin() + shift + n);
      size_t at = 0;
      ASSERT_TRUE(same_bits(got, want, &at)) << "k=" << k << " shift=" << shift << " at " << at;
      // Nothing written outside [shift, shift + n).
      ASSERT_EQ(shift == 0 ? buf[n] : buf[0], -1.f);
    }
  }
}

TEST(WeightedSumTest, EveryFp16AndBf16InputConvertsExactly) {
  // All 65536 bit patterns, Inf and NaN included, with weight 1: out is the input's value.
  auto dev = cpu();
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = static_cast<uint16_t>(i);
  for (DType t : {DType::kF16, DType::kBF16}) {
    std::vector<MergeInput> in{{all.data(), t, 1.f}};
    std::vector<float> out(all.size());
    ASSERT_TRUE(weighted_sum(*dev, out.data(), in, all.size()).is_ok());
    for (uint32_t i = 0; i < 65536; ++i) {
      float want = t == DType::kF16 ? f16_to_f32(all[i]) : bf16_to_f32(all[i]);
      if (std::isnan(want)) {
        ASSERT_TRUE(std::isnan(out[i])) << i;
      } else {
        ASSERT_EQ(f32_bits(out[i]), f32_bits(want)) << std::hex << i;
      }
    }
  }
}

TEST(WeightedSumTest, RejectsBadArguments) {
  auto dev = cpu();
  std::vector<float> a(100, 1.f), out(100, 7.f);
  std::vector<MergeInput> none;
  EXPECT_EQ(weighted_sum(*dev, out.data(), none, 100).code(), Code::kInvalidArgument);
  std::vector<MergeInput> nine(9, MergeInput{a.data(), DType::kF32, 1.f});
  EXPECT_EQ(weighted_sum(*dev, out.data(), nine, 100).code(), Code::kInvalidArgument);
  std::vector<MergeInput> one{{nullptr, DType::kF32, 1.f}};
  EXPECT_EQ(weighted_sum(*dev, out.data(), one, 100).code(), Code::kInvalidArgument);
  one[0].data = a.data();
  EXPECT_EQ(weighted_sum(*dev, nullptr, one, 100).code(), Code::kInvalidArgument);
  one[0].weight = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(weighted_sum(*dev, out.data(), one, 100).code(), Code::kInvalidArgument);
  one[0].weight = std::numeric_limits<float>::infinity();
  EXPECT_EQ(weighted_sum(*dev, out.data(), one, 100).code(), Code::kInvalidArgument);
  one[0].weight = 1.f;
  one[0].dtype = static_cast<DType>(7);
  EXPECT_EQ(weighted_sum(*dev, out.data(), one, 100).code(), Code::kInvalidArgument);
  // A shifted view of the output is not an in-place merge.
  one[0] = {out.data() + 1, DType::kF32, 1.f};
  EXPECT_EQ(weighted_sum(*dev, out.data(), one, 99).code(), Code::kInvalidArgument);
  // An fp16 input at the output's address is not in place either (different strides).
  one[0] = {out.data(), DType::kF16, 1.f};
  EXPECT_EQ(weighted_sum(*dev, out.data(), one, 100).code(), Code::kInvalidArgument);
  for (float v : out) ASSERT_EQ(v, 7.f);  // nothing written on error
  // n == 0 with null pointers is a no-op.
  std::vector<MergeInput> z{{nullptr, DType::kF32, 1.f}};
  EXPECT_TRUE(weighted_sum(*dev, nullptr, z, 0).is_ok());
}

TEST(MixTest, MatchesScalarLoop) {
  auto dev = cpu();
  for (size_t n : kSizes) {
    for (float a : {0.f, 0.25f, 0.5f, 1.f, 0.3f}) {
      auto x = randv(n, 1), y = randv(n, 2);
      std::vector<float> want(n);
      const float c = 1.f - a;
      for (size_t i = 0; i < n; ++i) want[i] = c * x[i] + a * y[i];
      ASSERT_TRUE(mix(*dev, x.data(), y.data(), a, n).is_ok());
      size_t at = 0;
      ASSERT_TRUE(same_bits(x, want, &at)) << "n=" << n << " a=" << a << " at " << at;
    }
  }
}

TEST(MixTest, SelfMixAndBadArguments) {
  auto dev = cpu();
  auto x = randv(257, 3);
  auto want = x;
  for (auto& v : want) v = 0.6f * v + 0.4f * v;
  ASSERT_TRUE(mix(*dev, x.data(), x.data(), 0.4f, x.size()).is_ok());
  size_t at = 0;
  EXPECT_TRUE(same_bits(x, want, &at));
  auto before = x;
  EXPECT_EQ(mix(*dev, x.data(), x.data() + 1, 0.5f, 200).code(), Code::kInvalidArgument);
  EXPECT_EQ(mix(*dev, x.data(), nullptr, 0.5f, 200).code(), Code::kInvalidArgument);
  EXPECT_EQ(mix(*dev, nullptr, x.data(), 0.5f, 200).code(), Code::kInvalidArgument);
  EXPECT_EQ(mix(*dev, x.data(), before.data(), std::nanf(""), 200).code(),
            Code::kInvalidArgument);
  EXPECT_TRUE(same_bits(x, before, &at));
}

TEST(AgeTest, WeightFollowsAges) {
  EXPECT_EQ(age_weight(0, 0), 0.5f);
  EXPECT_EQ(age_weight(1, 3), 0.75f);
  EXPECT_EQ(age_weight(3, 1), 0.25f);
  EXPECT_EQ(age_weight(5, 0), 0.f);
  EXPECT_EQ(age_weight(0, 5), 1.f);
  EXPECT_EQ(age_weight(UINT64_MAX, UINT64_MAX), 0.5f);  // no overflow in the sum
  EXPECT_NEAR(age_weight(UINT64_MAX, 1), 0.f, 1e-18);
}

TEST(AgeTest, MergeMixesWithAgeWeightAndTakesMaxAge) {
  auto dev = cpu();
  for (size_t n : kSizes) {
    struct Case {
      uint64_t age, age_y;
    } cases[] = {{0, 0}, {2, 6}, {9, 1}};
    for (auto c : cases) {
      auto x = randv(n, 5), y = randv(n, 6);
      std::vector<float> want(n);
      const float a = age_weight(c.age, c.age_y), b = 1.f - a;
      for (size_t i = 0; i < n; ++i) want[i] = b * x[i] + a * y[i];
      uint64_t age = c.age;
      ASSERT_TRUE(age_merge(*dev, x.data(), &age, y.data(), c.age_y, n).is_ok());
      EXPECT_EQ(age, std::max(c.age, c.age_y));
      size_t at = 0;
      ASSERT_TRUE(same_bits(x, want, &at)) << n;
    }
  }
  std::vector<float> x(3), y(3);
  EXPECT_EQ(age_merge(*dev, x.data(), nullptr, y.data(), 1, 3).code(), Code::kInvalidArgument);
  uint64_t age = 4;
  EXPECT_EQ(age_merge(*dev, x.data(), &age, nullptr, 9, 3).code(), Code::kInvalidArgument);
  EXPECT_EQ(age, 4u);  // unchanged on error
}

TEST(ReductionTest, NormDistanceAndNonFiniteMatchScalarLoops) {
  for (int threads : {1, 3}) {
    auto dev = cpu(threads);
    for (size_t n : kSizes) {
      auto x = randv(n, 11), y = randv(n, 12);
      double sx = 0, sd = 0;
      for (size_t i = 0; i < n; ++i) {
        sx += double(x[i]) * x[i];
        sd += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      }
      auto nx = l2_norm(*dev, x.data(), n);
      auto nd = l2_distance(*dev, x.data(), y.data(), n);
      ASSERT_TRUE(nx.is_ok() && nd.is_ok());
      EXPECT_NEAR(*nx, std::sqrt(sx), 1e-12 * std::sqrt(sx)) << n;
      EXPECT_NEAR(*nd, std::sqrt(sd), 1e-12 * std::sqrt(sd)) << n;
      auto same = l2_distance(*dev, x.data(), x.data(), n);
      EXPECT_EQ(*same, 0.0);

      auto c0 = count_nonfinite(*dev, x.data(), n);
      ASSERT_TRUE(c0.is_ok());
      EXPECT_EQ(*c0, 0u);
      // NaN, +Inf, -Inf, the largest finite and a subnormal: three are non-finite.
      x[0] = std::numeric_limits<float>::quiet_NaN();
      if (n > 3) {
        x[n / 2] = std::numeric_limits<float>::infinity();
        x[n - 1] = -std::numeric_limits<float>::infinity();
        x[1] = std::numeric_limits<float>::max();
        x[2] = std::numeric_limits<float>::denorm_min();
      }
      auto c = count_nonfinite(*dev, x.data(), n);
      EXPECT_EQ(*c, n > 3 ? 3u : 1u) << n;
    }
  }
}

TEST(ReductionTest, EmptyAndNull) {
  auto dev = cpu();
  EXPECT_EQ(*l2_norm(*dev, nullptr, 0), 0.0);
  EXPECT_EQ(l2_norm(*dev, nullptr, 5).status().code(), Code::kInvalidArgument);
  float x[2] = {3.f, 4.f};
  EXPECT_EQ(*l2_norm(*dev, x, 2), 5.0);
  EXPECT_EQ(l2_distance(*dev, x, nullptr, 2).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(count_nonfinite(*dev, nullptr, 2).status().code(), Code::kInvalidArgument);
}

TEST(DtypeTest, Sizes) {
  EXPECT_EQ(dtype_size(DType::kF32), 4u);
  EXPECT_EQ(dtype_size(DType::kF16), 2u);
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
}

}  // namespace
}  // namespace mycel
