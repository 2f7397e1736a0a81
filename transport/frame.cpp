#include "transport/frame.h"

#include <bit>
#include <cstring>

#include <fmt/format.h>

#include "common/log.h"
#include "transport/crc32c.h"

namespace mycel::transport {
namespace {

static_assert(std::endian::native == std::endian::little,
              "frame fields are copied as host words; a big-endian host needs byte swaps");
static_assert(kFrameErrorCount == static_cast<size_t>(FrameError::kChecksum) + 1);

// Field offsets (docs/wire-format.md).
constexpr size_t kOffMagic = 0;
constexpr size_t kOffVersion = 4;
constexpr size_t kOffType = 6;
constexpr size_t kOffFlags = 7;
constexpr size_t kOffSender = 8;
constexpr size_t kOffSeq = 16;
constexpr size_t kOffAge = 24;
constexpr size_t kOffModelVersion = 32;
constexpr size_t kOffParams = 40;
constexpr size_t kOffPayload = 48;
constexpr size_t kOffCrc = 56;
constexpr size_t kOffCodec = 60;
constexpr size_t kOffReserved = 61;
static_assert(kOffReserved + 3 == kFrameHeaderBytes);

template <typename T>
T get(const uint8_t* p, size_t off) {
  T v;
  std::memcpy(&v, p + off, sizeof(T));
  return v;
}
template <typename T>
void put(uint8_t* p, size_t off, T v) {
  std::memcpy(p + off, &v, sizeof(T));
}

uint32_t frame_crc(const uint8_t* header, std::span<const uint8_t> payload) {
  uint8_t h[kFrameHeaderBytes];
  std::memcpy(h, header, kFrameHeaderBytes);
  put<uint32_t>(h, kOffCrc, 0);
  return crc32c(payload, crc32c(h, kFrameHeaderBytes));
}

bool valid_type(uint8_t t) { return t >= 1 && t <= kMaxMessageType; }

}  // namespace

std::string_view message_type_name(MessageType t) {
  switch (t) {
    case MessageType::kModel: return "model";
    case MessageType::kModelRequest: return "model_request";
    case MessageType::kView: return "view";
    case MessageType::kPing: return "ping";
    case MessageType::kPong: return "pong";
    case MessageType::kControl: return "control";
    case MessageType::kFedAvgRound: return "fedavg_round";
  }
  return "unknown";
}

std::string_view frame_error_name(FrameError e) {
  switch (e) {
    case FrameError::kOk: return "ok";
    case FrameError::kShortHeader: return "short_header";
    case FrameError::kBadMagic: return "bad_magic";
    case FrameError::kUnsupportedVersion: return "unsupported_version";
    case FrameError::kUnknownType: return "unknown_type";
    case FrameError::kUnknownFlags: return "unknown_flags";
    case FrameError::kUnknownCodec: return "unknown_codec";
    case FrameError::kReservedNonzero: return "reserved_nonzero";
    case FrameError::kTooManyParams: return "too_many_params";
    case FrameError::kPayloadTooLarge: return "payload_too_large";
    case FrameError::kLengthMismatch: return "length_mismatch";
    case FrameError::kChecksum: return "checksum";
  }
  return "unknown";
}

FrameFate frame_fate(FrameError e) {
  switch (e) {
    case FrameError::kOk: return FrameFate::kAccept;
    // The peer does not speak this protocol (or this version of it): nothing it sends can be
    // understood, so the endpoint is closed rather than fed frame after frame.
    case FrameError::kBadMagic:
    case FrameError::kUnsupportedVersion:
      return FrameFate::kClose;
    // One bad frame from a peer that otherwise speaks v1 (corruption, a newer type, a limit):
    // dropping it costs one message; the next one may be fine.
    default: return FrameFate::kDrop;
  }
}

Status frame_status(FrameError e, std::string_view detail) {
  Code code = Code::kCorrupt;
  switch (e) {
    case FrameError::kOk: return Ok();
    case FrameError::kShortHeader:
    case FrameError::kTooManyParams:
    case FrameError::kPayloadTooLarge:
    case FrameError::kLengthMismatch:
      code = Code::kOutOfRange;
      break;
    case FrameError::kUnsupportedVersion: code = Code::kUnimplemented; break;
    default: break;
  }
  std::string msg = fmt::format("frame {}", frame_error_name(e));
  if (!detail.empty()) msg += fmt::format(": {}", detail);
  return Error(code, std::move(msg));
}

std::vector<uint8_t> make_frame_buffer(size_t payload_bytes) {
  return std::vector<uint8_t>(kFrameHeaderBytes + payload_bytes);
}

Status seal_frame(const FrameHeader& h, std::span<uint8_t> frame) {
  if (frame.size() < kFrameHeaderBytes) {
    return Error(Code::kInvalidArgument,
                 fmt::format("frame buffer of {} bytes is shorter than the {}-byte header",
                             frame.size(), kFrameHeaderBytes));
  }
  if (!valid_type(static_cast<uint8_t>(h.type))) {
    return Error(Code::kInvalidArgument,
                 fmt::format("unknown message type {}", static_cast<int>(h.type)));
  }
  if (h.flags & ~kKnownFlags) {
    return Error(Code::kInvalidArgument, fmt::format("unknown frame flags {:#x}", h.flags));
  }
  if (h.codec >= kCodecIdCount) {
    return Error(Code::kInvalidArgument, fmt::format("unknown codec id {}", h.codec));
  }
  uint8_t* p = frame.data();
  std::memcpy(p + kOffMagic, kFrameMagic.data(), 4);
  put<uint16_t>(p, kOffVersion, kFrameVersion);
  p[kOffType] = static_cast<uint8_t>(h.type);
  p[kOffFlags] = h.flags;
  put<uint64_t>(p, kOffSender, h.sender_id);
  put<uint64_t>(p, kOffSeq, h.seq);
  put<uint64_t>(p, kOffAge, h.model_age);
  put<uint64_t>(p, kOffModelVersion, h.model_version);
  put<uint64_t>(p, kOffParams, h.param_count);
  put<uint64_t>(p, kOffPayload, uint64_t(frame.size() - kFrameHeaderBytes));
  put<uint32_t>(p, kOffCrc, 0);
  p[kOffCodec] = h.codec;
  std::memset(p + kOffReserved, 0, 3);
  uint32_t crc = frame_crc(p, frame.subspan(kFrameHeaderBytes));
  put<uint32_t>(p, kOffCrc, crc);
  return Ok();
}

Result<std::vector<uint8_t>> encode_frame(const FrameHeader& h,
                                          std::span<const uint8_t> payload) {
  std::vector<uint8_t> buf = make_frame_buffer(payload.size());
  if (!payload.empty()) std::memcpy(buf.data() + kFrameHeaderBytes, payload.data(), payload.size());
  MYCEL_CHECK(seal_frame(h, buf));
  return buf;
}

uint64_t frame_sender_id(std::span<const uint8_t> bytes) {
  if (bytes.size() < kFrameHeaderBytes) return 0;
  return get<uint64_t>(bytes.data(), kOffSender);
}

FrameError decode_frame(std::span<const uint8_t> bytes, const FrameLimits& limits,
                        FrameView* out) {
  if (bytes.size() < kFrameHeaderBytes) return FrameError::kShortHeader;
  const uint8_t* p = bytes.data();
  if (std::memcmp(p + kOffMagic, kFrameMagic.data(), 4) != 0) return FrameError::kBadMagic;
  if (get<uint16_t>(p, kOffVersion) != kFrameVersion) return FrameError::kUnsupportedVersion;
  if (!valid_type(p[kOffType])) return FrameError::kUnknownType;
  if (p[kOffFlags] & ~kKnownFlags) return FrameError::kUnknownFlags;
  if (p[kOffCodec] >= kCodecIdCount) return FrameError::kUnknownCodec;
  if (p[kOffReserved] | p[kOffReserved + 1] | p[kOffReserved + 2]) {
    return FrameError::kReservedNonzero;
  }
  FrameHeader h;
  h.type = static_cast<MessageType>(p[kOffType]);
  h.flags = p[kOffFlags];
  h.sender_id = get<uint64_t>(p, kOffSender);
  h.seq = get<uint64_t>(p, kOffSeq);
  h.model_age = get<uint64_t>(p, kOffAge);
  h.model_version = get<uint64_t>(p, kOffModelVersion);
  h.codec = p[kOffCodec];
  h.param_count = get<uint64_t>(p, kOffParams);
  h.payload_bytes = get<uint64_t>(p, kOffPayload);
  h.crc = get<uint32_t>(p, kOffCrc);
  if (h.param_count > limits.max_params) return FrameError::kTooManyParams;
  if (h.payload_bytes > limits.max_payload_bytes) return FrameError::kPayloadTooLarge;
  // Compared as "bytes after the header" so that no addition can overflow.
  if (h.payload_bytes != bytes.size() - kFrameHeaderBytes) return FrameError::kLengthMismatch;
  std::span<const uint8_t> payload = bytes.subspan(kFrameHeaderBytes);
  if (frame_crc(p, payload) != h.crc) return FrameError::kChecksum;
  if (out) *out = FrameView{h, payload};
  return FrameError::kOk;
}

uint64_t FrameStats::errors() const {
  uint64_t n = 0;
  for (size_t i = 1; i < kFrameErrorCount; ++i) n += counts[i].load(std::memory_order_relaxed);
  return n;
}

FrameDecoder::FrameDecoder(FrameLimits limits, std::chrono::steady_clock::duration log_interval)
    : limits_(limits), log_interval_(log_interval) {}

Result<FrameView> FrameDecoder::decode(std::string_view from, std::span<const uint8_t> bytes,
                                       FrameError* error) {
  FrameView view;
  FrameError e = decode_frame(bytes, limits_, &view);
  stats_.counts[static_cast<size_t>(e)].fetch_add(1, std::memory_order_relaxed);
  if (error) *error = e;
  if (e == FrameError::kOk) return view;
  log_error(from, e);
  return frame_status(e, fmt::format("{} bytes from {}", bytes.size(), from));
}

void FrameDecoder::log_error(std::string_view from, FrameError e) {
  // Bounded memory whatever the number of peers: past this many (peer, error) pairs the
  // table restarts, which at worst logs a few lines more.
  constexpr size_t kMaxTracked = 4096;
  auto now = std::chrono::steady_clock::now();
  uint64_t suppressed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (log_state_.size() >= kMaxTracked) log_state_.clear();
    auto [it, fresh] = log_state_.try_emplace({std::string(from), e});
    LogState& st = it->second;
    if (!fresh && now - st.last < log_interval_) {
      ++st.suppressed;
      return;
    }
    suppressed = st.suppressed;
    st.suppressed = 0;
    st.last = now;
  }
  MYCEL_LOG_WARN("transport",
                 "rejected frame from {}: {} ({}; {} more since last report, {} of this kind in total)", from,
                 frame_error_name(e),
                 frame_fate(e) == FrameFate::kClose ? "closing endpoint" : "frame dropped",
                 suppressed, stats_.count(e));
}

}  // namespace mycel::transport
