// common/half.h against exhaustive and reference checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "common/half.h"

namespace mycel {
namespace {

// The value of a half from its fields, computed independently of half.h.
double half_value(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double v;
  if (e == 0x1f) v = m ? std::numeric_limits<double>::quiet_NaN()
                       : std::numeric_limits<double>::infinity();
  else if (e == 0) v = std::ldexp(m, -24);
  else v = std::ldexp(1024 + m, e - 25);
  return s ? -v : v;
}

// Reference fp32 -> fp16, round to nearest even, from the sorted table of non-negative halves
// (0x0000 .. 0x7c00, Inf standing for "65536 and beyond"), compared in double.
uint16_t ref_f32_to_f16(float f) {
  if (std::isnan(f)) return 0x7e00;
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(static_cast<double>(f));
  // Largest non-negative half <= a (Inf counts as 65536 for rounding).
  auto val = [](uint16_t h) { return h == 0x7c00 ? 65536.0 : half_value(h); };
  if (a >= 65536.0) return sign | 0x7c00;
  uint16_t lo = 0, hi = 0x7c00;
  while (hi - lo > 1) {
    uint16_t mid = static_cast<uint16_t>((lo + hi) / 2);
    if (val(mid) <= a) lo = mid;
    else hi = mid;
  }
  if (val(lo) == a) return sign | lo;
  const double dl = a - val(lo), dh = val(hi) - a;
  uint16_t r = dl < dh ? lo : dh < dl ? hi : ((lo & 1) ? hi : lo);
  return sign | r;
}

uint16_t ref_f32_to_bf16(float f) {
  if (std::isnan(f)) return 0x7fc0;
  const uint32_t u = f32_bits(f);
  const uint32_t lo = u & 0xffff0000u;  // truncation toward zero in magnitude
  const uint32_t hi = lo + 0x10000u;
  const double a = std::fabs(static_cast<double>(f));
  const double vl = std::fabs(static_cast<double>(bits_f32(lo)));
  const double vh = (hi & 0x7f800000u) == 0x7f800000u
                        ? std::ldexp(1.0, 128)  // Inf as the next value after the largest finite
                        : std::fabs(static_cast<double>(bits_f32(hi)));
  const double dl = a - vl, dh = vh - a;
  const uint32_t r = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) & 1 ? hi : lo);
  return static_cast<uint16_t>(r >> 16);
}

TEST(HalfTest, EveryHalfConvertsToItsValueAndBack) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = f16_to_f32(h);
    const double want = half_value(h);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << std::hex << i;
      ASSERT_TRUE(std::isnan(f16_to_f32(f32_to_f16(f)))) << std::hex << i;
      continue;
    }
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << i;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << i;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << i;
  }
}

TEST(HalfTest, EveryBfloat16RoundTrips) {
  for (uint32_t i = 0; i < 65536; ++i) {
    const uint16_t h = static_cast<uint16_t>(i);
    const float f = bf16_to_f32(h);
    EXPECT_EQ(f32_bits(f), i << 16);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(f)))) << std::hex << i;
    } else {
      ASSERT_EQ(f32_to_bf16(f), h) << std::hex << i;
    }
  }
}

std::vector<float> probe_values() {
  std::vector<float> v;
  // Every half, the midpoints between neighbours (ties) and one fp32 ulp either side of them.
  for (uint32_t i = 0; i < 0x7c00; ++i) {
    const float a = f16_to_f32(static_cast<uint16_t>(i));
    const float b = i + 1 == 0x7c00 ? 65536.f : f16_to_f32(static_cast<uint16_t>(i + 1));
    const float mid = static_cast<float>((static_cast<double>(a) + b) / 2);
    for (float x : {a, mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)}) {
      v.push_back(x);
      v.push_back(-x);
    }
  }
  // Random bit patterns over the whole fp32 range, and special values.
  std::mt19937 g(3);
  for (int i = 0; i < 300000; ++i) v.push_back(bits_f32(g()));
  for (float x : {0.f, -0.f, 65504.f, 65519.99f, 65520.f, 1e10f,
                  std::numeric_limits<float>::max(), std::numeric_limits<float>::min(),
                  std::numeric_limits<float>::denorm_min(), 5.96e-8f, 2.98e-8f, 2.9802322e-8f,
                  std::numeric_limits<float>::infinity(),
                  std::numeric_limits<float>::quiet_NaN()}) {
    v.push_back(x);
    v.push_back(-x);
  }
  return v;
}

TEST(HalfTest, Fp32ToFp16RoundsToNearestEven) {
  for (float f : probe_values()) {
    const uint16_t got = f32_to_f16(f), want = ref_f32_to_f16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE((got & 0x7c00) == 0x7c00 && (got & 0x3ff)) << "nan stays nan";
      continue;
    }
    ASSERT_EQ(got, want) << "f=" << f << " bits=" << std::hex << f32_bits(f);
  }
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);  // the tie above the largest half goes to Inf
  EXPECT_EQ(f32_to_f16(65519.f), 0x7bff);
}

TEST(HalfTest, Fp32ToBf16RoundsToNearestEven) {
  for (float f : probe_values()) {
    const uint16_t got = f32_to_bf16(f), want = ref_f32_to_bf16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE((got & 0x7f80) == 0x7f80 && (got & 0x7f)) << "nan stays nan";
      continue;
    }
    ASSERT_EQ(got, want) << "f=" << f << " bits=" << std::hex << f32_bits(f);
  }
  // Ties: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 and goes to the even one (1).
  EXPECT_EQ(f32_to_bf16(1.00390625f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.01171875f), 0x3f82);
}

}  // namespace
}  // namespace mycel
