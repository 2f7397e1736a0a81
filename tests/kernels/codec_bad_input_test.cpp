// Bad payloads: every one is an error with the right code, leaves the output unchanged and never
// reads or writes out of bounds (this file runs under ASan + UBSan in CI).
#include <gtest/gtest.h>
#include <zstd.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/codec.h"
#include "kernels/device.h"

namespace mycel {
namespace {

std::shared_ptr<Device> cpu() { return *make_device("cpu"); }

std::vector<float> randv(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

const char* kSpecs[] = {"fp32", "fp16", "bf16", "int8:block=8", "int4:block=5", "topk:0.2",
                        "randk:0.3"};

std::vector<uint8_t> payload_of(CodecContext& ctx, const std::string& spec, size_t n,
                                uint64_t seed = 7) {
  auto x = randv(n, 1);
  std::vector<uint8_t> p;
  auto h = ctx.encode(*parse_codec(spec), x.data(), n, nullptr, seed, &p);
  EXPECT_TRUE(h.is_ok()) << spec;
  return p;
}

// decode and decode_merge both fail with `code` and leave x as it was.
void expect_rejected(CodecContext& ctx, std::span<const uint8_t> p, size_t n, Code code,
                     const std::string& what) {
  auto x = randv(n, 99);
  const auto x0 = x;
  Status s1 = ctx.decode(p, x.data(), n);
  Status s2 = ctx.decode_merge(p, x.data(), n, 0.5f);
  EXPECT_EQ(s1.code(), code) << what << ": " << s1.to_string();
  EXPECT_EQ(s2.code(), code) << what << ": " << s2.to_string();
  EXPECT_EQ(std::memcmp(x.data(), x0.data(), n * 4), 0) << what << ": output changed";
}

PayloadHeader header_of(const std::vector<uint8_t>& p) {
  return *read_header(p.data(), p.size(), UINT64_MAX);
}

std::vector<uint8_t> with_header(std::vector<uint8_t> p, const PayloadHeader& h) {
  write_header(h, p.data());
  return p;
}

TEST(BadPayload, EveryTruncationIsAnError) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 37;
  for (const char* s : kSpecs) {
    for (const char* stage : {"", "+zstd"}) {
      const std::string spec = std::string(s) + stage;
      auto p = payload_of(ctx, spec, n);
      for (size_t len = 0; len < p.size(); ++len) {
        // A copy of exactly len bytes, so ASan sees any read past it.
        std::vector<uint8_t> cut(p.begin(), p.begin() + len);
        expect_rejected(ctx, cut, n, Code::kCorrupt, spec + " cut to " + std::to_string(len));
      }
      // One byte too many is as wrong as one too few.
      auto longer = p;
      longer.push_back(0);
      expect_rejected(ctx, longer, n, Code::kCorrupt, spec + " one byte long");
    }
  }
}

TEST(BadPayload, WrongParameterCount) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  for (const char* s : kSpecs) {
    auto p = payload_of(ctx, s, 40);
    expect_rejected(ctx, p, 41, Code::kOutOfRange, std::string(s) + " n=40 read as 41");
    expect_rejected(ctx, p, 39, Code::kOutOfRange, std::string(s) + " n=40 read as 39");
  }
}

TEST(BadPayload, CorruptHeaderFields) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 64;
  for (const char* s : kSpecs) {
    const std::string spec = s;
    auto p = payload_of(ctx, spec, n);
    PayloadHeader h = header_of(p);
    auto bad = p;
    bad[0] = 99;  // codec id
    expect_rejected(ctx, bad, n, Code::kCorrupt, spec + " codec 99");
    bad = p;
    bad[0] = 7;
    expect_rejected(ctx, bad, n, Code::kCorrupt, spec + " codec 7");
    PayloadHeader g = h;
    g.reserved = 1;
    expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " reserved");
    g = h;
    g.flags = 0x80;
    expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " flags");
    g = h;
    g.body_bytes = h.body_bytes + 1;
    expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " body_bytes + 1");
    g.body_bytes = h.body_bytes - 1;
    expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " body_bytes - 1");
    g.body_bytes = UINT64_MAX;
    expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " body_bytes max");
    g = h;
    g.block = h.block == 0 ? 4 : 0;  // block 0 for int8/int4, nonzero for the others
    expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " block");
    if (h.codec == CodecId::kInt8 || h.codec == CodecId::kInt4) {
      g.block = 65537;
      expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " block 65537");
    }
    g = h;
    if (codec_is_sparse(h.codec)) {
      g.k = n + 1;
      expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " k > n");
      g.k = 0;
      expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " k = 0");
      g.k = UINT64_MAX;
      expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " k max");
    } else {
      g.k = 1;
      expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " k for dense");
    }
    if (h.codec != CodecId::kRandK) {
      g = h;
      g.seed = 5;
      expect_rejected(ctx, with_header(p, g), n, Code::kCorrupt, spec + " seed");
    }
    g = h;
    g.n = UINT64_MAX;
    expect_rejected(ctx, with_header(p, g), n, Code::kOutOfRange, spec + " n max");
  }
}

