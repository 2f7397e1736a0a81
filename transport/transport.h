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
  // kSendComplete / kSendFailed: the traffic class the send was given and its size in bytes,
  // so that a caller can count its own classes of bytes where the transport counts all of
  // them (PeerStats::bytes_sent counts at kSendComplete).
  uint8_t tclass = 0;
  size_t bytes = 0;
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
  // Send buffers (acquire_send_buffer): the most bytes of them acquired or in flight at once
  // (one larger buffer may go when none is in use); beyond it acquire_send_buffer is
  // kNoResource. The memory is allocated on first use and kept for reuse.
  size_t max_send_buffer_bytes = size_t(256) << 20;
  // Received frames handed back by recycle(): up to this many bytes of them are kept and
  // reused for incoming frames (ucx) or send buffers (inproc).
  size_t recv_pool_bytes = size_t(256) << 20;

  // Trust (ucx; docs/security.md). The listen port is mycel's bootstrap listener: an
  // authenticated handshake (swarm key) comes before anything reaches UCX.
  // key_file: swarm keys ("ID HEX64" lines, mode 0600; write_key_file makes one). Empty: the
  // unauthenticated well-known key (a warning is logged: anyone who can reach the port joins).
  std::string key_file;
  double handshake_timeout_s = 5.0;       // a handshake not finished by then is dropped
  size_t max_pending_handshakes = 64;     // incoming handshakes in progress, in total
  size_t max_handshakes_per_source = 32;  // ... from one source IP
  size_t max_connections = 1024;          // live connections + pending handshakes
  bool check_source_host = false;         // a numeric claimed host must be the source IP
  // Messages held out of order on one connection (waiting for an earlier sequence number):
  // beyond either bound the connection is closed and PeerStats::reorder_overflows counted.
  size_t max_reorder_frames = 4096;
  size_t max_reorder_bytes = size_t(1) << 30;
  double log_interval_s = 1.0;            // per-cause warnings: at most 5 lines per interval
};

// Per-peer statistics, read by the scheduler and metrics. Bytes and frames sent are counted
// when a send completes (kSendComplete); failed sends are not counted as sent.
struct PeerStats {
  Address peer;
  uint64_t bytes_sent = 0, bytes_received = 0;
  uint64_t frames_sent = 0, frames_received = 0;
  uint64_t send_failures = 0, timeouts = 0, reconnects = 0, rejected_frames = 0;
  // ucx: connections from this peer closed because too many messages (or bytes) waited for an
  // earlier sequence number (Options::max_reorder_frames / max_reorder_bytes).
  uint64_t reorder_overflows = 0;
  size_t inflight_bytes = 0;   // sent and not yet completed
  // The link estimate (transport/link_estimator.h, same meaning on every transport):
  // bandwidth_Bps: bytes over busy time of completed sends, in windows, EWMA; 0 before any.
  // rtt_s: round trip (ucx: ping/pong between the two event loops; inproc, which has no
  // wire: the delivery latency, from the link starting on a frame to the receiver taking it),
  // EWMA; 0 before any.
  double bandwidth_Bps = 0;
  double rtt_s = 0;
  // Seconds since each estimate was last updated; -1 while it never has been.
  double bandwidth_age_s = -1;
  double rtt_age_s = -1;
  // Back-pressure: how long the oldest send still in flight to this peer has waited (0 when
  // none is in flight; ucx counts an eager frame until the peer confirms it, see
  // docs/transport.md).
  double oldest_send_wait_s = 0;
  bool connected = false;
};

class Transport;

// A buffer from a transport's pool of send buffers (acquire_send_buffer): memory the transport
// can send from without a copy (on ucx, registered with ucp_mem_map). Fill data()[0, used)
// and hand it to send_buffer(); it returns to the pool when that send completes or fails. A
// buffer dropped unsent returns to the pool at once. Move-only; it must not outlive its
// transport.
class SendBuffer {
 public:
  SendBuffer() = default;
  SendBuffer(SendBuffer&& o) noexcept { *this = std::move(o); }
  SendBuffer& operator=(SendBuffer&& o) noexcept;
  SendBuffer(const SendBuffer&) = delete;
  SendBuffer& operator=(const SendBuffer&) = delete;
  ~SendBuffer() { reset(); }

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }  // at least the bytes asked for
  std::span<uint8_t> span() const { return {data_, size_}; }
  explicit operator bool() const { return owner_ != nullptr; }
  // Gives the buffer back to its pool unsent.
  void reset();

 private:
  friend class Transport;
  Transport* owner_ = nullptr;
  uint64_t id_ = 0;  // the transport's handle
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::vector<uint8_t> vec_;  // where the transport's buffers are vectors (inproc)
};

