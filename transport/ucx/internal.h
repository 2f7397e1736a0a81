// The UCX transport's internals, shared by its source files (one job each):
//   ucx_transport.cpp   setup, shutdown, send(), poll() and progress, stats, the public helpers
//   ucx_wire.cpp        messages on the wire: headers, posting sends to UCP and their
//                       completions, receiving (active messages, rendezvous, in-order delivery)
//   ucx_memory.cpp      registered memory (ucp_mem_map), send_region and the staging of device
//                       memory through pooled page-locked buffers
//   ucx_connection.cpp  connection lifecycle: addresses, connecting, accepting, failures,
//                       timeouts, closing, reconnection backoff
//   transport/link_estimator.{h,cpp}  the bandwidth / RTT estimate (shared with inproc)
// Not a public header: only transport/ucx/*.cpp include it.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <deque>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "transport/link_estimator.h"
#include "transport/transport.h"
#include "transport/ucx/bootstrap.h"
#include "transport/ucx/ucx_transport.h"
#include "transport/ucx/wire.h"

namespace mycel::transport::ucx {

constexpr const char* kLog = "transport";
constexpr double kPingIntervalS = 1.0;  // at most one RTT probe per peer per second
// At most one flush probe (confirming eager frames for the link estimate) per connection per
// this long, sent from progress (a due probe never shortens poll's sleep: a capped sleep was
// measured to slow 64 KiB ping-pongs by half). A lone frame is confirmed at once. The wait
// does not count as link time: a batch counts as received at its last local completion plus
// the probe's round trip.
constexpr double kFlushIntervalS = 0.001;

// Longest sleep while requests are in flight (see poll()); MYCEL_UCX_BUSY_WAIT_US overrides.
double busy_wait_s();
double now_s();
uint64_t now_ns();
Status ucs_error(Code code, std::string_view what, ucs_status_t s);
// An IPv4/IPv6 socket address for host:port (numeric or resolved).
Status resolve(const std::string& host, uint16_t port, sockaddr_storage* out, socklen_t* len);
// A host other machines can reach us at when listening on the wildcard address: the first
// non-loopback IPv4 interface, else loopback.
std::string outward_host();

class UcxTransport;

struct Peer;

// One received message waiting for its turn (in-order delivery per endpoint).
struct RecvSlot {
  MsgType type = MsgType::kData;
  std::vector<uint8_t> bytes;
  size_t len = 0;      // bytes held for it (counted in Conn::reorder_bytes)
  bool done = false;   // the bytes are all here (or the receive failed / was refused)
  bool drop = false;   // refused or failed: consumes its seq, delivers nothing
};

// One UCP endpoint: created by us (outgoing) or from a connection request (incoming).
struct Conn {
  uint64_t id = 0;
  UcxTransport* t = nullptr;
  ucp_ep_h ep = nullptr;
  bool outgoing = false;
  Peer* peer = nullptr;  // outgoing: from the start; incoming: once its hello arrived
  bool up = false;       // outgoing: hello sent; incoming: hello received
  bool failed = false;
  Status fail_status;
  void* close_req = nullptr;
  uint64_t send_seq = 1;  // 0 is the hello
  uint64_t recv_next = 0;
  std::map<uint64_t, RecvSlot> reorder;
  size_t reorder_bytes = 0;   // sum of reorder[].len
  // The bootstrap (bootstrap.h): while boot_id is set the handshake runs, there is no
  // endpoint yet and sends wait in `queued`; then the endpoint is created from the peer's
  // worker address and messages carry send_tag (ours arrive with recv_tag).
  uint64_t boot_id = 0;
  std::vector<struct SendOp*> queued;
  uint64_t recv_tag = 0, send_tag = 0;
  size_t pending_ops = 0;     // UCP requests (sends, receives) not yet completed
  bool ping_outstanding = false;
  uint64_t rtt_stamp = 0;  // the stamp of the RTT probe outstanding
  // Eager frames complete on a local copy, which says nothing of the link: the part in the
  // link estimate of those of LinkEstimator::kMinBytes or more waits for the pong to a probe
  // sent after they completed (a "flush" ping); smaller ones give no sample.
  std::vector<uint64_t> unconfirmed;  // tokens completed, no probe sent after them yet
  std::vector<uint64_t> confirming;   // tokens the outstanding flush probe confirms
  double unconfirmed_last = 0, confirming_last = 0;  // their latest local completion
  uint64_t flush_stamp = 0;
  double last_flush = 0;  // when the outstanding (or last) probe was sent
};

struct Peer {
  Address addr;
  Conn* conn = nullptr;  // the endpoint sends go on
  PeerStats st;
  double backoff_s = 0;
  double retry_at = 0;
  bool had_conn = false;
  double last_ping = 0;
  LinkEstimator link;  // bandwidth and RTT of the link to this peer
};

// A page-locked host buffer for staging device memory, registered with ucp_mem_map.
struct Staging {
  void* host = nullptr;
  size_t cap = 0;
  ucp_mem_h memh = nullptr;
};

// A send buffer (acquire_send_buffer): host memory of ours, registered with ucp_mem_map, that
// the caller encodes into and send_buffer() sends in place.
struct SendSlab {
  uint64_t id = 0;
  uint8_t* data = nullptr;
  size_t cap = 0;
  ucp_mem_h memh = nullptr;
  bool in_use = false;  // acquired by the caller or read by a send
  bool pinned = false;  // page-locked through Options::device_ops (a GPU's encoder copies here)
};

struct SendOp {
  UcxTransport* t = nullptr;
  Conn* conn = nullptr;
  Peer* peer = nullptr;
  uint64_t token = 0;
  uint8_t tclass = 0;          // the caller's traffic class, returned in the send's event
  MsgType type = MsgType::kData;
  WireHeader hdr;  // UCP reads the AM header until completion
  std::vector<uint8_t> bytes;  // owned bytes (send()); empty for send_region
  const void* data = nullptr;  // what goes on the wire: bytes, a region's range or a staging
  size_t len = 0;              // buffer
  ucp_mem_h memh = nullptr;    // registered memory (send_region): UCP skips registration
  ucs_memory_type_t mem_type = UCS_MEMORY_TYPE_HOST;
  uint64_t region = 0;         // the region this send reads (released at completion)
  Staging* stage = nullptr;    // device memory staged through this buffer
  SendSlab* slab = nullptr;    // send_buffer(): the pooled buffer this send reads
  uint64_t ticket = 0;         // its device-to-host copy
  bool staging = false;        // the copy is not finished: not yet handed to UCP
  Status local_fail;           // a local failure (the staging copy), not the link's
  double start = 0;
  double deadline = 0;
  bool timed_out = false;
};

struct RecvOp {
  UcxTransport* t = nullptr;
  Conn* conn = nullptr;
  uint64_t seq = 0;
};


class UcxTransport final : public Transport {
 public:
  explicit UcxTransport(const Options& opt)
      : opt_(opt),
        rng_(std::random_device{}()),
        warn_limit_(opt.log_interval_s, 5),
        pool_limit_(opt.recv_pool_bytes) {
    device_ops_ = opt.device_ops;
  }
  ~UcxTransport() override { shutdown(); }

