// Wire format v1 and CRC32C: round trips, one distinct error (and counter) per malformed-frame
// class, truncation at every length, bit flips, limits, rate-limited logging.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "kernels/codec.h"  // header only: the codec ids the frame layer mirrors
#include "transport/crc32c.h"
#include "transport/frame.h"

namespace mycel::transport {
namespace {

// The transport layer keeps its own count of codec ids (it does not link kernels).
static_assert(kCodecIdCount == mycel::kCodecCount, "frame codec ids must follow kernels/codec.h");
static_assert(static_cast<uint8_t>(mycel::CodecId::kRandK) == kCodecIdCount - 1);

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = uint8_t(rng());
  return v;
}

uint32_t crc_of(std::string_view s) { return crc32c(s.data(), s.size()); }

// ---------------------------------------------------------------- CRC32C

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc_of("123456789"), 0xE3069283u);
  EXPECT_EQ(crc_of(""), 0u);
  EXPECT_EQ(crc_of("a"), 0xC1D04330u);
  // RFC 3720 (iSCSI) B.4 vectors.
  std::vector<uint8_t> zeros(32, 0), ones(32, 0xff), inc(32), dec(32);
  for (int i = 0; i < 32; ++i) {
    inc[i] = uint8_t(i);
    dec[i] = uint8_t(31 - i);
  }
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c(inc), 0x46DD794Eu);
  EXPECT_EQ(crc32c(dec), 0x113FDB5Cu);
  EXPECT_EQ(crc32c_sw("123456789", 9), 0xE3069283u);
  EXPECT_EQ(crc32c_hw("123456789", 9), 0xE3069283u);
}

TEST(Crc32c, HardwareMatchesSoftwareAtEverySizeAndAlignment) {
  if (!crc32c_hw_available()) GTEST_SKIP() << "no crc32c instructions on this CPU";
  // Sizes cover the byte, word, short-block (3 x 256) and long-block (3 x 8192) paths.
  auto buf = random_bytes(3 * 8192 * 2 + 3 * 256 + 100, 7);
  std::vector<size_t> sizes;
  for (size_t n = 0; n < 1600; ++n) sizes.push_back(n);
  for (size_t n : {size_t(3 * 8192 - 1), size_t(3 * 8192), size_t(3 * 8192 + 1),
                   size_t(3 * 8192 + 3 * 256 + 9), size_t(2 * 3 * 8192),
                   buf.size() - 8}) {
    sizes.push_back(n);
  }
  for (size_t n : sizes) {
    for (size_t off = 0; off < 8; ++off) {
      if (off + n > buf.size()) continue;
      ASSERT_EQ(crc32c_hw(buf.data() + off, n, 0x1234u), crc32c_sw(buf.data() + off, n, 0x1234u))
          << "size " << n << " offset " << off;
    }
  }
  EXPECT_NE(crc32c_impl_name(), "table");
}

// Which implementation frames are checked with: the ARMv8 CRC32 instructions on aarch64 (every
// ARMv8.1 core has them: the Jetson AGX Xavier's Carmel, Orin's Cortex-A78AE; qemu-user
// emulates them), SSE4.2 on x86_64 when the CPU has it. Printed for scripts/cross-aarch64.sh.
TEST(Crc32c, ImplementationIsArmv8OnAarch64) {
  std::printf("crc32c impl: %s\n", std::string(crc32c_impl_name()).c_str());
#if defined(__aarch64__)
  EXPECT_TRUE(crc32c_hw_available());
  EXPECT_EQ(crc32c_impl_name(), "armv8-crc");
#elif defined(__x86_64__)
  if (!crc32c_hw_available()) GTEST_SKIP() << "no SSE4.2 on this CPU: the table path is used";
  EXPECT_EQ(crc32c_impl_name(), "sse4.2");
#else
  GTEST_SKIP() << "no hardware CRC32C path for this architecture";
#endif
}

TEST(Crc32c, ExtendsAcrossSplits) {
  auto buf = random_bytes(100000, 3);
  uint32_t whole = crc32c(buf);
  EXPECT_EQ(whole, crc32c_sw(buf.data(), buf.size()));
  for (size_t cut : {size_t(0), size_t(1), size_t(63), size_t(4096), size_t(77777), buf.size()}) {
    std::span<const uint8_t> s(buf);
    EXPECT_EQ(crc32c(s.subspan(cut), crc32c(s.first(cut))), whole) << "cut " << cut;
  }
}

