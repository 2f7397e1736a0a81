// The UCX transport (see ucx_transport.h and docs/transport.md).
//
// Wire protocol (inside UCP active messages, AM id kAmId): every message carries a 24-byte
// WireHeader as the AM header and the frame bytes as the AM payload.
//   kHello (seq 0)  first message on an endpoint a peer creates; payload: the sender's listen
//                   address, which names it in events on the accepting side.
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
#include "transport/ucx/ucx_transport.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <set>
#include <map>
#include <random>
#include <unordered_map>
#include <unordered_set>

#include "common/log.h"

namespace mycel::transport {
namespace {

constexpr const char* kLog = "transport";
constexpr unsigned kAmId = 0x4d;          // our one active-message handler
constexpr uint32_t kWireMagic = 0x4d594358;  // "MYCX"
constexpr uint8_t kWireVersion = 1;
// Frames at least this large feed the bandwidth estimate; smaller ones complete on a local
// copy (eager) and say nothing about the link.
constexpr size_t kBandwidthMinBytes = size_t(256) << 10;
// A bandwidth sample covers at least this long of a busy link (or a whole busy period):
// rendezvous completions arrive in bursts, so one frame's completion time says little.
constexpr double kBandwidthWindowS = 0.01;
constexpr double kEwmaAlpha = 0.25;
constexpr double kPingIntervalS = 1.0;  // at most one RTT probe per peer per second
// Longest sleep while requests are in flight (see poll()); MYCEL_UCX_BUSY_WAIT_US overrides.
double busy_wait_s() {
  static const double v = [] {
    const char* e = std::getenv("MYCEL_UCX_BUSY_WAIT_US");
    return e != nullptr ? std::max(0.0, std::atof(e)) * 1e-6 : 0.001;
  }();
  return v;
}

// kSkip: the frame with this seq will not come (its device-to-host staging copy failed); the
// receiver moves past it rather than wait.
enum class MsgType : uint8_t { kHello = 1, kData = 2, kPing = 3, kPong = 4, kBye = 5, kSkip = 6 };

struct WireHeader {
  uint32_t magic = kWireMagic;
  uint8_t version = kWireVersion;
  uint8_t type = 0;
  uint16_t reserved = 0;
  uint64_t seq = 0;
  uint64_t stamp = 0;  // kPing/kPong: the pinger's clock in ns, echoed back
};
static_assert(sizeof(WireHeader) == 24);

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
uint64_t now_ns() {
  return uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                      std::chrono::steady_clock::now().time_since_epoch())
                      .count());
}

Status ucs_error(Code code, std::string_view what, ucs_status_t s) {
  return Status(code, std::string(what) + ": " + ucs_status_string(s));
}

double ewma(double old, double sample) {
  return old == 0 ? sample : (1 - kEwmaAlpha) * old + kEwmaAlpha * sample;
}

// An IPv4/IPv6 socket address for host:port (numeric or resolved).
Status resolve(const std::string& host, uint16_t port, sockaddr_storage* out, socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    return Status(Code::kInvalidArgument,
                  "cannot resolve host '" + host + "': " + gai_strerror(rc));
  }
  std::memcpy(out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return Ok();
}

// A host other machines can reach us at when listening on the wildcard address: the first
// non-loopback IPv4 interface, else loopback.
std::string outward_host() {
  ifaddrs* ifs = nullptr;
  std::string best = "127.0.0.1";
  if (getifaddrs(&ifs) != 0) return best;
  for (ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
    if (i->ifa_addr == nullptr || i->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN];
    auto* sin = reinterpret_cast<sockaddr_in*>(i->ifa_addr);
    if (inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof buf) == nullptr) continue;
    if (std::string_view(buf).starts_with("127.")) continue;
    best = buf;
    break;
  }
  freeifaddrs(ifs);
  return best;
}

class UcxTransport;

struct Peer;

// One received message waiting for its turn (in-order delivery per endpoint).
struct RecvSlot {
  MsgType type = MsgType::kData;
  std::vector<uint8_t> bytes;
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
  size_t pending_ops = 0;     // UCP requests (sends, receives) not yet completed
  // The bandwidth estimate: bytes of large frames completed since bw_t0, while at least one
  // large frame was in flight (bw_inflight of them).
  size_t bw_inflight = 0, bw_bytes = 0;
  double bw_t0 = 0;
  bool ping_outstanding = false;
};

struct Peer {
  Address addr;
  Conn* conn = nullptr;  // the endpoint sends go on
  PeerStats st;
  double backoff_s = 0;
  double retry_at = 0;
  bool had_conn = false;
  double last_ping = 0;
};

// A page-locked host buffer for staging device memory, registered with ucp_mem_map.
struct Staging {
  void* host = nullptr;
  size_t cap = 0;
  ucp_mem_h memh = nullptr;
};

struct SendOp {
  UcxTransport* t = nullptr;
  Conn* conn = nullptr;
  Peer* peer = nullptr;
  uint64_t token = 0;
  MsgType type = MsgType::kData;
  WireHeader hdr;  // UCP reads the AM header until completion
  std::vector<uint8_t> bytes;  // owned bytes (send()); empty for send_region
  const void* data = nullptr;  // what goes on the wire: bytes, a region's range or a staging
  size_t len = 0;              // buffer
  ucp_mem_h memh = nullptr;    // registered memory (send_region): UCP skips registration
  ucs_memory_type_t mem_type = UCS_MEMORY_TYPE_HOST;
  uint64_t region = 0;         // the region this send reads (released at completion)
  Staging* stage = nullptr;    // device memory staged through this buffer
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
  explicit UcxTransport(const Options& opt) : opt_(opt), rng_(std::random_device{}()) {
    device_ops_ = opt.device_ops;
  }
  ~UcxTransport() override { shutdown(); }

  Status init(std::string_view listen);

