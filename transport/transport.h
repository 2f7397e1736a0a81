// One non-blocking Transport interface (UCX's uct_iface_ops_t / NCCL's ncclNet habit): every
// call returns at once with ok, no resource (back-pressure), or an error; completions and
// arrivals come back as events from poll(), which drives progress and can wait without
// spinning (the runtime's event loop hands each event to its handler).
// Implementations: inproc (same process, zero-copy; tests and the simulator) and ucx (UCP).
// A transport carries frames as opaque bytes; transport/frame.h gives them meaning.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "transport/memory.h"

namespace mycel::transport {

// Peers are named by address strings: "ucx://host:port", "inproc://name".
using Address = std::string;

// A received frame, owned by the receiver (zero-copy for inproc: the sender's buffer moves).
struct Frame {
  Address from;
  std::vector<uint8_t> bytes;
};

enum class EventKind : uint8_t {
  kFrame,         // a frame arrived (frame is set)
  kSendComplete,  // a send finished; its bytes left the in-flight budget (token is set)
  kSendFailed,    // a send failed (peer gone, timeout); status is set
  kPeerUp,        // a connection to or from peer is established
  kPeerDown,      // a connection closed or failed; status says why
  kError,         // a local error not tied to one send (status)
};

struct Event {
  EventKind kind;
  Address peer;
  uint64_t token = 0;  // the send's token for kSendComplete / kSendFailed
  Status status;
  Frame frame;         // kFrame only
};

struct Options {
  size_t max_inflight_bytes = size_t(512) << 20;  // per peer; beyond it send() -> kNoResource
  size_t max_frame_bytes = size_t(1) << 30;       // larger incoming frames are refused
  double send_timeout_s = 30.0;                    // a send not completed by then fails
  double connect_timeout_s = 5.0;
  double reconnect_backoff_min_s = 0.1;            // exponential backoff with jitter
  double reconnect_backoff_max_s = 10.0;
  // Device memory (send_region from a kCuda region) where the network cannot read it: how to
  // copy it out (null: such sends are refused with kUnavailable), and the most page-locked
  // host memory the transport keeps for staging (one larger frame may go when none is in use).
  std::shared_ptr<const DeviceMemoryOps> device_ops;
  size_t max_staging_bytes = size_t(256) << 20;
};

// Per-peer statistics, read by the scheduler and metrics.
struct PeerStats {
  Address peer;
  uint64_t bytes_sent = 0, bytes_received = 0;
  uint64_t frames_sent = 0, frames_received = 0;
  uint64_t send_failures = 0, timeouts = 0, reconnects = 0, rejected_frames = 0;
  size_t inflight_bytes = 0;
  double bandwidth_Bps = 0;  // estimate from completed sends (EWMA), 0 before any
  double rtt_s = 0;          // estimate (EWMA), 0 before any
  bool connected = false;
};

class Transport {
 public:
  virtual ~Transport() = default;

  // The address other peers reach this one at (after listen).
  virtual Address local_address() const = 0;

  // Sends bytes to peer (connecting on first use). Returns at once: ok (queued; a
  // kSendComplete or kSendFailed event with *token follows), kNoResource when the peer's
  // in-flight budget would be exceeded (nothing queued), or an error. The transport keeps the
  // bytes alive until completion.
  virtual Status send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token) = 0;

  // Drives progress and returns the events ready, at most max. With timeout_s > 0, waits up to
  // that long for at least one event without busy polling (an idle peer uses no CPU).
  virtual std::vector<Event> poll(double timeout_s = 0, size_t max = 1024) = 0;

  // Closes the connection to one peer (a kPeerDown event follows) or everything.
  virtual void disconnect(const Address& peer) = 0;
  virtual void close() = 0;

  virtual std::vector<PeerStats> stats() const = 0;

  // Registered memory (transport/memory.h). register_memory makes [base, base + bytes) of
  // host or CUDA memory a region; send_region sends the frame at [offset, offset + bytes)
  // of a region as send() would (same ordering, budget, events; the events carry no bytes),
  // reading it in place: the caller keeps those bytes alive and unchanged until the send's
  // kSendComplete / kSendFailed. deregister_memory is kNoResource while sends read the region.
  // The defaults here copy the range into a vector and send() it (device memory through
  // Options::device_ops, waiting for the copy); ucx overrides them with ucp_mem_map, sends
  // from the registered memory, and stages device memory without blocking.
  virtual Result<MemoryRegion> register_memory(void* base, size_t bytes,
                                               MemoryType type = MemoryType::kHost);
  virtual Status deregister_memory(const MemoryRegion& r);
  virtual Status send_region(const Address& peer, const MemoryRegion& r, size_t offset,
                             size_t bytes, uint64_t* token);

 protected:
  // Set by implementations from Options::device_ops; used by the default send_region.
  std::shared_ptr<const DeviceMemoryOps> device_ops_;
  RegionRegistry regions_;
};

// Creates a transport listening at `listen` ("ucx://0.0.0.0:PORT", "ucx://127.0.0.1:0" for
// any free port, "inproc://NAME"). The scheme chooses the implementation; "ucx" in a build
// without UCX is a kUnavailable error.
Result<std::unique_ptr<Transport>> make_transport(std::string_view listen, const Options& opt = {});

}  // namespace mycel::transport