  Status init(std::string_view listen);

  Address local_address() const override { return local_; }
  Status send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token,
              uint8_t tclass = 0) override;
  std::vector<Event> poll(double timeout_s, size_t max) override;
  void disconnect(const Address& peer) override;
  void close() override;
  std::vector<PeerStats> stats() const override;
  Result<MemoryRegion> register_memory(void* base, size_t bytes, MemoryType type) override;
  Status deregister_memory(const MemoryRegion& r) override;
  Status send_region(const Address& peer, const MemoryRegion& r, size_t offset, size_t bytes,
                     uint64_t* token, uint8_t tclass = 0) override;
  Result<SendBuffer> acquire_send_buffer(size_t bytes) override;
  Status send_buffer(const Address& peer, SendBuffer&& buf, size_t used, uint8_t tclass = 0,
                     uint64_t* token = nullptr) override;
  void recycle(std::vector<uint8_t>&& v) override {
    size_t n = v.size();
    if (n == 0 || pool_bytes_ + n > pool_limit_) return;
    pool_bytes_ += n;
    pool_.emplace(n, std::move(v));
  }

  Result<std::string> describe(const Address& peer);
  void set_buffer_reuse(bool return_sent, size_t pool_bytes) {
    return_sent_ = return_sent;
    pool_limit_ = pool_bytes;
    while (pool_bytes_ > pool_limit_) {
      pool_bytes_ -= pool_.begin()->first;
      pool_.erase(pool_.begin());
    }
  }