  Address local_address() const override { return local_; }
  Status send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token) override;
  std::vector<Event> poll(double timeout_s, size_t max) override;
  void disconnect(const Address& peer) override;
  void close() override;
  std::vector<PeerStats> stats() const override;
  Result<MemoryRegion> register_memory(void* base, size_t bytes, MemoryType type) override;
  Status deregister_memory(const MemoryRegion& r) override;
  Status send_region(const Address& peer, const MemoryRegion& r, size_t offset, size_t bytes,
                     uint64_t* token) override;

  Result<std::string> describe(const Address& peer);
  void set_buffer_reuse(bool return_sent, size_t pool_bytes) {
    return_sent_ = return_sent;
    pool_limit_ = pool_bytes;
    while (pool_bytes_ > pool_limit_) {
      pool_bytes_ -= pool_.begin()->first;
      pool_.erase(pool_.begin());
    }
  }
  void recycle(std::vector<uint8_t>&& v) {
    size_t n = v.size();
    if (n == 0 || pool_bytes_ + n > pool_limit_) return;
    pool_bytes_ += n;
    pool_.emplace(n, std::move(v));
  }

  // UCP callbacks (static trampolines call these).
  void on_conn_request(ucp_conn_request_h req) { conn_reqs_.push_back(req); }
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
                       uint64_t stamp, double timeout_s);
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
  void advance_staging();
  void progress();
  void handle_deferred();
  // Closes c: forced (outstanding requests cancelled) after an error, or graceful (flushes,
  // then tells the peer, whose endpoint fails with "connection reset") for disconnect/close.
  void fail_conn(Conn* c, Status why, bool graceful = false);
  void force_close(Conn* c);
  void deliver(Conn* c);
  void check_timers(double now);
  void maybe_ping(Conn* c, double now);
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
  ucp_listener_h listener_ = nullptr;
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
  std::vector<uint64_t> to_close_;                             // conn ids whose bye has gone
  std::vector<ucp_conn_request_h> conn_reqs_;
  std::vector<std::pair<uint64_t, Status>> deferred_fail_;     // (conn id, why)
  std::vector<std::pair<uint64_t, uint64_t>> pongs_;           // (conn id, stamp)
  std::deque<Event> events_;
  uint64_t rejected_unknown_ = 0;  // refused frames whose sender was not yet named
  bool return_sent_ = false;
  size_t pool_limit_ = 0, pool_bytes_ = 0;
  std::multimap<size_t, std::vector<uint8_t>> pool_;  // by size: shrinking costs nothing
  bool cuda_direct_ = false;  // this UCX reads CUDA memory itself (built with cuda support)
  std::vector<uint64_t> staging_;      // tokens of sends whose staging copy is not finished
  std::vector<Staging*> stage_free_;   // staging buffers not in use
  size_t stage_total_ = 0, stage_used_ = 0;  // bytes of staging buffers: allocated, in use
};

// --- UCP trampolines -------------------------------------------------------------------------

void conn_request_cb(ucp_conn_request_h req, void* arg) {
  static_cast<UcxTransport*>(arg)->on_conn_request(req);
}
void ep_error_cb(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* c = static_cast<Conn*>(arg);
  c->t->on_ep_error(c, status);
}
ucs_status_t am_cb(void* arg, const void* header, size_t header_length, void* data,
                   size_t length, const ucp_am_recv_param_t* param) {
  return static_cast<UcxTransport*>(arg)->on_am(header, header_length, data, length, param);
}
void send_cb(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<SendOp*>(user_data);
  op->t->on_send_done(op, status);
  ucp_request_free(request);
}
void recv_cb(void* request, ucs_status_t status, size_t, void* user_data) {
  auto* op = static_cast<RecvOp*>(user_data);
  op->t->on_recv_done(op, status);
  ucp_request_free(request);
}

// --- setup -----------------------------------------------------------------------------------