// The body of an uncompressed payload, to corrupt in place.
uint8_t* body_of(std::vector<uint8_t>& p) { return p.data() + kPayloadHeaderBytes; }

void put_f32(uint8_t* p, float v) { std::memcpy(p, &v, 4); }
void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

TEST(BadPayload, BadScalesValuesAndIndices) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 64;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const char* s : {"int8:block=8", "int4:block=8"}) {
    auto p = payload_of(ctx, s, n);
    for (int blk : {0, 3, 7}) {
      struct {
        float v;
        Code code;
      } cases[] = {{nan, Code::kNonFinite}, {inf, Code::kNonFinite}, {-inf, Code::kNonFinite},
                   {-1.f, Code::kCorrupt}, {FLT_MAX, Code::kCorrupt}, {1e38f, Code::kCorrupt}};
      for (auto c : cases) {
        auto bad = p;
        put_f32(body_of(bad) + 4 * blk, c.v);
        expect_rejected(ctx, bad, n, c.code,
                        std::string(s) + " scale " + std::to_string(c.v) + " in block " +
                            std::to_string(blk));
      }
    }
  }
  for (const char* s : {"fp32", "topk:0.25", "randk:0.25"}) {
    auto p = payload_of(ctx, s, n);
    PayloadHeader h = header_of(p);
    const size_t off = h.codec == CodecId::kTopK ? 4 * h.k : 0;
    const size_t count = h.codec == CodecId::kFp32 ? n : h.k;
    for (size_t j : {size_t(0), count / 2, count - 1}) {
      for (float v : {nan, inf, -inf}) {
        auto bad = p;
        put_f32(body_of(bad) + off + 4 * j, v);
        expect_rejected(ctx, bad, n, Code::kNonFinite, std::string(s) + " value " +
                                                           std::to_string(j));
      }
    }
  }
  for (const char* s : {"fp16", "bf16"}) {
    auto p = payload_of(ctx, s, n);
    for (uint16_t v : {uint16_t(s[0] == 'f' ? 0x7c00 : 0x7f80), uint16_t(0xffff)}) {
      auto bad = p;
      std::memcpy(body_of(bad) + 2 * 17, &v, 2);
      expect_rejected(ctx, bad, n, Code::kNonFinite, std::string(s) + " inf/nan value");
    }
  }
  // top-k indices: out of range, repeated, decreasing.
  auto p = payload_of(ctx, "topk:0.25", n);
  PayloadHeader h = header_of(p);
  ASSERT_EQ(h.k, 16u);
  auto bad = p;
  put_u32(body_of(bad) + 4 * 15, static_cast<uint32_t>(n));
  expect_rejected(ctx, bad, n, Code::kCorrupt, "topk index == n");
  bad = p;
  put_u32(body_of(bad) + 4 * 15, UINT32_MAX);
  expect_rejected(ctx, bad, n, Code::kCorrupt, "topk index max");
  bad = p;
  std::memcpy(body_of(bad) + 4 * 5, body_of(bad) + 4 * 4, 4);
  expect_rejected(ctx, bad, n, Code::kCorrupt, "topk index repeated");
  bad = p;
  uint32_t a, b;
  std::memcpy(&a, body_of(bad) + 4 * 2, 4);
  std::memcpy(&b, body_of(bad) + 4 * 3, 4);
  put_u32(body_of(bad) + 4 * 2, b);
  put_u32(body_of(bad) + 4 * 3, a);
  expect_rejected(ctx, bad, n, Code::kCorrupt, "topk indices swapped");
}