  TrustStats trust_stats() const;

  // UCP callbacks (static trampolines call these).
  void on_ep_error(Conn* c, ucs_status_t s) {
    if (!c->failed) deferred_fail_.push_back({c->id, ucs_error(Code::kUnavailable,
                                                                "endpoint error", s)});
  }
  ucs_status_t on_am(const void* header, size_t header_length, void* data, size_t length,
                     const ucp_am_recv_param_t* param);
  void on_send_done(SendOp* op, ucs_status_t s);
  void on_recv_done(RecvOp* op, ucs_status_t s);

 private:
  Peer* peer_for(const Address& a);
  Status connect(Peer* p);
  // The checks send() and send_region() share (closed, address, size, budget), then the
  // peer's endpoint, connecting on first use.
  Result<Conn*> ready_conn(const Address& peer, size_t bytes);
  Result<uint64_t> post(Conn* c, MsgType type, uint64_t seq, std::vector<uint8_t> bytes,
                       uint64_t stamp, double timeout_s, uint8_t tclass = 0);
  // new_op makes a send and counts it (live, deadline, pending, in flight) once data/len are
  // set by the caller through track(); launch hands it to UCP (or undoes it on error).
  SendOp* new_op(Conn* c, MsgType type, uint64_t seq, uint64_t stamp, double timeout_s);
  void track(SendOp* op);
  void untrack(SendOp* op);
  Result<uint64_t> launch(SendOp* op);
  void end_op(SendOp* op);  // releases the region and staging buffer a send held
  Result<Staging*> acquire_stage(size_t bytes);
  void release_stage(Staging* st);  // back to the pool, for the next send
  void free_stage(Staging* st);     // unmapped and freed
  void release_send_buffer(uint64_t id, std::vector<uint8_t>&& vec) override;
  void release_slab(SendSlab* sl);  // back to the pool of send buffers
  void free_slab(SendSlab* sl);     // unmapped and freed
  void advance_staging();
  void progress();
  void handle_deferred();
  // Finished handshakes: endpoints from worker addresses, queued sends launched.
  void handle_bootstrap(double now);
  Status make_ep(Conn* c, const std::vector<uint8_t>& worker_addr);
  void erase_slot(Conn* c, std::map<uint64_t, RecvSlot>::iterator it) {
    c->reorder_bytes -= it->second.len;
    c->reorder.erase(it);
  }
  // A warning limited per cause (Options::log_interval_s).
  bool warn_ok(std::string_view cause, uint64_t* suppressed) {
    return warn_limit_.allow(cause, now_s(), suppressed);
  }
  // Closes c: forced (outstanding requests cancelled) after an error, or graceful (flushes,
  // then tells the peer, whose endpoint fails with "connection reset") for disconnect/close.
  void fail_conn(Conn* c, Status why, bool graceful = false);
  void force_close(Conn* c);
  void deliver(Conn* c);
  void check_timers(double now);
  void maybe_ping(Conn* c, double now);
  void send_flushes(double now);
  // The estimator forgets c's unconfirmed frames (c failed): no sample from them.
  void drop_unconfirmed(Conn* c, double now);
  void gc();
  void shutdown();
  void push(Event e) { events_.push_back(std::move(e)); }
  size_t pending_recvs() const {
    size_t n = 0;
    for (auto& [id, c] : conns_) n += c->pending_ops;
    return n;
  }
  Conn* conn_by_ep(ucp_ep_h ep) {
    auto it = ep_conn_.find(ep);
    return it == ep_conn_.end() ? nullptr : it->second;
  }