Status UcxTransport::init(std::string_view listen) {
  std::string host;
  uint16_t port = 0;
  MYCEL_CHECK(parse_ucx_address(listen, &host, &port));

  ucp_config_t* cfg = nullptr;
  ucs_status_t s = ucp_config_read(nullptr, nullptr, &cfg);
  if (s != UCS_OK) return ucs_error(Code::kUnavailable, "ucp_config_read", s);
  for (const auto& [var, value] : ucx_config_defaults()) {
    if (std::getenv(var.c_str()) != nullptr) continue;  // the caller's setting wins
    ucs_status_t m = ucp_config_modify(cfg, var.c_str() + 4, value.c_str());  // minus "UCX_"
    if (m != UCS_OK) {
      MYCEL_LOG_WARN(kLog, "cannot set {}={}: {}", var, value, ucs_status_string(m));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;
  s = ucp_init(&params, cfg, &ctx_);
  ucp_config_release(cfg);
  if (s != UCS_OK) return ucs_error(Code::kUnavailable, "ucp_init", s);
  // Device memory goes to UCP as it is where this UCX was built with CUDA support (Grid'5000's
  // may be); otherwise send_region stages it through page-locked host buffers.
  ucp_context_attr_t ca{};
  ca.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  if (ucp_context_query(ctx_, &ca) == UCS_OK) {
    cuda_direct_ = (ca.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  }
  if (const char* e = std::getenv("MYCEL_UCX_STAGE_CUDA"); e != nullptr && e[0] == '1') {
    cuda_direct_ = false;  // for comparing the two paths where both exist
  }

  ucp_worker_params_t wp{};
  wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wp.thread_mode = UCS_THREAD_MODE_SINGLE;
  s = ucp_worker_create(ctx_, &wp, &worker_);
  if (s != UCS_OK) return ucs_error(Code::kUnavailable, "ucp_worker_create", s);
  s = ucp_worker_get_efd(worker_, &efd_);
  if (s != UCS_OK) return ucs_error(Code::kUnavailable, "ucp_worker_get_efd", s);

  ucp_am_handler_param_t ap{};
  ap.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                  UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  ap.id = kAmId;
  ap.flags = UCP_AM_FLAG_WHOLE_MSG;
  ap.cb = am_cb;
  ap.arg = this;
  s = ucp_worker_set_am_recv_handler(worker_, &ap);
  if (s != UCS_OK) return ucs_error(Code::kUnavailable, "ucp_worker_set_am_recv_handler", s);

  sockaddr_storage sa{};
  socklen_t salen = 0;
  MYCEL_CHECK(resolve(host, port, &sa, &salen));
  ucp_listener_params_t lp{};
  lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&sa);
  lp.sockaddr.addrlen = salen;
  lp.conn_handler.cb = conn_request_cb;
  lp.conn_handler.arg = this;
  s = ucp_listener_create(worker_, &lp, &listener_);
  if (s != UCS_OK) {
    return ucs_error(Code::kUnavailable, "cannot listen at " + std::string(listen), s);
  }
  ucp_listener_attr_t la{};
  la.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  s = ucp_listener_query(listener_, &la);
  if (s != UCS_OK) return ucs_error(Code::kInternal, "ucp_listener_query", s);
  uint16_t real_port = la.sockaddr.ss_family == AF_INET6
                           ? ntohs(reinterpret_cast<sockaddr_in6*>(&la.sockaddr)->sin6_port)
                           : ntohs(reinterpret_cast<sockaddr_in*>(&la.sockaddr)->sin_port);
  std::string shown = host;
  if (host == "0.0.0.0" || host == "::" || host == "*") shown = outward_host();
  if (shown.find(':') != std::string::npos) shown = "[" + shown + "]";
  local_ = "ucx://" + shown + ":" + std::to_string(real_port);
  MYCEL_LOG_DEBUG(kLog, "ucx transport listening at {}", local_);
  return Ok();
}

void UcxTransport::shutdown() {
  if (worker_ != nullptr) {
    close();
    // Let the forced closes finish so UCP frees the endpoints' requests before the worker.
    double until = now_s() + 2.0;
    while (now_s() < until) {
      progress();
      bool busy = !staging_.empty();
      for (auto& [id, c] : conns_) busy |= c->close_req != nullptr || c->pending_ops > 0;
      if (!busy) break;
    }
    for (auto& [id, c] : conns_) {
      if (c->close_req != nullptr) ucp_request_free(c->close_req);
      c->close_req = nullptr;
    }
    for (auto& [tok, op] : live_sends_) {
      // UCP never completed them. A staging buffer whose copy has not finished is leaked
      // rather than freed under the copy.
      if (op->stage != nullptr && !op->staging) free_stage(op->stage);
      delete op;
    }
    live_sends_.clear();
    staging_.clear();
    for (Staging* st : stage_free_) free_stage(st);
    stage_free_.clear();
    for (void* memh : regions_.clear()) {
      if (memh != nullptr) ucp_mem_unmap(ctx_, static_cast<ucp_mem_h>(memh));
    }
    ucp_worker_destroy(worker_);
    worker_ = nullptr;
  }
  if (ctx_ != nullptr) {
    ucp_cleanup(ctx_);
    ctx_ = nullptr;
  }
}

// --- sending ---------------------------------------------------------------------------------

Peer* UcxTransport::peer_for(const Address& a) {
  auto& p = peers_[a];
  if (!p) {
    p = std::make_unique<Peer>();
    p->addr = a;
    p->st.peer = a;
  }
  return p.get();
}

Status UcxTransport::connect(Peer* p) {
  std::string host;
  uint16_t port = 0;
  MYCEL_CHECK(parse_ucx_address(p->addr, &host, &port));
  sockaddr_storage sa{};
  socklen_t salen = 0;
  MYCEL_CHECK(resolve(host, port, &sa, &salen));

  auto c = std::make_unique<Conn>();
  c->id = next_conn_id_++;
  c->t = this;
  c->outgoing = true;
  c->peer = p;
  c->recv_next = 1;  // the accepting side knows us from our hello and sends no hello back
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                  UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  ep.sockaddr.addr = reinterpret_cast<const sockaddr*>(&sa);
  ep.sockaddr.addrlen = salen;
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = ep_error_cb;
  ep.err_handler.arg = c.get();
  // Non-blocking: the connection is established by progress; sends queue until then.
  ucs_status_t s = ucp_ep_create(worker_, &ep, &c->ep);
  if (s != UCS_OK) {
    return ucs_error(Code::kUnavailable, "cannot create an endpoint to " + p->addr, s);
  }
  if (p->had_conn) p->st.reconnects++;
  p->had_conn = true;
  Conn* raw = c.get();
  ep_conn_[raw->ep] = raw;
  conns_[raw->id] = std::move(c);
  p->conn = raw;
  std::vector<uint8_t> me(local_.begin(), local_.end());
  auto hello = post(raw, MsgType::kHello, 0, std::move(me), 0, opt_.connect_timeout_s);
  if (!hello.is_ok()) {
    fail_conn(raw, hello.status());
    return hello.status();
  }
  return Ok();
}

SendOp* UcxTransport::new_op(Conn* c, MsgType type, uint64_t seq, uint64_t stamp,
                             double timeout_s) {
  auto* op = new SendOp;
  op->t = this;
  op->conn = c;
  op->peer = c->peer;
  op->token = next_token_++;
  op->type = type;
  op->hdr.type = uint8_t(type);
  op->hdr.seq = seq;
  op->hdr.stamp = stamp;
  op->start = now_s();
  op->deadline = op->start + timeout_s;
  return op;
}

void UcxTransport::track(SendOp* op) {
  live_sends_[op->token] = op;
  deadlines_.emplace(op->deadline, op->token);
  op->conn->pending_ops++;
  if (op->type == MsgType::kData && op->len >= kBandwidthMinBytes &&
      op->conn->bw_inflight++ == 0) {
    op->conn->bw_t0 = op->start;  // the link turns busy
    op->conn->bw_bytes = 0;
  }
  if (op->type == MsgType::kData && op->peer != nullptr) op->peer->st.inflight_bytes += op->len;
}

void UcxTransport::untrack(SendOp* op) {
  live_sends_.erase(op->token);
  deadlines_.erase({op->deadline, op->token});
  op->conn->pending_ops--;
  if (op->type == MsgType::kData && op->peer != nullptr) op->peer->st.inflight_bytes -= op->len;
  if (op->type == MsgType::kData && op->len >= kBandwidthMinBytes && op->conn->bw_inflight > 0) {
    op->conn->bw_inflight--;
  }
}

void UcxTransport::end_op(SendOp* op) {
  if (op->region != 0) regions_.release(op->region);
  op->region = 0;
  if (op->stage != nullptr) release_stage(op->stage);
  op->stage = nullptr;
}

Result<uint64_t> UcxTransport::launch(SendOp* op) {
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                    UCP_OP_ATTR_FIELD_FLAGS;
  rp.cb.send = send_cb;
  rp.user_data = op;
  rp.flags = UCP_AM_SEND_FLAG_REPLY;  // the receiver learns which endpoint it came on
  if (op->memh != nullptr) {
    rp.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
    rp.memh = op->memh;
  }
  if (op->mem_type != UCS_MEMORY_TYPE_HOST) {
    rp.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    rp.memory_type = op->mem_type;
  }
  ucs_status_ptr_t r = ucp_am_send_nbx(op->conn->ep, kAmId, &op->hdr, sizeof op->hdr,
                                       op->len == 0 ? nullptr : op->data, op->len, &rp);
  if (UCS_PTR_IS_ERR(r)) {
    ucs_status_t s = UCS_PTR_STATUS(r);
    untrack(op);
    end_op(op);
    delete op;
    return ucs_error(Code::kUnavailable, "ucp_am_send_nbx", s);
  }
  uint64_t token = op->token;
  if (r == nullptr) on_send_done(op, UCS_OK);  // completed in place (small eager); op is gone
  return token;
}

Result<uint64_t> UcxTransport::post(Conn* c, MsgType type, uint64_t seq,
                                   std::vector<uint8_t> bytes, uint64_t stamp,
                                   double timeout_s) {
  SendOp* op = new_op(c, type, seq, stamp, timeout_s);
  op->bytes = std::move(bytes);
  op->data = op->bytes.data();
  op->len = op->bytes.size();
  track(op);
  return launch(op);
}

Result<Conn*> UcxTransport::ready_conn(const Address& peer, size_t bytes) {
  if (closed_) return Status(Code::kUnavailable, "transport is closed");
  std::string host;
  uint16_t port = 0;
  MYCEL_CHECK(parse_ucx_address(peer, &host, &port));
  if (bytes > opt_.max_frame_bytes) {
    return Status(Code::kOutOfRange, "frame of " + std::to_string(bytes) +
                                         " bytes exceeds max_frame_bytes " +
                                         std::to_string(opt_.max_frame_bytes));
  }
  Peer* p = peer_for(peer);
  // One frame larger than the whole budget may go when nothing else is in flight (else it
  // could never be sent), as with inproc: in flight stays below max(budget, largest frame).
  if (p->st.inflight_bytes > 0 && p->st.inflight_bytes + bytes > opt_.max_inflight_bytes) {
    return Status(Code::kNoResource, "in-flight budget to " + peer + " is full");
  }
  if (p->conn == nullptr) {
    double now = now_s();
    if (now < p->retry_at) {
      return Status(Code::kUnavailable,
                    fmt::format("{} is down; next connection attempt in {:.3f} s", peer,
                                p->retry_at - now));
    }
    MYCEL_CHECK(connect(p));
  }
  return p->conn;
}

Status UcxTransport::send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token) {
  MYCEL_ASSIGN_OR_RETURN(Conn * c, ready_conn(peer, bytes.size()));
  MYCEL_ASSIGN_OR_RETURN(uint64_t tok,
                         post(c, MsgType::kData, c->send_seq, std::move(bytes), 0,
                              opt_.send_timeout_s));
  c->send_seq++;
  if (token != nullptr) *token = tok;
  return Ok();
}

// --- registered memory -----------------------------------------------------------------------

Result<MemoryRegion> UcxTransport::register_memory(void* base, size_t bytes, MemoryType type) {
  if (base == nullptr || bytes == 0) {
    return Status(Code::kInvalidArgument, "cannot register an empty region");
  }
  if (type == MemoryType::kCuda && !cuda_direct_) {
    // Staged: the staging buffers are what UCP reads, and they are registered themselves.
    if (device_ops_ == nullptr) {
      return Status(Code::kUnavailable,
                    "cannot register device memory: this UCX has no CUDA support and the "
                    "transport has no DeviceMemoryOps (Options::device_ops) to stage it with");
    }
    return regions_.add(base, bytes, type, nullptr);
  }
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                  UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  mp.address = base;
  mp.length = bytes;
  mp.memory_type = type == MemoryType::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
  ucp_mem_h memh = nullptr;
  ucs_status_t s = ucp_mem_map(ctx_, &mp, &memh);
  if (s != UCS_OK) {
    return ucs_error(Code::kUnavailable,
                     fmt::format("ucp_mem_map of {} bytes of {} memory", bytes,
                                 memory_type_name(type)),
                     s);
  }
  auto r = regions_.add(base, bytes, type, memh);
  if (!r.is_ok()) ucp_mem_unmap(ctx_, memh);
  return r;
}

Status UcxTransport::deregister_memory(const MemoryRegion& r) {
  MYCEL_ASSIGN_OR_RETURN(void* memh, regions_.remove(r));
  if (memh != nullptr) {
    ucs_status_t s = ucp_mem_unmap(ctx_, static_cast<ucp_mem_h>(memh));
    if (s != UCS_OK) return ucs_error(Code::kInternal, "ucp_mem_unmap", s);
  }
  return Ok();
}

Status UcxTransport::send_region(const Address& peer, const MemoryRegion& r, size_t offset,
                                 size_t bytes, uint64_t* token) {
  MYCEL_CHECK(regions_.use(r, offset, bytes, /*acquire=*/false).status());
  MYCEL_ASSIGN_OR_RETURN(Conn * c, ready_conn(peer, bytes));
  const uint8_t* src = static_cast<const uint8_t*>(r.base) + offset;
  const bool staged = r.type == MemoryType::kCuda && !cuda_direct_;
  Staging* st = nullptr;
  uint64_t ticket = 0;
  if (staged) {
    MYCEL_ASSIGN_OR_RETURN(st, acquire_stage(bytes));
    if (bytes > 0) {
      auto t = device_ops_->copy_to_host(st->host, src, bytes);
      if (!t.is_ok()) {
        release_stage(st);
        return t.status();
      }
      ticket = *t;
    }
  }
  MYCEL_ASSIGN_OR_RETURN(void* memh, regions_.use(r, offset, bytes, /*acquire=*/true));
  SendOp* op = new_op(c, MsgType::kData, c->send_seq, 0, opt_.send_timeout_s);
  c->send_seq++;  // taken now: frames sent after this one are delivered after it
  op->region = r.id;
  op->len = bytes;
  if (staged) {
    op->stage = st;
    op->ticket = ticket;
    op->staging = bytes > 0;
    op->data = st->host;
    op->memh = st->memh;
  } else {
    op->data = src;
    op->memh = static_cast<ucp_mem_h>(memh);
    if (r.type == MemoryType::kCuda) op->mem_type = UCS_MEMORY_TYPE_CUDA;
  }
  track(op);
  uint64_t tok = op->token;
  if (op->staging) {
    staging_.push_back(tok);  // launched by advance_staging() once the copy is done
  } else {
    MYCEL_ASSIGN_OR_RETURN(tok, launch(op));
  }
  if (token != nullptr) *token = tok;
  return Ok();
}

Result<Staging*> UcxTransport::acquire_stage(size_t bytes) {
  // The smallest free buffer that holds the frame.
  auto best = stage_free_.end();
  for (auto it = stage_free_.begin(); it != stage_free_.end(); ++it) {
    if ((*it)->cap >= bytes && (best == stage_free_.end() || (*it)->cap < (*best)->cap)) best = it;
  }
  if (best != stage_free_.end()) {
    Staging* st = *best;
    stage_free_.erase(best);
    stage_used_ += st->cap;
    return st;
  }
  constexpr size_t kRound = size_t(1) << 20;
  const size_t need = std::max<size_t>(1, (bytes + kRound - 1) / kRound) * kRound;
  // Free buffers too small for this frame make room for a new one.
  while (stage_total_ + need > opt_.max_staging_bytes && !stage_free_.empty()) {
    free_stage(stage_free_.back());
    stage_free_.pop_back();
  }
  if (stage_used_ > 0 && stage_total_ + need > opt_.max_staging_bytes) {
    return Status(Code::kNoResource,
                  fmt::format("staging memory is full ({} of {} bytes in use)", stage_used_,
                              opt_.max_staging_bytes));
  }
  MYCEL_ASSIGN_OR_RETURN(void* host, device_ops_->alloc_pinned(need));
  auto* st = new Staging{host, need, nullptr};
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = host;
  mp.length = need;
  if (ucs_status_t s = ucp_mem_map(ctx_, &mp, &st->memh); s != UCS_OK) {
    st->memh = nullptr;  // UCP registers it on the send path instead
    MYCEL_LOG_DEBUG(kLog, "ucp_mem_map of a staging buffer: {}", ucs_status_string(s));
  }
  stage_total_ += need;
  stage_used_ += need;
  return st;
}

void UcxTransport::release_stage(Staging* st) {
  stage_used_ -= st->cap;
  stage_free_.push_back(st);
}

void UcxTransport::free_stage(Staging* st) {
  if (st->memh != nullptr) ucp_mem_unmap(ctx_, st->memh);
  device_ops_->free_pinned(st->host);
  stage_total_ -= st->cap;
  delete st;
}

// Hands sends whose staging copy has finished to UCP. A send whose connection failed
// meanwhile ends (failed) only once its copy is done: the buffer is not reused under a copy.
void UcxTransport::advance_staging() {
  if (staging_.empty()) return;
  auto tokens = std::move(staging_);
  staging_.clear();
  for (uint64_t tok : tokens) {
    auto it = live_sends_.find(tok);
    if (it == live_sends_.end()) continue;
    SendOp* op = it->second;
    Result<bool> done = device_ops_->copy_done(op->ticket);
    if (done.is_ok() && !*done) {
      staging_.push_back(tok);
      continue;
    }
    op->staging = false;
    if (!done.is_ok()) {
      // The frame will not come: tell the receiver to move past its seq, and fail this send
      // without blaming the link.
      op->local_fail = done.status();
      if (!op->conn->failed) {
        (void)post(op->conn, MsgType::kSkip, op->hdr.seq, {}, 0, opt_.send_timeout_s);
      }
      on_send_done(op, UCS_ERR_IO_ERROR);
    } else if (op->conn->failed || op->conn->ep == nullptr) {
      on_send_done(op, UCS_ERR_CANCELED);
    } else {
      Peer* p = op->peer;
      const uint64_t t = op->token;
      auto r = launch(op);  // on error op is gone, with no event: report the failed send here
      if (!r.is_ok()) {
        p->st.send_failures++;
        push(Event{EventKind::kSendFailed, p->addr, t, r.status(), {}});
      }
    }
  }
}

void UcxTransport::on_send_done(SendOp* op, ucs_status_t s) {
  untrack(op);
  end_op(op);
  Conn* c = op->conn;
  Peer* p = op->peer;
  double now = now_s();
  if (op->type == MsgType::kData) {
    Event e;
    e.peer = p->addr;
    e.token = op->token;
    if (s == UCS_OK) {
      e.kind = EventKind::kSendComplete;
      p->st.bytes_sent += op->len;
      p->st.frames_sent++;
      if (op->len >= kBandwidthMinBytes) {
        // Bytes over time while the link was busy with large frames, sampled per window of
        // kBandwidthWindowS or at the end of a busy period; idle time never counts.
        c->bw_bytes += op->len;
        if (now > c->bw_t0 && (now - c->bw_t0 >= kBandwidthWindowS || c->bw_inflight == 0)) {
          p->st.bandwidth_Bps = ewma(p->st.bandwidth_Bps, double(c->bw_bytes) / (now - c->bw_t0));
          c->bw_t0 = now;
          c->bw_bytes = 0;
        }
      }
      if (!c->failed) maybe_ping(c, now);
    } else {
      e.kind = EventKind::kSendFailed;
      p->st.send_failures++;
      if (!op->local_fail.is_ok()) {
        e.status = op->local_fail;
      } else if (op->timed_out) {
        p->st.timeouts++;
        e.status = Status(Code::kTimeout, fmt::format("send to {} not completed in {} s",
                                                      p->addr, opt_.send_timeout_s));
      } else if (c->failed) {
        e.status = c->fail_status;
      } else {
        e.status = ucs_error(Code::kUnavailable, "send to " + p->addr + " failed", s);
      }
      if (!c->failed && op->local_fail.is_ok()) deferred_fail_.push_back({c->id, e.status});
    }
    if (return_sent_) e.frame.bytes = std::move(op->bytes);
    push(std::move(e));
  } else if (op->type == MsgType::kHello) {
    if (s == UCS_OK && !c->failed) {
      c->up = true;
      p->backoff_s = 0;
      if (p->conn == c && !p->st.connected) {
        p->st.connected = true;
        push(Event{EventKind::kPeerUp, p->addr, 0, Ok(), {}});
      }
      maybe_ping(c, now);
    } else if (s != UCS_OK && !c->failed) {
      deferred_fail_.push_back({c->id, op->timed_out
                                           ? Status(Code::kTimeout, "connection to " + p->addr +
                                                                        " timed out")
                                           : ucs_error(Code::kUnavailable,
                                                       "cannot connect to " + p->addr, s)});
    }
  } else if (op->type == MsgType::kPing && s != UCS_OK) {
    c->ping_outstanding = false;
  } else if (op->type == MsgType::kBye) {
    to_close_.push_back(c->id);  // closed from handle_deferred, outside UCP's callbacks
  }
  delete op;
}

void UcxTransport::maybe_ping(Conn* c, double now) {
  Peer* p = c->peer;
  if (p == nullptr || c->ping_outstanding || now - p->last_ping < kPingIntervalS) return;
  c->ping_outstanding = true;
  p->last_ping = now;
  pings_.push_back(c->id);  // sent from handle_deferred, outside UCP's callbacks
}

// --- receiving -------------------------------------------------------------------------------

ucs_status_t UcxTransport::on_am(const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param) {
  Conn* c = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? conn_by_ep(param->reply_ep)
                                                                  : nullptr;
  if (c == nullptr || c->failed) return UCS_OK;  // unknown or closing endpoint: drop
  WireHeader h;
  if (header_length != sizeof h) {
    deferred_fail_.push_back({c->id, Status(Code::kCorrupt, "bad transport header length")});
    return UCS_OK;
  }
  std::memcpy(&h, header, sizeof h);
  if (h.magic != kWireMagic || h.version != kWireVersion) {
    deferred_fail_.push_back({c->id, Status(Code::kCorrupt, "bad transport header magic")});
    return UCS_OK;
  }
  const bool rndv = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;
  auto type = MsgType(h.type);
  if (type == MsgType::kPing) {
    pongs_.push_back({c->id, h.stamp});
    return UCS_OK;
  }
  if (type == MsgType::kBye) {
    deferred_fail_.push_back({c->id, Status(Code::kUnavailable, "peer closed the connection")});
    return UCS_OK;
  }
  if (type == MsgType::kPong) {
    c->ping_outstanding = false;
    uint64_t t = now_ns();
    if (c->peer != nullptr && t > h.stamp) {
      c->peer->st.rtt_s = ewma(c->peer->st.rtt_s, double(t - h.stamp) * 1e-9);
    }
    return UCS_OK;
  }
  bool ok_seq = (type == MsgType::kHello && h.seq == 0) ||
                ((type == MsgType::kData || type == MsgType::kSkip) && h.seq > 0);
  if (!ok_seq || h.seq < c->recv_next || c->reorder.count(h.seq) != 0) {
    deferred_fail_.push_back({c->id, Status(Code::kCorrupt, "bad transport sequence")});
    return UCS_OK;
  }
  RecvSlot& slot = c->reorder[h.seq];
  slot.type = type;
  if (type == MsgType::kSkip) {  // the sender could not produce this frame: consume its seq
    slot.drop = slot.done = true;
    deliver(c);
    return UCS_OK;
  }
  size_t limit = type == MsgType::kHello ? 1024 : opt_.max_frame_bytes;
  if (length > limit) {
    // Refused before any allocation; UCP tells the sender the transfer ended (rendezvous ATS).
    slot.drop = slot.done = true;
    if (c->peer != nullptr) {
      c->peer->st.rejected_frames++;
    } else {
      rejected_unknown_++;
    }
    MYCEL_LOG_WARN(kLog, "refused a frame of {} bytes from {} (max_frame_bytes {})", length,
                   c->peer ? c->peer->addr : std::string("an unnamed peer"), limit);
    deliver(c);
    return UCS_OK;
  }
  if (length >= 4096 && !pool_.empty()) {
    auto it = pool_.lower_bound(length);
    if (it != pool_.end() && it->first <= 2 * length + 4096) {  // not a giant for a small one
      pool_bytes_ -= it->first;
      slot.bytes = std::move(it->second);
      pool_.erase(it);
    }
  }
  slot.bytes.resize(length);
  if (!rndv) {
    if (length > 0) std::memcpy(slot.bytes.data(), data, length);
    slot.done = true;
    deliver(c);
    return UCS_OK;
  }
  auto* op = new RecvOp{this, c, h.seq};
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.recv_am = recv_cb;
  rp.user_data = op;
  c->pending_ops++;
  ucs_status_ptr_t r = ucp_am_recv_data_nbx(worker_, data, slot.bytes.data(), length, &rp);
  if (UCS_PTR_IS_ERR(r)) {
    on_recv_done(op, UCS_PTR_STATUS(r));
  } else if (r == nullptr) {
    on_recv_done(op, UCS_OK);
  }
  return UCS_INPROGRESS;
}

void UcxTransport::on_recv_done(RecvOp* op, ucs_status_t s) {
  Conn* c = op->conn;
  c->pending_ops--;
  auto it = c->reorder.find(op->seq);
  if (it != c->reorder.end()) {
    it->second.done = true;
    if (c->failed) {
      c->reorder.erase(it);
    } else if (s != UCS_OK) {
      it->second.drop = true;
      it->second.bytes = {};
      MYCEL_LOG_DEBUG(kLog, "receive from {} failed: {}", c->peer ? c->peer->addr : "?",
                      ucs_status_string(s));
    }
    if (!c->failed) deliver(c);
  }
  delete op;
}

// Hands completed messages to the user in sequence order.
void UcxTransport::deliver(Conn* c) {
  while (!c->reorder.empty()) {
    auto it = c->reorder.begin();
    if (it->first != c->recv_next || !it->second.done) return;
    RecvSlot slot = std::move(it->second);
    c->reorder.erase(it);
    c->recv_next++;
    if (slot.drop) continue;
    if (slot.type == MsgType::kHello) {
      Address from(slot.bytes.begin(), slot.bytes.end());
      std::string host;
      uint16_t port = 0;
      if (!parse_ucx_address(from, &host, &port).is_ok()) {
        deferred_fail_.push_back({c->id, Status(Code::kCorrupt, "bad hello address")});
        return;
      }
      Peer* p = peer_for(from);
      c->peer = p;
      c->up = true;
      p->st.rejected_frames += rejected_unknown_;
      rejected_unknown_ = 0;
      if (p->conn == nullptr || p->conn->failed) {
        // Reply on the endpoint the peer opened rather than opening a second one.
        p->conn = c;
        p->had_conn = true;
        p->backoff_s = 0;
        p->retry_at = 0;
      }
      if (!p->st.connected) {
        p->st.connected = true;
        push(Event{EventKind::kPeerUp, p->addr, 0, Ok(), {}});
      }
      continue;
    }
    Peer* p = c->peer;
    p->st.bytes_received += slot.bytes.size();
    p->st.frames_received++;
    Event e;
    e.kind = EventKind::kFrame;
    e.peer = p->addr;
    e.frame.from = p->addr;
    e.frame.bytes = std::move(slot.bytes);
    push(std::move(e));
  }
}

// --- progress, failures, timers --------------------------------------------------------------

void UcxTransport::progress() {
  for (;;) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (conn_reqs_.empty() && deferred_fail_.empty() && pongs_.empty() && pings_.empty() &&
        to_close_.empty()) {
      break;
    }
    handle_deferred();
  }
  advance_staging();
  check_timers(now_s());
  gc();
}

