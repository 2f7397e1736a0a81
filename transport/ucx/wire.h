// The UCX transport's messages on the wire (inside UCP active messages; see docs/transport.md).
//
// Wire protocol (AM id kAmId, version 2): every message carries a 32-byte WireHeader as the AM
// header and the frame bytes as the AM payload. Endpoints are created from worker addresses
// exchanged by the authenticated bootstrap (bootstrap.h); each side of a connection has its
// own endpoint to the other. `tag` is the receiver's session tag from that handshake: it names
// the connection (and so the authenticated peer) a message belongs to; a message whose tag is
// unknown is dropped and counted, whatever it claims.
//   kHello (seq 0)  first message each side sends on its endpoint (no payload): its completion
//                   says the endpoint works (kPeerUp).
//   kData  (seq 1..) one frame; the receiver delivers frames in seq order per endpoint, so a
//                   rendezvous transfer that completes before an earlier eager one cannot
//                   overtake it.
//   kPing / kPong   a round trip answered from the peer's event loop; the RTT estimate.
//   kBye            sent by disconnect()/close() before the endpoint is closed, so that the
//                   peer sees kPeerDown at once (a closed endpoint alone is not noticed by a
//                   live peer until it sends).
// Large payloads go by UCP's rendezvous protocol (zero-copy where the transport allows, with
// UCP's memory registration cache); the receiver sizes its buffer from the AM length and
// refuses (drops and counts) frames above Options::max_frame_bytes before any allocation.
//   kSkip           the frame with this seq will not come (its device-to-host staging copy
//                   failed); the receiver moves past it rather than wait.
#pragma once

#include <cstdint>

namespace mycel::transport::ucx {

constexpr unsigned kAmId = 0x4d;             // our one active-message handler
constexpr uint32_t kWireMagic = 0x4d594358;  // "MYCX"
constexpr uint8_t kWireVersion = 2;  // 1: sockaddr endpoints, no tag

enum class MsgType : uint8_t { kHello = 1, kData = 2, kPing = 3, kPong = 4, kBye = 5, kSkip = 6 };

struct WireHeader {
  uint32_t magic = kWireMagic;
  uint8_t version = kWireVersion;
  uint8_t type = 0;
  uint16_t reserved = 0;
  uint64_t seq = 0;
  uint64_t stamp = 0;  // kPing/kPong: the pinger's clock in ns, echoed back
  uint64_t tag = 0;    // the receiver's session tag (bootstrap.h)
};
static_assert(sizeof(WireHeader) == 32);

}  // namespace mycel::transport::ucx