  Options opt_;
  std::mt19937_64 rng_;
  ucp_context_h ctx_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::unique_ptr<Bootstrap> boot_;
  std::vector<uint8_t> worker_addr_;                           // ours, for the handshakes
  std::unordered_map<uint64_t, Conn*> tag_conn_;               // recv_tag -> connection
  std::unordered_map<uint64_t, uint64_t> boot_conn_;           // bootstrap id -> conn id
  uint64_t unknown_tag_ = 0, bad_headers_ = 0, reorder_overflows_ = 0;
  LogLimiter warn_limit_;
  std::vector<pollfd> pfds_;  // poll()'s descriptors, reused
  int efd_ = -1;
  Address local_;
  bool closed_ = false;

  uint64_t next_conn_id_ = 1;
  uint64_t next_token_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Conn>> conns_;
  std::unordered_map<ucp_ep_h, Conn*> ep_conn_;
  std::map<Address, std::unique_ptr<Peer>> peers_;
  std::unordered_map<uint64_t, SendOp*> live_sends_;           // token -> op
  std::set<std::pair<double, uint64_t>> deadlines_;           // (deadline, token)
  std::vector<uint64_t> pings_;                                // conn ids due an RTT probe
  std::set<uint64_t> flush_due_;                               // conn ids due a flush probe
  size_t eager_limit_ = 0;  // frames below this go eager (UCX_RNDV_THRESH): confirmed by probe
  std::vector<uint64_t> to_close_;                             // conn ids whose bye has gone
  std::vector<std::pair<uint64_t, Status>> deferred_fail_;     // (conn id, why)
  std::vector<std::pair<uint64_t, uint64_t>> pongs_;           // (conn id, stamp)
  std::deque<Event> events_;
  uint64_t rejected_unknown_ = 0;  // refused frames whose sender was not yet named
  bool return_sent_ = false;
  size_t pool_limit_ = 0, pool_bytes_ = 0;  // recycled vectors for incoming frames
  std::multimap<size_t, std::vector<uint8_t>> pool_;  // by size: shrinking costs nothing
  bool cuda_direct_ = false;  // this UCX reads CUDA memory itself (built with cuda support)
  std::vector<uint64_t> staging_;      // tokens of sends whose staging copy is not finished
  std::vector<Staging*> stage_free_;   // staging buffers not in use
  size_t stage_total_ = 0, stage_used_ = 0;  // bytes of staging buffers: allocated, in use
  std::unordered_map<uint64_t, std::unique_ptr<SendSlab>> slabs_;  // send buffers, by id
  std::vector<SendSlab*> slab_free_;   // send buffers not in use
  size_t slab_total_ = 0, slab_used_ = 0;  // bytes of send buffers: allocated, in use
  uint64_t next_slab_id_ = 1;
};

// UCP callbacks (trampolines to the UcxTransport methods).
void ep_error_cb(void* arg, ucp_ep_h, ucs_status_t status);
ucs_status_t am_cb(void* arg, const void* header, size_t header_length, void* data,
                   size_t length, const ucp_am_recv_param_t* param);
void send_cb(void* request, ucs_status_t status, void* user_data);
void recv_cb(void* request, ucs_status_t status, size_t, void* user_data);

}  // namespace mycel::transport::ucx