void UcxTransport::handle_deferred() {
  auto reqs = std::move(conn_reqs_);
  conn_reqs_.clear();
  for (ucp_conn_request_h req : reqs) {
    if (closed_) {
      ucp_listener_reject(listener_, req);
      continue;
    }
    auto c = std::make_unique<Conn>();
    c->id = next_conn_id_++;
    c->t = this;
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.conn_request = req;
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = ep_error_cb;
    ep.err_handler.arg = c.get();
    ucs_status_t s = ucp_ep_create(worker_, &ep, &c->ep);
    if (s != UCS_OK) {
      MYCEL_LOG_WARN(kLog, "cannot accept a connection: {}", ucs_status_string(s));
      continue;
    }
    ep_conn_[c->ep] = c.get();
    conns_[c->id] = std::move(c);
  }
  auto fails = std::move(deferred_fail_);
  deferred_fail_.clear();
  for (auto& [id, why] : fails) {
    auto it = conns_.find(id);
    if (it != conns_.end()) fail_conn(it->second.get(), why);
  }
  auto closes = std::move(to_close_);
  to_close_.clear();
  for (uint64_t id : closes) {
    auto it = conns_.find(id);
    if (it != conns_.end()) force_close(it->second.get());
  }
  auto pings = std::move(pings_);
  pings_.clear();
  for (uint64_t id : pings) {
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second->failed) continue;
    auto r = post(it->second.get(), MsgType::kPing, 0, {}, now_ns(), opt_.send_timeout_s);
    if (!r.is_ok()) it->second->ping_outstanding = false;
  }
  auto pongs = std::move(pongs_);
  pongs_.clear();
  for (auto [id, stamp] : pongs) {
    auto it = conns_.find(id);
    if (it == conns_.end() || it->second->failed) continue;
    (void)post(it->second.get(), MsgType::kPong, 0, {}, stamp, opt_.send_timeout_s);
  }
}

