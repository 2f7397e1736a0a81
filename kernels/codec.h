// Codecs: how a model (or a delta) is compressed for the wire, and the fused decode+merge that
// folds a received payload into the local model without an fp32 copy of it.
//
// A payload is a 40-byte little-endian PayloadHeader followed by a body. Bodies (raw, before
// the optional zstd stage), for n parameters:
//   fp32  : n float32
//   fp16  : n binary16                     bf16 : n bfloat16
//   int8  : ceil(n/block) float32 scales, then n int8 q        x ~ q * scale, |q| <= 127
//   int4  : ceil(n/block) float32 scales, then ceil(n/2) bytes (low nibble first), q in [-7, 7]
//   topk  : k uint32 indices (strictly increasing), then k float32 values
//   randk : k float32 values; the indices are the first k of a permutation of [0, n) derived
//           from header.seed (never sent)
// Sparse payloads (topk, randk) carry only the listed coordinates: decode writes those and
// leaves the others as they are; decode+merge mixes those and leaves the others.
// See docs/codecs.md for each codec's error bound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "kernels/device.h"

namespace mycel {

enum class CodecId : uint8_t {
  kFp32 = 0,
  kFp16 = 1,
  kBf16 = 2,
  kInt8 = 3,
  kInt4 = 4,
  kTopK = 5,
  kRandK = 6,
};
constexpr int kCodecCount = 7;
std::string_view codec_name(CodecId id);
bool codec_is_sparse(CodecId id);
bool codec_is_lossy(CodecId id);

// What a sender chooses. Text form (parse_codec / to_string):
//   "fp32" "fp16" "bf16" "int8" "int8:block=128" "int4:block=64" "topk:0.01" "randk:0.1",
//   any of them followed by "+zstd" or "+zstd=LEVEL".
struct CodecSpec {
  CodecId id = CodecId::kFp32;
  uint32_t block = 256;     // int8 / int4 quantisation block (1 .. 65536)
  double fraction = 0.01;   // topk / randk: k = clamp(round(fraction * n), 1, n)
  bool zstd = false;        // lossless zstd stage over the body
  int zstd_level = 1;
};
Result<CodecSpec> parse_codec(std::string_view text);
std::string to_string(const CodecSpec& spec);

constexpr uint8_t kPayloadFlagZstd = 1;
constexpr size_t kPayloadHeaderBytes = 40;

struct PayloadHeader {
  CodecId codec = CodecId::kFp32;
  uint8_t flags = 0;         // kPayloadFlagZstd
  uint16_t reserved = 0;     // must be 0
  uint32_t block = 0;        // int8/int4, else 0
  uint64_t n = 0;            // parameter count
  uint64_t k = 0;            // topk/randk entries, else 0
  uint64_t seed = 0;         // randk index seed, else 0
  uint64_t body_bytes = 0;   // bytes of body that follow (after zstd, when flagged)
};

// Header for encoding n parameters with spec; seed feeds randk (a fresh one per message).
Result<PayloadHeader> make_header(const CodecSpec& spec, size_t n, uint64_t seed = 0);
// Size of the raw (uncompressed) body the header describes; error for inconsistent fields.
Result<size_t> raw_body_bytes(const PayloadHeader& h);
// Upper bound of a whole payload (header + body, zstd included) for spec and n.
size_t max_payload_bytes(const CodecSpec& spec, size_t n);

void write_header(const PayloadHeader& h, uint8_t* out);  // kPayloadHeaderBytes bytes
// Parses and checks every field (codec known, reserved zero, block range, k <= n, n <= max_n,
// body length agrees with len) before anything is allocated.
Result<PayloadHeader> read_header(const uint8_t* p, size_t len, uint64_t max_n);

// ---- device level: bodies in device memory (host memory on the CPU device) ----

// Encodes x (n = h.n) into body (raw, h.body_bytes == raw size on return). With a residual
// (error feedback), encodes v = x + residual and sets residual = v - decode(body); the residual
// is left untouched when the call fails. Fails with kNonFinite, writing nothing, when x (or
// x + residual) holds NaN or Inf.
Status encode_body(Device& dev, PayloadHeader& h, const float* x, float* residual, uint8_t* body,
                   size_t cap, Stream* s = nullptr);
// Checks a raw body: length, scales and values finite, topk indices in range and increasing.
Status validate_body(Device& dev, const PayloadHeader& h, const uint8_t* body, size_t len,
                     Stream* s = nullptr);
// out = decode(body): dense codecs write all n entries; sparse ones only the listed entries.
// Validates first: on any error out is unchanged.
Status decode_body(Device& dev, const PayloadHeader& h, const uint8_t* body, size_t len,
                   float* out, Stream* s = nullptr);
// x = (1 - a) * x + a * decode(body), fused: reads the body and x once, writes x once.
// Validates first: on any error x is unchanged.
Status decode_merge_body(Device& dev, const PayloadHeader& h, const uint8_t* body, size_t len,
                         float* x, float a, Stream* s = nullptr);
// Receive-side bound (host memory): kOutOfRange naming the first value whose magnitude is above
// bound (NaN and Inf are above any bound); int8/int4 judge each block by scale * qmax, the
// largest value it can decode to. bound <= 0: no check. len must be the raw body size.
Status check_magnitude(const PayloadHeader& h, const uint8_t* body, size_t len, float bound);

// ---- whole payloads in host memory; x, out and residual are device buffers ----

// Scratch space for the host-level calls (staging bodies to and from a GPU, zstd contexts),
// reused across calls; one per peer and direction.
class CodecContext {
 public:
  explicit CodecContext(Device& dev);
  ~CodecContext();
  CodecContext(const CodecContext&) = delete;
  CodecContext& operator=(const CodecContext&) = delete;

  Device& device() { return dev_; }

  // Encodes into payload (header + body, zstd applied when spec.zstd). Returns the header.
  Result<PayloadHeader> encode(const CodecSpec& spec, const float* x, size_t n, float* residual,
                               uint64_t seed, std::vector<uint8_t>* payload, Stream* s = nullptr);
  // The same, written in place into out (host memory, e.g. a frame buffer after its header or a
  // registered send buffer): no intermediate copy of the body on the CPU device, one
  // device-to-host copy of the encoded body on a GPU. out.size() >= max_payload_bytes(spec, n)
  // always suffices; a smaller out that cannot hold the payload is kOutOfRange. The payload's
  // length is header.body_bytes + kPayloadHeaderBytes.
  Result<PayloadHeader> encode_into(const CodecSpec& spec, const float* x, size_t n,
                                    float* residual, uint64_t seed, std::span<uint8_t> out,
                                    Stream* s = nullptr);
  // Parses, decompresses if flagged, validates, then decodes / decode-merges. expected_n must
  // equal the header's n.
  Status decode(std::span<const uint8_t> payload, float* out, size_t expected_n, Stream* s = nullptr);
  Status decode_merge(std::span<const uint8_t> payload, float* x, size_t expected_n, float a,
                      Stream* s = nullptr);
  // A bound on the magnitude of decoded values (0: none, the default): decode and
  // decode_merge then refuse (kOutOfRange, output untouched) a payload holding a larger value,
  // checked on the host before the body reaches the device (check_magnitude).
  void set_max_abs(float bound);
  float max_abs() const;

 private:
  struct Impl;
  Device& dev_;
  Impl* impl_;
};

}  // namespace mycel
