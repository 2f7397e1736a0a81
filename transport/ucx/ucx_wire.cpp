// The UCX transport's messages on the wire (wire.h): posting sends to UCP and their
// completions, receiving active messages (eager and rendezvous) and delivering frames in
// sequence order.
#include "transport/ucx/internal.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include "common/log.h"

namespace mycel::transport::ucx {

// --- UCP trampolines -------------------------------------------------------------------------

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

// --- sending ---------------------------------------------------------------------------------

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
  op->hdr.tag = c->send_tag;  // 0 while the handshake runs: set when the op is launched
  op->start = now_s();
  op->deadline = op->start + timeout_s;
  return op;
}

void UcxTransport::track(SendOp* op) {
  live_sends_[op->token] = op;
  deadlines_.emplace(op->deadline, op->token);
  op->conn->pending_ops++;
  if (op->type == MsgType::kData && op->peer != nullptr) {
    op->peer->link.started(op->token, op->len, op->start);
  }
  if (op->type == MsgType::kData && op->peer != nullptr) op->peer->st.inflight_bytes += op->len;
}

void UcxTransport::untrack(SendOp* op) {
  live_sends_.erase(op->token);
  deadlines_.erase({op->deadline, op->token});
  op->conn->pending_ops--;
  if (op->type == MsgType::kData && op->peer != nullptr) op->peer->st.inflight_bytes -= op->len;
}