void UcxTransport::fail_conn(Conn* c, Status why, bool graceful) {
  if (c->failed) return;
  c->failed = true;
  c->fail_status = why;
  Peer* p = c->peer;
  MYCEL_LOG_DEBUG(kLog, "connection {} to {} closed: {}", c->id, p ? p->addr : "?",
                  why.to_string());
  if (p != nullptr && p->conn == c) {
    p->conn = nullptr;
    // Another live endpoint of the same peer (it connected to us too) carries on.
    for (auto& [id, o] : conns_) {
      if (o.get() != c && o->peer == p && !o->failed && o->up) {
        p->conn = o.get();
        break;
      }
    }
    if (p->conn == nullptr) {
      // Exponential backoff with jitter: sends fail fast until retry_at, so a dead peer
      // costs one connection attempt per backoff period, and many senders do not retry in
      // lockstep.
      if (why.code() != Code::kCancelled) {
        p->backoff_s = p->backoff_s == 0 ? opt_.reconnect_backoff_min_s
                                         : std::min(2 * p->backoff_s, opt_.reconnect_backoff_max_s);
        std::uniform_real_distribution<double> jitter(0.5, 1.0);
        p->retry_at = now_s() + p->backoff_s * jitter(rng_);
      }
      if (p->st.connected || c->outgoing) {
        p->st.connected = false;
        push(Event{EventKind::kPeerDown, p->addr, 0, why, {}});
      }
    }
  }
  if (c->ep != nullptr) {
    ep_conn_.erase(c->ep);
    if (graceful && c->up) {
      // Tell the peer first; the endpoint is closed when the bye has gone (on_send_done) or
      // after a short grace period (check_timers), whichever comes first.
      if (post(c, MsgType::kBye, 0, {}, 0, 0.5).is_ok()) return;
    }
    force_close(c);
  }
}