// Measured once for the report (speed targets belong to benchmarks, not unit tests):
//   ./test_transport --gtest_also_run_disabled_tests --gtest_filter='*Throughput*'
TEST(Crc32c, DISABLED_Throughput) {
  std::vector<uint8_t> a(size_t(256) << 20, 1), b(a.size());
  auto secs = [](auto&& f) {
    auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double best_crc = 1e9, best_sw = 1e9, best_copy = 1e9;
  uint32_t sink = 0;
  for (int rep = 0; rep < 3; ++rep) {
    best_crc = std::min(best_crc, secs([&] { sink ^= crc32c(a); }));
    best_copy = std::min(best_copy, secs([&] { std::memcpy(b.data(), a.data(), a.size()); }));
  }
  best_sw = secs([&] { sink ^= crc32c_sw(a.data(), a.size()); });
  double gb = double(a.size()) / 1e9;
  std::printf("crc32c %s: %.2f GB/s; table: %.2f GB/s; memcpy (read+write) %.2f GB/s; "
              "crc/memcpy %.2f (sink %u)\n",
              std::string(crc32c_impl_name()).c_str(), gb / best_crc, gb / best_sw,
              gb / best_copy, best_copy / best_crc, sink);
}

// ---------------------------------------------------------------- frames

FrameHeader sample_header() {
  FrameHeader h;
  h.type = MessageType::kModel;
  h.flags = kFlagDelta | kFlagReply;
  h.sender_id = 0x0102030405060708ull;
  h.seq = 0xfffffffffffffff0ull;
  h.model_age = 12345;
  h.model_version = 0x8000000000000001ull;
  h.codec = 5;
  h.param_count = 1000;
  return h;
}

std::vector<uint8_t> sample_frame(size_t payload = 300) {
  auto r = encode_frame(sample_header(), random_bytes(payload, 11));
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return std::move(r).value();
}

template <typename T>
void poke(std::vector<uint8_t>& f, size_t off, T v) {
  std::memcpy(f.data() + off, &v, sizeof(T));
}

// Recomputes the CRC after a header edit, so that a test isolates one check.
void reseal_crc(std::vector<uint8_t>& f) {
  poke<uint32_t>(f, 56, 0);
  uint32_t c = crc32c(f.data() + kFrameHeaderBytes, f.size() - kFrameHeaderBytes,
                      crc32c(f.data(), kFrameHeaderBytes));
  poke<uint32_t>(f, 56, c);
}

TEST(Frame, RoundTripsEveryField) {
  auto payload = random_bytes(1234, 5);
  for (uint8_t t = 1; t <= kMaxMessageType; ++t) {
    for (uint8_t codec = 0; codec < kCodecIdCount; ++codec) {
      FrameHeader h = sample_header();
      h.type = static_cast<MessageType>(t);
      h.codec = codec;
      h.seq = t * 100 + codec;
      auto f = encode_frame(h, payload);
      ASSERT_TRUE(f.is_ok()) << f.status().to_string();
      ASSERT_EQ(f->size(), kFrameHeaderBytes + payload.size());
      FrameView v;
      ASSERT_EQ(decode_frame(*f, {}, &v), FrameError::kOk);
      EXPECT_EQ(v.header.type, h.type);
      EXPECT_EQ(v.header.flags, h.flags);
      EXPECT_EQ(v.header.sender_id, h.sender_id);
      EXPECT_EQ(v.header.seq, h.seq);
      EXPECT_EQ(v.header.model_age, h.model_age);
      EXPECT_EQ(v.header.model_version, h.model_version);
      EXPECT_EQ(v.header.codec, h.codec);
      EXPECT_EQ(v.header.param_count, h.param_count);
      EXPECT_EQ(v.header.payload_bytes, payload.size());
      // The view points into the frame: no copy.
      EXPECT_EQ(v.payload.data(), f->data() + kFrameHeaderBytes);
      ASSERT_EQ(v.payload.size(), payload.size());
      EXPECT_EQ(0, std::memcmp(v.payload.data(), payload.data(), payload.size()));
    }
  }
}

TEST(Frame, LayoutIsLittleEndianAtDocumentedOffsets) {
  auto f = sample_frame(10);
  EXPECT_EQ(0, std::memcmp(f.data(), "MYCL", 4));
  EXPECT_EQ(f[4], 1);  // version, low byte first
  EXPECT_EQ(f[5], 0);
  EXPECT_EQ(f[6], uint8_t(MessageType::kModel));
  EXPECT_EQ(f[7], kFlagDelta | kFlagReply);
  EXPECT_EQ(f[8], 0x08);  // sender id 0x0102030405060708, little-endian
  EXPECT_EQ(f[15], 0x01);
  EXPECT_EQ(f[48], 10);   // payload length
  EXPECT_EQ(f[60], 5);    // codec
  EXPECT_EQ(f[61] | f[62] | f[63], 0);
}

TEST(Frame, EmptyPayloadAndInPlaceSealing) {
  auto empty = encode_frame(sample_header(), {});
  ASSERT_TRUE(empty.is_ok());
  FrameView v;
  ASSERT_EQ(decode_frame(*empty, {}, &v), FrameError::kOk);
  EXPECT_EQ(v.payload.size(), 0u);

  // A codec writes into the buffer after the header; seal_frame gives the same bytes as
  // encode_frame with a copied payload.
  auto payload = random_bytes(777, 9);
  auto buf = make_frame_buffer(payload.size());
  std::memcpy(buf.data() + kFrameHeaderBytes, payload.data(), payload.size());
  ASSERT_TRUE(seal_frame(sample_header(), buf).is_ok());
  auto copied = encode_frame(sample_header(), payload);
  ASSERT_TRUE(copied.is_ok());
  EXPECT_EQ(buf, *copied);
}

TEST(Frame, SealRefusesWhatPeersWouldReject) {
  std::vector<uint8_t> buf(kFrameHeaderBytes);
  FrameHeader h = sample_header();
  h.type = static_cast<MessageType>(0);
  EXPECT_EQ(seal_frame(h, buf).code(), Code::kInvalidArgument);
  h = sample_header();
  h.flags = 0x80;
  EXPECT_EQ(seal_frame(h, buf).code(), Code::kInvalidArgument);
  h = sample_header();
  h.codec = kCodecIdCount;
  EXPECT_EQ(seal_frame(h, buf).code(), Code::kInvalidArgument);
  std::vector<uint8_t> tiny(kFrameHeaderBytes - 1);
  EXPECT_EQ(seal_frame(sample_header(), tiny).code(), Code::kInvalidArgument);
}

struct Malformed {
  FrameError expected;
  std::vector<uint8_t> bytes;
};

// One frame per error class, each otherwise valid (CRC recomputed after header edits) so that
// the check under test is the only one that can fire.
std::vector<Malformed> malformed_frames(FrameLimits* limits) {
  *limits = FrameLimits{.max_payload_bytes = 1000, .max_params = 5000};
  std::vector<Malformed> m;
  auto f = sample_frame();
  m.push_back({FrameError::kShortHeader, std::vector<uint8_t>(f.begin(), f.begin() + 63)});
  auto g = f;
  g[0] = 'X';
  reseal_crc(g);
  m.push_back({FrameError::kBadMagic, g});
  g = f;
  poke<uint16_t>(g, 4, 2);
  reseal_crc(g);
  m.push_back({FrameError::kUnsupportedVersion, g});
  g = f;
  g[6] = 0;
  reseal_crc(g);
  m.push_back({FrameError::kUnknownType, g});
  g = f;
  g[7] = 0x80;
  reseal_crc(g);
  m.push_back({FrameError::kUnknownFlags, g});
  g = f;
  g[60] = kCodecIdCount;
  reseal_crc(g);
  m.push_back({FrameError::kUnknownCodec, g});
  g = f;
  g[62] = 1;
  reseal_crc(g);
  m.push_back({FrameError::kReservedNonzero, g});
  g = f;
  poke<uint64_t>(g, 40, 5001);
  reseal_crc(g);
  m.push_back({FrameError::kTooManyParams, g});
  auto big = sample_frame(1001);
  m.push_back({FrameError::kPayloadTooLarge, big});
  g = f;
  g.push_back(0);
  m.push_back({FrameError::kLengthMismatch, g});
  g = f;
  g[kFrameHeaderBytes + 17] ^= 0x10;
  m.push_back({FrameError::kChecksum, g});
  return m;
}

TEST(Frame, EveryMalformedClassHasItsOwnErrorAndCounter) {
  FrameLimits limits;
  auto cases = malformed_frames(&limits);
  ASSERT_EQ(cases.size(), kFrameErrorCount - 1);  // every class but kOk is covered
  FrameDecoder dec(limits);
  std::vector<std::string> messages;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    EXPECT_EQ(decode_frame(c.bytes, limits, nullptr), c.expected)
        << "case " << frame_error_name(c.expected);
    FrameError e = FrameError::kOk;
    auto r = dec.decode("inproc://x", c.bytes, &e);
    ASSERT_FALSE(r.is_ok());
    EXPECT_EQ(e, c.expected);
    EXPECT_NE(r.status().message().find(frame_error_name(c.expected)), std::string::npos)
        << r.status().message();
    messages.push_back(r.status().message());
    // Its own counter moved, and only it.
    for (size_t k = 0; k < kFrameErrorCount; ++k) {
      auto ek = static_cast<FrameError>(k);
      bool seen = false;
      for (size_t j = 0; j <= i; ++j) seen |= cases[j].expected == ek;
      EXPECT_EQ(dec.stats().count(ek), seen ? 1u : 0u) << frame_error_name(ek);
    }
  }
  EXPECT_EQ(dec.stats().errors(), cases.size());
  EXPECT_EQ(dec.stats().count(FrameError::kOk), 0u);
  ASSERT_TRUE(dec.decode("inproc://x", sample_frame()).is_ok());
  EXPECT_EQ(dec.stats().count(FrameError::kOk), 1u);
  // The names are distinct, so logs and metrics tell the classes apart.
  for (size_t a = 0; a < kFrameErrorCount; ++a) {
    for (size_t b = a + 1; b < kFrameErrorCount; ++b) {
      EXPECT_NE(frame_error_name(FrameError(a)), frame_error_name(FrameError(b)));
    }
  }
}