TEST(BadPayload, ZstdGarbageAndWrongSizedFrames) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 1000;
  auto p = payload_of(ctx, "fp32", n);
  PayloadHeader h = header_of(p);
  const size_t raw = h.body_bytes;
  std::mt19937 g(5);
  // Random bytes behind the zstd flag.
  for (size_t len : {size_t(1), size_t(9), size_t(300)}) {
    PayloadHeader z = h;
    z.flags = kPayloadFlagZstd;
    z.body_bytes = len;
    std::vector<uint8_t> q(kPayloadHeaderBytes + len);
    for (size_t i = kPayloadHeaderBytes; i < q.size(); ++i) q[i] = static_cast<uint8_t>(g());
    expect_rejected(ctx, with_header(q, z), n, Code::kCorrupt, "zstd garbage");
  }
  // Valid frames of the wrong size: one byte short, and one far larger than the header allows.
  for (size_t content : {raw - 1, raw + 1, raw * 64}) {
    std::vector<uint8_t> src(content, 0);
    std::vector<uint8_t> frame(ZSTD_compressBound(content));
    size_t c = ZSTD_compress(frame.data(), frame.size(), src.data(), content, 1);
    ASSERT_FALSE(ZSTD_isError(c));
    PayloadHeader z = h;
    z.flags = kPayloadFlagZstd;
    z.body_bytes = c;
    std::vector<uint8_t> q(kPayloadHeaderBytes + c);
    std::memcpy(q.data() + kPayloadHeaderBytes, frame.data(), c);
    expect_rejected(ctx, with_header(q, z), n, Code::kCorrupt,
                    "zstd frame of " + std::to_string(content) + " bytes");
  }
  // A zstd body that claims more bytes than any frame of the raw size could take.
  PayloadHeader z = h;
  z.flags = kPayloadFlagZstd;
  z.body_bytes = ZSTD_compressBound(raw) + 1;
  std::vector<uint8_t> q(kPayloadHeaderBytes + z.body_bytes, 0);
  expect_rejected(ctx, with_header(q, z), n, Code::kCorrupt, "zstd body over the bound");
  // A valid zstd frame whose content has a NaN is still rejected after decompression.
  std::vector<float> vals(n, 1.f);
  vals[500] = std::nanf("");
  std::vector<uint8_t> frame(ZSTD_compressBound(raw));
  size_t c = ZSTD_compress(frame.data(), frame.size(), vals.data(), raw, 1);
  z.body_bytes = c;
  q.assign(kPayloadHeaderBytes + c, 0);
  std::memcpy(q.data() + kPayloadHeaderBytes, frame.data(), c);
  expect_rejected(ctx, with_header(q, z), n, Code::kNonFinite, "zstd frame with nan");
}

TEST(BadPayload, RandomByteFlipsNeverCrash) {
  auto dev = cpu();
  CodecContext ctx(*dev);
  const size_t n = 50;
  std::mt19937 g(11);
  int rejected = 0, total = 0;
  for (const char* s : kSpecs) {
    for (const char* stage : {"", "+zstd"}) {
      auto p = payload_of(ctx, std::string(s) + stage, n);
      for (int t = 0; t < 300; ++t) {
        auto q = p;
        int flips = 1 + static_cast<int>(g() % 4);
        for (int f = 0; f < flips; ++f) q[g() % q.size()] ^= static_cast<uint8_t>(1 + g() % 255);
        std::vector<float> x(n, 1.f);
        Status st = ctx.decode_merge(q, x.data(), n, 0.5f);
        ++total;
        if (!st.is_ok()) {
          ++rejected;
          for (float v : x) ASSERT_EQ(v, 1.f);
        } else {
          for (float v : x) ASSERT_TRUE(std::isfinite(v)) << "accepted payload gave non-finite";
        }
      }
    }
  }
  EXPECT_GT(rejected, total / 10);
}

