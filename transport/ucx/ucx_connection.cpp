// The UCX transport's connections: addresses, connecting and accepting, failures and
// timeouts, closing, reconnection with backoff (docs/transport.md, "Events and failures").
#include "transport/ucx/internal.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "common/log.h"

namespace mycel::transport::ucx {

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

// --- UCP trampolines -------------------------------------------------------------------------

void ep_error_cb(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* c = static_cast<Conn*>(arg);
  c->t->on_ep_error(c, status);
}
Peer* UcxTransport::peer_for(const Address& a) {
  auto& p = peers_[a];
  if (!p) {
    p = std::make_unique<Peer>();
    p->addr = a;
    p->st.peer = a;
  }
  return p.get();
}

// Starts the bootstrap handshake to p (bootstrap.h); the endpoint is created from the worker
// address it returns (handle_bootstrap). Sends queue on the connection meanwhile, the hello
// first: its deadline (connect_timeout_s) bounds the whole connection attempt.
Status UcxTransport::connect(Peer* p) {
  std::string host;
  uint16_t port = 0;
  MYCEL_CHECK(parse_ucx_address(p->addr, &host, &port));
  sockaddr_storage sa{};
  socklen_t salen = 0;
  MYCEL_CHECK(resolve(host, port, &sa, &salen));
  MYCEL_ASSIGN_OR_RETURN(uint64_t bid, boot_->connect(sa, salen, now_s()));

  auto c = std::make_unique<Conn>();
  c->id = next_conn_id_++;
  c->t = this;
  c->outgoing = true;
  c->peer = p;
  c->recv_next = 0;  // both sides send a hello (seq 0) on their own endpoint
  c->boot_id = bid;
  boot_conn_[bid] = c->id;
  if (p->had_conn) p->st.reconnects++;
  p->had_conn = true;
  Conn* raw = c.get();
  conns_[raw->id] = std::move(c);
  p->conn = raw;
  auto hello = post(raw, MsgType::kHello, 0, {}, 0, opt_.connect_timeout_s);
  if (!hello.is_ok()) {
    fail_conn(raw, hello.status());
    return hello.status();
  }
  return Ok();
}

Status UcxTransport::make_ep(Conn* c, const std::vector<uint8_t>& worker_addr) {
  ucp_ep_params_t ep{};
  ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                  UCP_EP_PARAM_FIELD_ERR_HANDLER;
  ep.address = reinterpret_cast<const ucp_address_t*>(worker_addr.data());
  ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
  ep.err_handler.cb = ep_error_cb;
  ep.err_handler.arg = c;
  ucs_status_t s = ucp_ep_create(worker_, &ep, &c->ep);
  if (s != UCS_OK) {
    c->ep = nullptr;
    return ucs_error(Code::kUnavailable, "cannot create an endpoint", s);
  }
  ep_conn_[c->ep] = c;
  return Ok();
}

void UcxTransport::handle_bootstrap(double now) {
  std::vector<BootstrapDone> done;
  boot_->set_established(conns_.size());
  boot_->progress(now, &done);
  for (BootstrapDone& d : done) {
    if (d.outgoing) {
      auto bc = boot_conn_.find(d.id);
      if (bc == boot_conn_.end()) continue;
      const uint64_t cid = bc->second;
      boot_conn_.erase(bc);
      auto it = conns_.find(cid);
      if (it == conns_.end() || it->second->failed) continue;
      Conn* c = it->second.get();
      c->boot_id = 0;
      if (!d.status.is_ok()) {
        fail_conn(c, Status(d.status.code(), "cannot connect to " + c->peer->addr + ": " +
                                                 d.status.message()));
        continue;
      }
      if (tag_conn_.count(d.recv_tag) != 0) {
        fail_conn(c, Status(Code::kInternal, "session tag collision"));
        continue;
      }
      if (d.peer != c->peer->addr) {
        MYCEL_LOG_DEBUG(kLog, "{} names itself {}", c->peer->addr, d.peer);
      }
      Status st = make_ep(c, d.worker_addr);
      if (!st.is_ok()) {
        fail_conn(c, st);
        continue;
      }
      c->recv_tag = d.recv_tag;
      c->send_tag = d.send_tag;
      tag_conn_[c->recv_tag] = c;
      auto q = std::move(c->queued);
      c->queued.clear();
      for (SendOp* op : q) {
        op->hdr.tag = c->send_tag;
        (void)launch(op);  // an error completes it (an event for data frames)
      }
      continue;
    }
    // Incoming: the peer proved the key and named itself; our endpoint to it.
    if (closed_ || tag_conn_.count(d.recv_tag) != 0) continue;
    auto c = std::make_unique<Conn>();
    c->id = next_conn_id_++;
    c->t = this;
    Peer* p = peer_for(d.peer);
    c->peer = p;
    c->recv_tag = d.recv_tag;
    c->send_tag = d.send_tag;
    Conn* raw = c.get();
    Status st = make_ep(raw, d.worker_addr);
    if (!st.is_ok()) {
      uint64_t sup = 0;
      if (warn_ok("accept-ep", &sup)) {
        MYCEL_LOG_WARN(kLog, "cannot accept a connection from {}: {}", d.peer, st.to_string());
      }
      continue;
    }
    conns_[raw->id] = std::move(c);
    tag_conn_[raw->recv_tag] = raw;
    if (p->conn == nullptr || p->conn->failed) {
      p->conn = raw;  // sends to p go on this connection (no second one is dialled)
      p->had_conn = true;
      p->backoff_s = 0;
      p->retry_at = 0;
    }
    auto hello = post(raw, MsgType::kHello, 0, {}, 0, opt_.connect_timeout_s);
    if (!hello.is_ok()) fail_conn(raw, hello.status());
  }
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

void UcxTransport::handle_deferred() {
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
    const uint64_t stamp = now_ns();
    it->second->rtt_stamp = stamp;
    auto r = post(it->second.get(), MsgType::kPing, 0, {}, stamp, opt_.send_timeout_s);
    if (!r.is_ok()) {
      it->second->ping_outstanding = false;
      it->second->rtt_stamp = 0;
    }
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
  if (c->boot_id != 0) {
    boot_->cancel(c->boot_id);
    boot_conn_.erase(c->boot_id);
    c->boot_id = 0;
  }
  if (!c->queued.empty()) {
    // Sends that waited for the handshake: they fail now (events for data frames).
    auto q = std::move(c->queued);
    c->queued.clear();
    for (SendOp* op : q) on_send_done(op, UCS_ERR_CANCELED);
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
    if (it->second.done) {
      auto next = std::next(it);
      erase_slot(c, it);
      it = next;
    } else {
      ++it;
    }
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
      drop_unconfirmed(c, now_s());
      if (c->recv_tag != 0) tag_conn_.erase(c->recv_tag);
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
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
  if (boot_ != nullptr) boot_->close();
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

}  // namespace mycel::transport::ucx

namespace mycel::transport {

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

}  // namespace mycel::transport