Result<uint64_t> UcxTransport::launch(SendOp* op) {
  if (op->conn->ep == nullptr && op->conn->boot_id != 0 && !op->conn->failed) {
    op->conn->queued.push_back(op);  // the handshake is not finished: launched after it
    return op->token;
  }
  if (op->conn->ep == nullptr) {
    // The connection closed under a staged send: it completes as failed.
    uint64_t token = op->token;
    on_send_done(op, UCS_ERR_CANCELED);
    return token;
  }
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.send = send_cb;
  rp.user_data = op;
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
    if (op->type == MsgType::kData && op->peer != nullptr) {
      op->peer->link.ended(op->token, now_s(), /*ok=*/false);
    }
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
                                   double timeout_s, uint8_t tclass) {
  SendOp* op = new_op(c, type, seq, stamp, timeout_s);
  op->tclass = tclass;
  op->bytes = std::move(bytes);
  op->data = op->bytes.data();
  op->len = op->bytes.size();
  track(op);
  return launch(op);
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
    e.tclass = op->tclass;
    e.bytes = op->len;
    const bool eager = op->len < eager_limit_;
    if (s == UCS_OK && eager && op->len >= LinkEstimator::kMinBytes && !c->failed) {
      c->unconfirmed.push_back(op->token);  // ended in the link estimate by a flush probe
      c->unconfirmed_last = now;
      flush_due_.insert(c->id);
    } else {
      // Eager frames below kMinBytes give no sample: their completion is a local copy, and a
      // probe per small frame would cost a ping-pong of small frames half its speed.
      p->link.ended(op->token, now, s == UCS_OK && !eager);
    }
    if (s == UCS_OK) {
      // Bytes count as sent here, at completion, never at the send call.
      e.kind = EventKind::kSendComplete;
      p->st.bytes_sent += op->len;
      p->st.frames_sent++;
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
      p->link.ready(now);  // frames queued behind the hello start now
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
    if (op->hdr.stamp == c->rtt_stamp) {
      c->ping_outstanding = false;
      c->rtt_stamp = 0;
    }
    if (op->hdr.stamp == c->flush_stamp) {
      c->flush_stamp = 0;
      if (p != nullptr) {
        for (uint64_t tok : c->confirming) p->link.ended(tok, now, false);
      }
      c->confirming.clear();
    }
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

// Flush probes: a ping sent after eager frames completed locally; its pong (the peer's event
// loop answers in order on the same endpoint) says the peer has them.
void UcxTransport::send_flushes(double now) {
  for (auto it = flush_due_.begin(); it != flush_due_.end();) {
    auto ci = conns_.find(*it);
    Conn* c = ci == conns_.end() ? nullptr : ci->second.get();
    if (c == nullptr || c->failed || c->unconfirmed.empty()) {
      it = flush_due_.erase(it);
      continue;
    }
    if (c->flush_stamp != 0 || now - c->last_flush < kFlushIntervalS) {
      ++it;
      continue;
    }
    it = flush_due_.erase(it);
    uint64_t stamp = now_ns();
    if (stamp == c->rtt_stamp) stamp++;
    c->confirming = std::move(c->unconfirmed);
    c->unconfirmed.clear();
    c->confirming_last = c->unconfirmed_last;
    c->flush_stamp = stamp;
    c->last_flush = now;
    if (!post(c, MsgType::kPing, 0, {}, stamp, opt_.send_timeout_s).is_ok()) {
      c->flush_stamp = 0;
      if (c->peer != nullptr) {
        for (uint64_t tok : c->confirming) c->peer->link.ended(tok, now, false);
      }
      c->confirming.clear();
    }
  }
}

void UcxTransport::drop_unconfirmed(Conn* c, double now) {
  if (c->peer != nullptr) {
    for (uint64_t tok : c->unconfirmed) c->peer->link.ended(tok, now, false);
    for (uint64_t tok : c->confirming) c->peer->link.ended(tok, now, false);
  }
  c->unconfirmed.clear();
  c->confirming.clear();
  c->flush_stamp = 0;
}

// --- receiving -------------------------------------------------------------------------------

ucs_status_t UcxTransport::on_am(const void* header, size_t header_length, void* data,
                                 size_t length, const ucp_am_recv_param_t* param) {
  (void)param;
  // The connection is the one the header's session tag names (bootstrap.h), never what the
  // message or UCX's endpoint claims: a message with no such tag is dropped (its rendezvous
  // data with it: returning UCS_OK without receiving discards it) and counted.
  WireHeader h;
  uint64_t sup = 0;
  if (header_length != sizeof h) {
    bad_headers_++;
    if (warn_ok("bad-header", &sup)) {
      MYCEL_LOG_WARN(kLog, "dropped a message with a {}-byte transport header ({} not logged)",
                     header_length, sup);
    }
    return UCS_OK;
  }
  std::memcpy(&h, header, sizeof h);
  if (h.magic != kWireMagic || h.version != kWireVersion) {
    bad_headers_++;
    if (warn_ok("bad-header", &sup)) {
      MYCEL_LOG_WARN(kLog,
                     "dropped a message with transport magic {:#x} version {} (this build: "
                     "version {}) ({} not logged)",
                     h.magic, h.version, kWireVersion, sup);
    }
    return UCS_OK;
  }
  auto ti = tag_conn_.find(h.tag);
  if (ti == tag_conn_.end()) {
    unknown_tag_++;
    if (warn_ok("unknown-tag", &sup)) {
      MYCEL_LOG_WARN(kLog,
                     "dropped a message of no authenticated connection (unknown session tag; "
                     "{} not logged)",
                     sup);
    }
    return UCS_OK;
  }
  Conn* c = ti->second;
  if (c->failed) return UCS_OK;  // closing: drop
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
    const uint64_t t = now_ns();
    const double now = now_s();
    if (h.stamp != 0 && h.stamp == c->flush_stamp) {
      // The peer has every frame sent before the probe: for the link estimate they end at
      // their last local completion plus the probe's round trip (not counting the time the
      // probe waited for its turn).
      c->flush_stamp = 0;
      const double at = std::min(now, c->confirming_last + (now - c->last_flush));
      if (c->peer != nullptr) {
        for (uint64_t tok : c->confirming) c->peer->link.ended(tok, at, true);
      }
      c->confirming.clear();
      if (!c->unconfirmed.empty()) flush_due_.insert(c->id);
    }
    if (h.stamp != 0 && h.stamp == c->rtt_stamp) {
      c->ping_outstanding = false;
      c->rtt_stamp = 0;
      if (c->peer != nullptr && t > h.stamp) {
        c->peer->link.rtt_sample(double(t - h.stamp) * 1e-9, now);
      }
    }
    return UCS_OK;
  }
  bool ok_seq = (type == MsgType::kHello && h.seq == 0) ||
                ((type == MsgType::kData || type == MsgType::kSkip) && h.seq > 0);
  if (!ok_seq || h.seq < c->recv_next || c->reorder.count(h.seq) != 0) {
    deferred_fail_.push_back({c->id, Status(Code::kCorrupt, "bad transport sequence")});
    return UCS_OK;
  }
  // Bounded: a peer that keeps a sequence number missing cannot make us hold its later
  // messages without limit (issue 15: 150,000 messages skipping seq 1 held 1 GiB).
  if (c->reorder.size() >= opt_.max_reorder_frames ||
      c->reorder_bytes + length > opt_.max_reorder_bytes) {
    reorder_overflows_++;
    if (c->peer != nullptr) c->peer->st.reorder_overflows++;
    if (warn_ok("reorder", &sup)) {
      MYCEL_LOG_WARN(kLog,
                     "closing the connection from {}: {} messages ({} bytes) wait for sequence "
                     "number {} (max_reorder_frames {}, max_reorder_bytes {}; {} not logged)",
                     c->peer ? c->peer->addr : "?", c->reorder.size(), c->reorder_bytes,
                     c->recv_next, opt_.max_reorder_frames, opt_.max_reorder_bytes, sup);
    }
    deferred_fail_.push_back({c->id, Status(Code::kNoResource, "reorder buffer full")});
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
    if (warn_ok("too-large", &sup)) {
      MYCEL_LOG_WARN(kLog, "refused a frame of {} bytes from {} (max_frame_bytes {}; {} not logged)",
                     length, c->peer ? c->peer->addr : std::string("an unnamed peer"), limit,
                     sup);
    }
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
  slot.len = length;
  c->reorder_bytes += length;
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
      erase_slot(c, it);
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
    erase_slot(c, it);
    c->recv_next++;
    if (slot.drop) continue;
    if (slot.type == MsgType::kHello) {
      // The peer is known from the handshake (the tag named this connection): the hello only
      // consumes seq 0. An incoming connection is up once the peer's hello is here.
      c->up = true;
      Peer* p = c->peer;
      p->st.rejected_frames += rejected_unknown_;
      rejected_unknown_ = 0;
      if (p->conn == nullptr || p->conn->failed) p->conn = c;
      if (p->conn == c && !p->st.connected) {
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


}  // namespace mycel::transport::ucx