TEST(Frame, FatesAreDefined) {
  EXPECT_EQ(frame_fate(FrameError::kOk), FrameFate::kAccept);
  EXPECT_EQ(frame_fate(FrameError::kBadMagic), FrameFate::kClose);
  EXPECT_EQ(frame_fate(FrameError::kUnsupportedVersion), FrameFate::kClose);
  EXPECT_EQ(frame_fate(FrameError::kChecksum), FrameFate::kDrop);
  EXPECT_EQ(frame_fate(FrameError::kLengthMismatch), FrameFate::kDrop);
  EXPECT_EQ(frame_fate(FrameError::kPayloadTooLarge), FrameFate::kDrop);
  EXPECT_EQ(frame_status(FrameError::kChecksum).code(), Code::kCorrupt);
  EXPECT_EQ(frame_status(FrameError::kPayloadTooLarge).code(), Code::kOutOfRange);
  EXPECT_EQ(frame_status(FrameError::kUnsupportedVersion).code(), Code::kUnimplemented);
  EXPECT_TRUE(frame_status(FrameError::kOk).is_ok());
}

TEST(Frame, FlippedPayloadOrCoveredHeaderBitIsAChecksumError) {
  auto f = sample_frame(40);
  // Every bit of the payload, and every bit of the header fields no earlier check reads
  // (sender, seq, age, version, the CRC itself): CRC32C catches all single-bit errors.
  std::vector<size_t> bytes;
  for (size_t i = 8; i < 40; ++i) bytes.push_back(i);
  for (size_t i = 56; i < 60; ++i) bytes.push_back(i);
  for (size_t i = kFrameHeaderBytes; i < f.size(); ++i) bytes.push_back(i);
  for (size_t i : bytes) {
    for (int bit = 0; bit < 8; ++bit) {
      auto g = f;
      g[i] ^= uint8_t(1u << bit);
      ASSERT_EQ(decode_frame(g, {}, nullptr), FrameError::kChecksum) << "byte " << i;
    }
  }
}

