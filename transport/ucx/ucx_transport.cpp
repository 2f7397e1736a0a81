// The UCX transport (see ucx_transport.h, internal.h for how the sources divide, and
// docs/transport.md): setup and shutdown, send(), poll() and progress, stats.
#include "transport/ucx/internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include <fmt/format.h>

#include "common/log.h"

namespace mycel::transport::ucx {

double busy_wait_s() {
  static const double v = [] {
    const char* e = std::getenv("MYCEL_UCX_BUSY_WAIT_US");
    return e != nullptr ? std::max(0.0, std::atof(e)) * 1e-6 : 0.001;
  }();
  return v;
}


// Frames below UCX_RNDV_THRESH (the caller's, else our default) go eager and complete on a
// local copy. "auto" leaves it to UCX: taken as 64 KiB.
size_t eager_limit() {
  std::string v;
  if (const char* e = std::getenv("UCX_RNDV_THRESH"); e != nullptr) {
    v = e;
  } else {
    for (const auto& [var, value] : ucx_config_defaults()) {
      if (var == "UCX_RNDV_THRESH") v = value;
    }
  }
  if (v == "inf") return SIZE_MAX;
  char* end = nullptr;
  const double n = std::strtod(v.c_str(), &end);
  if (v.empty() || end == v.c_str() || n < 0) return size_t(64) << 10;
  switch (*end) {
    case 'k': case 'K': return size_t(n * 1024);
    case 'm': case 'M': return size_t(n * 1048576);
    case 'g': case 'G': return size_t(n * 1073741824.0);
    default: return size_t(n);
  }
}

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
  eager_limit_ = eager_limit();
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

  // Our worker address: handed only to peers that finished the authenticated handshake.
  ucp_address_t* wa = nullptr;
  size_t wa_len = 0;
  s = ucp_worker_get_address(worker_, &wa, &wa_len);
  if (s != UCS_OK) return ucs_error(Code::kUnavailable, "ucp_worker_get_address", s);
  worker_addr_.assign(reinterpret_cast<const uint8_t*>(wa),
                      reinterpret_cast<const uint8_t*>(wa) + wa_len);
  ucp_worker_release_address(worker_, wa);

  // The listen port is the bootstrap's (bootstrap.h): no UCX listener is exposed.
  BootstrapConfig bc;
  if (!opt_.key_file.empty()) {
    MYCEL_ASSIGN_OR_RETURN(bc.keys, read_key_file(opt_.key_file));
  }
  bc.handshake_timeout_s = opt_.handshake_timeout_s;
  bc.max_pending = opt_.max_pending_handshakes;
  bc.max_pending_per_source = opt_.max_handshakes_per_source;
  bc.max_connections = opt_.max_connections;
  bc.check_source_host = opt_.check_source_host;
  bc.log_interval_s = opt_.log_interval_s;
  boot_ = std::make_unique<Bootstrap>(std::move(bc));
  sockaddr_storage sa{};
  socklen_t salen = 0;
  MYCEL_CHECK(resolve(host, port, &sa, &salen));
  uint16_t real_port = 0;
  Status ls = boot_->listen(sa, salen, &real_port);
  if (!ls.is_ok()) {
    return Status(ls.code(), "cannot listen at " + std::string(listen) + ": " + ls.message());
  }
  std::string shown = host;
  if (host == "0.0.0.0" || host == "::" || host == "*") shown = outward_host();
  if (shown.find(':') != std::string::npos) shown = "[" + shown + "]";
  local_ = "ucx://" + shown + ":" + std::to_string(real_port);
  boot_->set_identity(local_, worker_addr_);
  if (opt_.key_file.empty()) {
    MYCEL_LOG_WARN(kLog,
                   "{}: no swarm key (transport key_file): unauthenticated mode, any process "
                   "that can reach this port can join; use it on loopback only",
                   local_);
  }
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
    // Send buffers, free or not: a SendBuffer must not outlive its transport.
    while (!slabs_.empty()) free_slab(slabs_.begin()->second.get());
    slab_free_.clear();
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

Status UcxTransport::send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token,
                          uint8_t tclass) {
  MYCEL_ASSIGN_OR_RETURN(Conn * c, ready_conn(peer, bytes.size()));
  MYCEL_ASSIGN_OR_RETURN(uint64_t tok,
                         post(c, MsgType::kData, c->send_seq, std::move(bytes), 0,
                              opt_.send_timeout_s, tclass));
  c->send_seq++;
  if (token != nullptr) *token = tok;
  return Ok();
}