void UcxTransport::force_close(Conn* c) {
  if (c->ep == nullptr) return;
  ep_conn_.erase(c->ep);
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
  rp.flags = UCP_EP_CLOSE_FLAG_FORCE;
  // Forced close completes the endpoint's outstanding requests (callbacks run, with
  // UCS_ERR_CANCELED), which frees their buffers and reports each failed send.
  ucs_status_ptr_t r = ucp_ep_close_nbx(c->ep, &rp);
  c->ep = nullptr;
  if (UCS_PTR_IS_PTR(r)) c->close_req = r;
  // Slots still being received keep their buffers: UCP writes into them until their receive
  // completes (with an error, after the forced close); on_recv_done erases them then.
  for (auto it = c->reorder.begin(); it != c->reorder.end();) {
    it = it->second.done ? c->reorder.erase(it) : std::next(it);
  }
}

void UcxTransport::check_timers(double now) {
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    uint64_t tok = deadlines_.begin()->second;
    deadlines_.erase(deadlines_.begin());
    auto it = live_sends_.find(tok);
    if (it == live_sends_.end()) continue;
    SendOp* op = it->second;
    if (op->conn->failed) {
      force_close(op->conn);  // a graceful close whose bye or flush did not finish in time
      continue;
    }
    // UCP cannot cancel a send in flight: a send overdue means the peer is wedged, so the
    // endpoint is reset (forced close completes every request on it).
    op->timed_out = true;
    Status why = op->type == MsgType::kHello
                     ? Status(Code::kTimeout, "connection to " + op->peer->addr + " timed out")
                     : Status(Code::kTimeout, fmt::format("send to {} not completed in {} s",
                                                          op->peer->addr, opt_.send_timeout_s));
    fail_conn(op->conn, why);
  }
}