TEST(Frame, TruncatedAtEveryLengthIsRejected) {
  auto f = sample_frame(200);
  for (size_t n = 0; n < f.size(); ++n) {
    std::span<const uint8_t> cut(f.data(), n);
    FrameError e = decode_frame(cut, {}, nullptr);
    ASSERT_EQ(e, n < kFrameHeaderBytes ? FrameError::kShortHeader : FrameError::kLengthMismatch)
        << "length " << n;
  }
  EXPECT_EQ(decode_frame(f, {}, nullptr), FrameError::kOk);
}

TEST(Frame, OversizedCountsAreRejectedBeforeAnythingElse) {
  // Lengths and counts near 2^64: checked against the limits without arithmetic overflow.
  auto f = sample_frame(16);
  auto g = f;
  poke<uint64_t>(g, 40, ~uint64_t(0));
  reseal_crc(g);
  EXPECT_EQ(decode_frame(g, {}, nullptr), FrameError::kTooManyParams);
  g = f;
  poke<uint64_t>(g, 48, ~uint64_t(0));
  reseal_crc(g);
  EXPECT_EQ(decode_frame(g, {}, nullptr), FrameError::kPayloadTooLarge);
  FrameLimits open{.max_payload_bytes = ~uint64_t(0), .max_params = ~uint64_t(0)};
  EXPECT_EQ(decode_frame(g, open, nullptr), FrameError::kLengthMismatch);
  poke<uint64_t>(g, 48, ~uint64_t(0) - kFrameHeaderBytes + 17);  // wraps if added to 64
  reseal_crc(g);
  EXPECT_EQ(decode_frame(g, open, nullptr), FrameError::kLengthMismatch);
  // Exactly at the limits is fine.
  FrameLimits tight{.max_payload_bytes = 16, .max_params = 1000};
  EXPECT_EQ(decode_frame(f, tight, nullptr), FrameError::kOk);
  tight.max_payload_bytes = 15;
  EXPECT_EQ(decode_frame(f, tight, nullptr), FrameError::kPayloadTooLarge);
  tight = {.max_payload_bytes = 16, .max_params = 999};
  EXPECT_EQ(decode_frame(f, tight, nullptr), FrameError::kTooManyParams);
}

