// Wire format v1: a fixed 64-byte little-endian header, then the payload (the codecs' bytes).
// See docs/wire-format.md for the layout, the checks and the fate of each malformed frame.
//
//   off size field              off size field
//    0   4   magic "MYCL"         40   8  parameter count
//    4   2   format version (1)   48   8  payload length (bytes after the header)
//    6   1   message type         56   4  CRC32C of header (this field zero) + payload
//    7   1   flags                60   1  codec id
//    8   8   sender id            61   3  reserved, zero
//   16   8   sequence number
//   24   8   model age
//   32   8   model version
//
// decode_frame checks every field against FrameLimits before anything is allocated, copied or
// checksummed, and returns a view into the caller's bytes: no copy of the payload.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mycel::transport {

constexpr size_t kFrameHeaderBytes = 64;
constexpr std::array<uint8_t, 4> kFrameMagic = {'M', 'Y', 'C', 'L'};
constexpr uint16_t kFrameVersion = 1;

// Message types. 0 is never valid (a zeroed buffer is not a frame); values up to 63 are kept
// for the protocol core, 64..255 for experiments; an unknown value is an error in v1.
enum class MessageType : uint8_t {
  kModel = 1,         // a model (or delta, see kFlagDelta) encoded by a codec
  kModelRequest = 2,  // pull: asks the receiver for its model
  kView = 3,          // membership / peer-sampling view exchange
  kPing = 4,
  kPong = 5,
  kControl = 6,       // control plane (metrics, stop, reconfigure)
  kFedAvgRound = 7,   // FedAvg baseline: server announces a round / client returns its update
};
constexpr uint8_t kMaxMessageType = 7;
std::string_view message_type_name(MessageType t);

// Flags: bits not listed here must be zero in v1.
constexpr uint8_t kFlagDelta = 1u << 0;       // payload is a difference from model_version
constexpr uint8_t kFlagReply = 1u << 1;  // an answer to a request (pull reply, pong)
constexpr uint8_t kKnownFlags = kFlagDelta | kFlagReply;

// Codec ids as kernels/codec.h's mycel::CodecId (fp32 0, fp16 1, bf16 2, int8 3, int4 4,
// topk 5, randk 6). Transport does not link kernels, so it keeps the count; a test
// static_asserts that the two agree. Frames that carry no model use 0.
constexpr uint8_t kCodecIdCount = 7;

struct FrameHeader {
  MessageType type = MessageType::kModel;
  uint8_t flags = 0;
  uint64_t sender_id = 0;
  uint64_t seq = 0;
  uint64_t model_age = 0;
  uint64_t model_version = 0;
  uint8_t codec = 0;
  uint64_t param_count = 0;
  uint64_t payload_bytes = 0;  // filled by encode/seal from the payload
  uint32_t crc = 0;            // filled by encode/seal; checked by decode
};

// A decoded frame: the header and a view of the payload inside the caller's buffer.
struct FrameView {
  FrameHeader header;
  std::span<const uint8_t> payload;
};

// Limits the receiver enforces before it touches the payload.
struct FrameLimits {
  uint64_t max_payload_bytes = uint64_t(1) << 30;  // 1 GiB (a 256M-parameter fp32 model)
  uint64_t max_params = uint64_t(1) << 32;
};

// One code per malformed-frame class, in the order decode checks them.
enum class FrameError : uint8_t {
  kOk = 0,
  kShortHeader,         // fewer bytes than the 64-byte header
  kBadMagic,            // not "MYCL": not a mycel peer
  kUnsupportedVersion,  // a format version this build does not speak
  kUnknownType,         // message type not in MessageType
  kUnknownFlags,        // a flag bit v1 does not define
  kUnknownCodec,        // codec id >= kCodecIdCount
  kReservedNonzero,     // reserved header bytes not zero
  kTooManyParams,       // parameter count above FrameLimits::max_params
  kPayloadTooLarge,     // payload length above FrameLimits::max_payload_bytes
  kLengthMismatch,      // header + payload length != bytes received
  kChecksum,            // CRC32C disagrees
};
constexpr size_t kFrameErrorCount = 12;
std::string_view frame_error_name(FrameError e);

// What a receiver does with a frame that failed: drop it and keep the connection, or close
// the endpoint because the peer does not speak this protocol (bad magic, unsupported version).
enum class FrameFate : uint8_t { kAccept, kDrop, kClose };
FrameFate frame_fate(FrameError e);

// The Status for a FrameError (kCorrupt, kOutOfRange or kUnimplemented) with its name.
Status frame_status(FrameError e, std::string_view detail = {});

// ---- encoding ----

// A buffer of kFrameHeaderBytes + payload_bytes, so that a codec can write the payload in
// place at data() + kFrameHeaderBytes and seal_frame fills the header: no payload copy.
std::vector<uint8_t> make_frame_buffer(size_t payload_bytes);

// Writes h into frame[0, 64) with payload_bytes = frame.size() - 64 and the CRC32C over
// header and payload. Errors: unknown type, flags or codec (a sender never emits a frame its
// peers would reject), frame shorter than a header.
Status seal_frame(const FrameHeader& h, std::span<uint8_t> frame);

// make_frame_buffer + copy of payload + seal_frame.
Result<std::vector<uint8_t>> encode_frame(const FrameHeader& h,
                                          std::span<const uint8_t> payload);

// ---- decoding ----

// Pure check of one frame: every header field, then the length, then the checksum. On kOk,
// *out (when given) holds the header and a view of the payload inside `bytes`.
FrameError decode_frame(std::span<const uint8_t> bytes, const FrameLimits& limits,
                        FrameView* out);

// The sender id field of a frame's header (0 when bytes is shorter than a header): for a
// receiver that already decoded the frame and kept only its bytes.
uint64_t frame_sender_id(std::span<const uint8_t> bytes);

// Counters of decoded frames, one per FrameError (kOk counts good frames).
struct FrameStats {
  std::array<std::atomic<uint64_t>, kFrameErrorCount> counts{};
  uint64_t count(FrameError e) const {
    return counts[static_cast<size_t>(e)].load(std::memory_order_relaxed);
  }
  uint64_t errors() const;  // all but kOk
};

// decode_frame with counting and rate-limited logging: each (peer, error) is logged the first
// time it happens, then at most once per log_interval with the number suppressed meanwhile.
// Thread-safe.
class FrameDecoder {
 public:
  explicit FrameDecoder(FrameLimits limits = {},
                        std::chrono::steady_clock::duration log_interval = std::chrono::seconds(10));

  // Returns the view, or the frame's Status; *error (when given) gets the class either way.
  Result<FrameView> decode(std::string_view from, std::span<const uint8_t> bytes,
                           FrameError* error = nullptr);

  const FrameStats& stats() const { return stats_; }
  const FrameLimits& limits() const { return limits_; }

 private:
  void log_error(std::string_view from, FrameError e);

  FrameLimits limits_;
  std::chrono::steady_clock::duration log_interval_;
  FrameStats stats_;
  struct LogState {
    std::chrono::steady_clock::time_point last;
    uint64_t suppressed = 0;
  };
  std::mutex mu_;
  std::map<std::pair<std::string, FrameError>, LogState> log_state_;
};

}  // namespace mycel::transport