void UcxTransport::gc() {
  for (auto it = conns_.begin(); it != conns_.end();) {
    Conn* c = it->second.get();
    if (c->close_req != nullptr && ucp_request_check_status(c->close_req) != UCS_INPROGRESS) {
      ucp_request_free(c->close_req);
      c->close_req = nullptr;
    }
    if (c->failed && c->ep == nullptr && c->close_req == nullptr && c->pending_ops == 0) {
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

std::vector<Event> UcxTransport::poll(double timeout_s, size_t max) {
  std::vector<Event> out;
  if (worker_ == nullptr) return out;
  const double deadline = now_s() + std::max(0.0, timeout_s);
  for (;;) {
    progress();
    if (!events_.empty() || timeout_s <= 0) break;
    double now = now_s();
    if (now >= deadline) break;
    ucs_status_t s = ucp_worker_arm(worker_);
    if (s == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    if (s != UCS_OK) {
      push(Event{EventKind::kError, {}, 0, ucs_error(Code::kInternal, "ucp_worker_arm", s), {}});
      break;
    }
    double wait = deadline - now;
    if (!deadlines_.empty()) wait = std::min(wait, deadlines_.begin()->first - now);
    // With requests in flight, wake at least every busy_wait_s(): UCX 1.13's tcp transport does
    // not always signal the event fd when a queued rendezvous step becomes ready (observed:
    // both sides asleep with a transfer pending), so a transfer never waits on a lost wakeup.
    // With nothing in flight the wait is the caller's: an idle peer does not wake up.
    if (!live_sends_.empty() || pending_recvs() > 0) wait = std::min(wait, busy_wait_s());
    if (wait <= 0) continue;
    int ms = int(std::ceil(std::max(0.0, wait) * 1000));
    pollfd pfd{efd_, POLLIN, 0};
    ::poll(&pfd, 1, ms);  // EINTR or timeout: the loop re-checks
  }
  while (!events_.empty() && out.size() < max) {
    out.push_back(std::move(events_.front()));
    events_.pop_front();
  }
  return out;
}

void UcxTransport::disconnect(const Address& peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end() || worker_ == nullptr) return;
  Peer* p = it->second.get();
  Status why(Code::kCancelled, "disconnected locally");
  Conn* main = p->conn;
  for (auto& [id, c] : conns_) {
    if (c->peer == p && c.get() != main) {
      if (!c->failed) {
        // Detach first so that fail_conn does not promote it to the peer's endpoint.
        c->peer = nullptr;
        fail_conn(c.get(), why, /*graceful=*/true);
        c->peer = p;
      }
    }
  }
  if (main != nullptr) {
    fail_conn(main, why, /*graceful=*/true);
  } else if (p->st.connected) {
    p->st.connected = false;
    push(Event{EventKind::kPeerDown, p->addr, 0, why, {}});
  }
}

void UcxTransport::close() {
  if (closed_ || worker_ == nullptr) return;
  std::vector<Address> all;
  for (auto& [a, p] : peers_) all.push_back(a);
  for (auto& a : all) disconnect(a);
  for (auto& [id, c] : conns_) {
    if (!c->failed) fail_conn(c.get(), Status(Code::kCancelled, "transport closed"), true);
  }
  if (listener_ != nullptr) {
    ucp_listener_destroy(listener_);
    listener_ = nullptr;
  }
  closed_ = true;
  // Progress the closes for a moment, so the peers learn of it now rather than when this
  // transport is next polled (if ever); whatever is left finishes in later polls or the
  // destructor.
  const double until = now_s() + 1.0;
  while (now_s() < until) {
    progress();
    bool busy = false;
    for (auto& [id, c] : conns_) busy |= c->ep != nullptr || c->close_req != nullptr;
    if (!busy) break;
    ucs_status_t s = ucp_worker_arm(worker_);
    if (s == UCS_OK) {
      pollfd pfd{efd_, POLLIN, 0};
      ::poll(&pfd, 1, 10);
    }
  }
}

std::vector<PeerStats> UcxTransport::stats() const {
  std::vector<PeerStats> out;
  for (auto& [a, p] : peers_) out.push_back(p->st);
  return out;
}

Result<std::string> UcxTransport::describe(const Address& peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end() || it->second->conn == nullptr || it->second->conn->ep == nullptr) {
    return Status(Code::kNotFound, "no endpoint to " + peer);
  }
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  if (f == nullptr) return Status(Code::kIo, "open_memstream failed");
  ucp_ep_print_info(it->second->conn->ep, f);
  std::fclose(f);
  std::string s(buf, len);
  std::free(buf);
  return s;
}

}  // namespace

Status parse_ucx_address(std::string_view addr, std::string* host, uint16_t* port) {
  constexpr std::string_view kScheme = "ucx://";
  auto bad = [&](const char* why) {
    return Status(Code::kInvalidArgument,
                  "bad ucx address '" + std::string(addr) + "': " + why +
                      " (expected ucx://HOST:PORT)");
  };
  if (!addr.starts_with(kScheme)) return bad("scheme is not ucx://");
  std::string_view rest = addr.substr(kScheme.size());
  size_t colon = rest.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("no host:port");
  std::string_view h = rest.substr(0, colon), p = rest.substr(colon + 1);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  if (h.empty()) return bad("empty host");
  if (p.empty() || p.size() > 5) return bad("bad port");
  unsigned v = 0;
  for (char ch : p) {
    if (ch < '0' || ch > '9') return bad("bad port");
    v = v * 10 + unsigned(ch - '0');
  }
  if (v > 65535) return bad("port above 65535");
  *host = std::string(h);
  *port = uint16_t(v);
  return Ok();
}

Result<std::unique_ptr<Transport>> make_ucx_transport(std::string_view listen,
                                                      const Options& opt) {
  auto t = std::make_unique<UcxTransport>(opt);
  MYCEL_CHECK(t->init(listen));
  return std::unique_ptr<Transport>(std::move(t));
}

std::vector<std::pair<std::string, std::string>> ucx_config_defaults() {
  // Without RDMA devices every inter-process transport UCX 1.13 picks with peer error
  // handling is tcp, where its automatic rendezvous threshold sends 64 KiB frames by
  // rendezvous: 3-4x slower ping-pongs and half the bandwidth of eager (measured on loopback,
  // docs/transport.md). RDMA fabrics keep UCX's own threshold (zero-copy pays there).
  std::error_code ec;
  bool rdma = std::filesystem::exists("/sys/class/infiniband", ec) &&
              !std::filesystem::is_empty("/sys/class/infiniband", ec);
  if (rdma) return {};
  return {{"UCX_RNDV_THRESH", "256K"}};
}

Status ucx_set_buffer_reuse(Transport& t, bool return_sent, size_t pool_bytes) {
  auto* u = dynamic_cast<UcxTransport*>(&t);
  if (u == nullptr) return Status(Code::kInvalidArgument, "not a ucx transport");
  u->set_buffer_reuse(return_sent, pool_bytes);
  return Ok();
}

void ucx_recycle_buffer(Transport& t, std::vector<uint8_t>&& bytes) {
  if (auto* u = dynamic_cast<UcxTransport*>(&t)) u->recycle(std::move(bytes));
}

Result<std::string> ucx_describe_endpoint(Transport& t, const Address& peer) {
  auto* u = dynamic_cast<UcxTransport*>(&t);
  if (u == nullptr) return Status(Code::kInvalidArgument, "not a ucx transport");
  return u->describe(peer);
}

}  // namespace mycel::transport