// --- progress ------------------------------------------------------------------------------

void UcxTransport::progress() {
  for (;;) {
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (deferred_fail_.empty() && pongs_.empty() && pings_.empty() && to_close_.empty()) {
      break;
    }
    handle_deferred();
  }
  if (boot_ != nullptr) {
    handle_bootstrap(now_s());
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (!deferred_fail_.empty() || !pongs_.empty() || !pings_.empty() || !to_close_.empty()) {
      handle_deferred();
    }
  }
  advance_staging();
  send_flushes(now_s());
  check_timers(now_s());
  gc();
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
    if (boot_ != nullptr) wait = std::min(wait, boot_->next_deadline() - now);
    // With requests in flight, wake at least every busy_wait_s(): UCX 1.13's tcp transport does
    // not always signal the event fd when a queued rendezvous step becomes ready (observed:
    // both sides asleep with a transfer pending), so a transfer never waits on a lost wakeup.
    // With nothing in flight the wait is the caller's: an idle peer does not wake up.
    if (!live_sends_.empty() || pending_recvs() > 0) wait = std::min(wait, busy_wait_s());
    if (wait <= 0) continue;
    int ms = int(std::ceil(std::max(0.0, wait) * 1000));
    // The worker's event fd and the bootstrap's sockets (listener, handshakes in progress).
    pfds_.clear();
    pfds_.push_back({efd_, POLLIN, 0});
    if (boot_ != nullptr) boot_->add_pollfds(&pfds_, now);
    ::poll(pfds_.data(), nfds_t(pfds_.size()), ms);  // EINTR or timeout: the loop re-checks
  }
  while (!events_.empty() && out.size() < max) {
    out.push_back(std::move(events_.front()));
    events_.pop_front();
  }
  return out;
}

std::vector<PeerStats> UcxTransport::stats() const {
  std::vector<PeerStats> out;
  const double now = now_s();
  for (auto& [a, p] : peers_) {
    out.push_back(p->st);
    p->link.report(&out.back(), now);
  }
  return out;
}

TrustStats UcxTransport::trust_stats() const {
  TrustStats t;
  if (boot_ != nullptr) {
    const BootstrapStats& b = boot_->stats();
    t.accepted = b.accepted;
    t.completed_in = b.completed_in;
    t.completed_out = b.completed_out;
    t.failed_out = b.failed_out;
    t.refused_pending = b.refused_pending;
    t.refused_source = b.refused_source;
    t.refused_connections = b.refused_connections;
    t.accept_backoffs = b.accept_backoffs;
    t.timeouts = b.timeouts;
    t.bad_messages = b.bad_messages;
    t.truncated = b.truncated;
    t.auth_failures = b.auth_failures;
    t.unknown_keys = b.unknown_keys;
    t.bad_source = b.bad_source;
    t.pending_handshakes = boot_->pending();
  }
  t.unknown_tag = unknown_tag_;
  t.bad_headers = bad_headers_;
  t.reorder_overflows = reorder_overflows_;
  t.connections = conns_.size();
  t.authenticated = !opt_.key_file.empty();
  return t;
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

}  // namespace mycel::transport::ucx

namespace mycel::transport {

using ucx::UcxTransport;

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
  std::vector<std::pair<std::string, std::string>> d = {{"UCX_RNDV_THRESH", "256K"}};
  // With peer error handling UCX 1.13 leaves out its shared-memory transports anyway
  // (openucx/ucx#8477) unless UCX_MM_ERROR_HANDLING=y; naming the ones it uses saves each
  // process the 4 MiB of shared-memory segments it would map for nothing.
  if (std::getenv("UCX_MM_ERROR_HANDLING") == nullptr) d.emplace_back("UCX_TLS", "tcp,self");
  return d;
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

Result<TrustStats> ucx_trust_stats(const Transport& t) {
  auto* u = dynamic_cast<const UcxTransport*>(&t);
  if (u == nullptr) return Status(Code::kInvalidArgument, "not a ucx transport");
  return u->trust_stats();
}

Result<std::string> ucx_describe_endpoint(Transport& t, const Address& peer) {
  auto* u = dynamic_cast<UcxTransport*>(&t);
  if (u == nullptr) return Status(Code::kInvalidArgument, "not a ucx transport");
  return u->describe(peer);
}

}  // namespace mycel::transport