TEST(BadArguments, DeviceLevelCalls) {
  auto dev = cpu();
  const size_t n = 100;
  auto x = randv(n, 3);
  auto h = *make_header(*parse_codec("int8:block=16"), n);
  std::vector<uint8_t> body(h.body_bytes + 8);
  // Capacity below the raw size.
  EXPECT_EQ(encode_body(*dev, h, x.data(), nullptr, body.data(), h.body_bytes - 1).code(),
            Code::kOutOfRange);
  EXPECT_EQ(encode_body(*dev, h, nullptr, nullptr, body.data(), body.size()).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(encode_body(*dev, h, x.data(), nullptr, nullptr, body.size()).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(encode_body(*dev, h, x.data(), nullptr, body.data() + 1, body.size() - 1).code(),
            Code::kInvalidArgument);  // misaligned
  EXPECT_EQ(encode_body(*dev, h, x.data(), x.data(), body.data(), body.size()).code(),
            Code::kInvalidArgument);  // residual is x
  PayloadHeader hz = h;
  hz.flags = kPayloadFlagZstd;
  EXPECT_EQ(encode_body(*dev, hz, x.data(), nullptr, body.data(), body.size()).code(),
            Code::kInvalidArgument);
  ASSERT_TRUE(encode_body(*dev, h, x.data(), nullptr, body.data(), body.size()).is_ok());
  const size_t raw = h.body_bytes;
  auto y = x;
  EXPECT_EQ(decode_body(*dev, h, body.data(), raw - 1, y.data()).code(), Code::kCorrupt);
  EXPECT_EQ(decode_body(*dev, h, body.data(), raw + 1, y.data()).code(), Code::kCorrupt);
  EXPECT_EQ(decode_body(*dev, h, nullptr, raw, y.data()).code(), Code::kInvalidArgument);
  EXPECT_EQ(decode_body(*dev, h, body.data(), raw, nullptr).code(), Code::kInvalidArgument);
  EXPECT_EQ(decode_merge_body(*dev, h, body.data(), raw, y.data(), std::nanf("")).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(decode_merge_body(*dev, h, body.data(), raw, y.data(), INFINITY).code(),
            Code::kInvalidArgument);
  EXPECT_EQ(decode_body(*dev, hz, body.data(), raw, y.data()).code(), Code::kInvalidArgument);
  EXPECT_EQ(validate_body(*dev, h, body.data(), raw - 4).code(), Code::kCorrupt);
  EXPECT_TRUE(validate_body(*dev, h, body.data(), raw).is_ok());
  EXPECT_EQ(std::memcmp(x.data(), y.data(), n * 4), 0);
  // Out overlapping the body.
  EXPECT_EQ(decode_body(*dev, h, body.data(), raw, reinterpret_cast<float*>(body.data())).code(),
            Code::kInvalidArgument);
  // Context-level: null output, null payload vector, NaN weight.
  CodecContext ctx(*dev);
  std::vector<uint8_t> p;
  EXPECT_EQ(ctx.encode(*parse_codec("fp16"), x.data(), n, nullptr, 0, nullptr).status().code(),
            Code::kInvalidArgument);
  ASSERT_TRUE(ctx.encode(*parse_codec("fp16"), x.data(), n, nullptr, 0, &p).is_ok());
  EXPECT_EQ(ctx.decode(p, nullptr, n).code(), Code::kInvalidArgument);
  EXPECT_EQ(ctx.decode_merge(p, y.data(), n, std::nanf("")).code(), Code::kInvalidArgument);
  EXPECT_EQ(ctx.decode(std::span<const uint8_t>(), y.data(), n).code(), Code::kCorrupt);
  EXPECT_EQ(std::memcmp(x.data(), y.data(), n * 4), 0);
}

}  // namespace
}  // namespace mycel