TEST(Frame, RandomGarbageNeverDecodes) {
  std::mt19937 rng(1);
  for (int i = 0; i < 2000; ++i) {
    auto g = random_bytes(rng() % 200, rng());
    if (i % 2 && g.size() >= 4) std::memcpy(g.data(), "MYCL", 4);
    EXPECT_NE(decode_frame(g, {}, nullptr), FrameError::kOk);
  }
}

TEST(Frame, ErrorsAreLoggedOncePerSenderAndKindWithRateLimit) {
  log::Capture cap;
  FrameDecoder dec({}, std::chrono::milliseconds(500));
  auto bad = sample_frame();
  bad.back() ^= 1;
  for (int i = 0; i < 50; ++i) ASSERT_FALSE(dec.decode("inproc://a", bad).is_ok());
  for (int i = 0; i < 50; ++i) ASSERT_FALSE(dec.decode("inproc://b", bad).is_ok());
  std::vector<uint8_t> junk(100, 0);
  ASSERT_FALSE(dec.decode("inproc://a", junk).is_ok());  // another kind from a: logged
  auto count = [&](std::string_view needle) {
    int n = 0;
    for (const auto& l : cap.lines()) n += l.find("rejected frame") != std::string::npos &&
                                           l.find(needle) != std::string::npos;
    return n;
  };
  EXPECT_EQ(count("inproc://a: checksum"), 1);
  EXPECT_EQ(count("inproc://b: checksum"), 1);
  EXPECT_EQ(count("inproc://a: bad_magic"), 1);
  EXPECT_EQ(dec.stats().count(FrameError::kChecksum), 100u);
  std::this_thread::sleep_for(std::chrono::milliseconds(550));
  ASSERT_FALSE(dec.decode("inproc://a", bad).is_ok());
  EXPECT_EQ(count("inproc://a: checksum"), 2);
  EXPECT_EQ(count("49 more since last report"), 1);
}

}  // namespace
}  // namespace mycel::transport