class Transport {
 public:
  virtual ~Transport() = default;
  friend class SendBuffer;  // an unsent buffer returns itself (release_send_buffer)

  // The address other peers reach this one at (after listen).
  virtual Address local_address() const = 0;

  // Sends bytes to peer (connecting on first use). Returns at once: ok (queued; a
  // kSendComplete or kSendFailed event with *token follows), kNoResource when the peer's
  // in-flight budget would be exceeded (nothing queued), or an error. The transport keeps the
  // bytes alive until completion.
  // tclass: a small traffic-class tag of the caller's (0 by default), returned in the send's
  // kSendComplete / kSendFailed event.
  virtual Status send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token,
                      uint8_t tclass = 0) = 0;

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
                             size_t bytes, uint64_t* token, uint8_t tclass = 0);

  // Send buffers, for senders that build large frames at a high rate (a model's encoder):
  // acquire_send_buffer gives a buffer of at least `bytes` from a bounded pool (kNoResource
  // when Options::max_send_buffer_bytes are acquired or in flight); send_buffer sends its
  // first `used` bytes as send() would (ordering, budget, events) with no copy, and the
  // buffer returns to the pool at the send's kSendComplete / kSendFailed. send_buffer always
  // takes the buffer: on an error (kNoResource from the in-flight budget included) it goes
  // back to the pool at once and no event follows. The defaults here are kUnavailable.
  virtual Result<SendBuffer> acquire_send_buffer(size_t bytes);
  virtual Status send_buffer(const Address& peer, SendBuffer&& buf, size_t used,
                             uint8_t tclass = 0, uint64_t* token = nullptr);

  // Hands a received frame's bytes back once the caller is done with them, so that later
  // frames (ucx) or send buffers (inproc) reuse the memory instead of allocating and
  // faulting in fresh pages; up to Options::recv_pool_bytes are kept. The default drops them.
  virtual void recycle(std::vector<uint8_t>&& bytes) {}

 protected:
  // For implementations of the send buffers: makes a buffer of theirs, reads its fields
  // back, and returns an unsent buffer to the pool (called by SendBuffer::reset).
  SendBuffer make_send_buffer(uint64_t id, uint8_t* data, size_t size,
                              std::vector<uint8_t> vec = {});
  static uint64_t send_buffer_id(const SendBuffer& b) { return b.owner_ ? b.id_ : 0; }
  static bool owns(const SendBuffer& b, const Transport* t) { return b.owner_ == t; }
  static std::vector<uint8_t> take_vector(SendBuffer& b) { return std::move(b.vec_); }
  // Forgets b without returning it to the pool (the transport now holds it).
  static void disown(SendBuffer& b) { b.owner_ = nullptr; b.data_ = nullptr; b.size_ = 0; }
  virtual void release_send_buffer(uint64_t id, std::vector<uint8_t>&& vec) {}

 protected:
  // Set by implementations from Options::device_ops; used by the default send_region.
  std::shared_ptr<const DeviceMemoryOps> device_ops_;
  RegionRegistry regions_;
};

// Creates the key file `path` (must not exist; mode 0600) holding one fresh random swarm key
// with this id, for Options::key_file (transport/ucx/bootstrap.h write_key_file). kUnavailable
// in a build without UCX.
Status make_key_file(const std::string& path, uint32_t id = 1);

// Creates a transport listening at `listen` ("ucx://0.0.0.0:PORT", "ucx://127.0.0.1:0" for
// any free port, "inproc://NAME"). The scheme chooses the implementation; "ucx" in a build
// without UCX is a kUnavailable error.
Result<std::unique_ptr<Transport>> make_transport(std::string_view listen, const Options& opt = {});

}  // namespace mycel::transport
