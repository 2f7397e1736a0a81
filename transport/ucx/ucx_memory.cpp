// The UCX transport's registered memory: ucp_mem_map'd regions, send_region, and device
// memory staged through pooled page-locked host buffers (docs/transport.md).
#include "transport/ucx/internal.h"

#include <algorithm>
#include <cstdlib>

#include <fmt/format.h>

#include "common/log.h"

namespace mycel::transport::ucx {

// Registers host memory with UCP once, for the transport's own buffers; a failure is not an
// error (UCP then registers the memory on the send path instead), only a debug line.
static ucp_mem_h map_host(ucp_context_h ctx, void* p, size_t bytes, const char* what) {
  ucp_mem_map_params_t mp{};
  mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  mp.address = p;
  mp.length = bytes;
  ucp_mem_h memh = nullptr;
  if (ucs_status_t s = ucp_mem_map(ctx, &mp, &memh); s != UCS_OK) {
    MYCEL_LOG_DEBUG(kLog, "ucp_mem_map of {}: {}", what, ucs_status_string(s));
    return nullptr;
  }
  return memh;
}

void UcxTransport::end_op(SendOp* op) {
  if (op->region != 0) regions_.release(op->region);
  op->region = 0;
  if (op->stage != nullptr) release_stage(op->stage);
  op->stage = nullptr;
  if (op->slab != nullptr) release_slab(op->slab);
  op->slab = nullptr;
}

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
                                 size_t bytes, uint64_t* token, uint8_t tclass) {
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
  op->tclass = tclass;
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
  st->memh = map_host(ctx_, host, need, "a staging buffer");
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
    } else if (op->conn->failed || (op->conn->ep == nullptr && op->conn->boot_id == 0)) {
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


// --- send buffers ----------------------------------------------------------------------------

Result<SendBuffer> UcxTransport::acquire_send_buffer(size_t bytes) {
  if (closed_ || worker_ == nullptr) return Status(Code::kUnavailable, "transport is closed");
  if (bytes > opt_.max_frame_bytes) {
    return Status(Code::kOutOfRange, fmt::format("a send buffer of {} bytes exceeds "
                                                 "max_frame_bytes {}", bytes, opt_.max_frame_bytes));
  }
  // The smallest free buffer that holds the frame.
  auto best = slab_free_.end();
  for (auto it = slab_free_.begin(); it != slab_free_.end(); ++it) {
    if ((*it)->cap >= bytes && (best == slab_free_.end() || (*it)->cap < (*best)->cap)) best = it;
  }
  SendSlab* sl = nullptr;
  if (best != slab_free_.end()) {
    sl = *best;
    slab_free_.erase(best);
  } else {
    constexpr size_t kRound = size_t(64) << 10;
    const size_t need = std::max<size_t>(1, (bytes + kRound - 1) / kRound) * kRound;
    // Free buffers too small for this one make room for it.
    while (slab_total_ + need > opt_.max_send_buffer_bytes && !slab_free_.empty()) {
      SendSlab* victim = slab_free_.back();
      slab_free_.pop_back();
      free_slab(victim);
    }
    if (slab_used_ > 0 && slab_total_ + need > opt_.max_send_buffer_bytes) {
      return Status(Code::kNoResource,
                    fmt::format("send buffers are exhausted ({} of {} bytes in use)", slab_used_,
                                opt_.max_send_buffer_bytes));
    }
    // With a GPU the encoder copies each encoded body from device memory into this buffer:
    // page-locked memory (the device's allocator) makes that a DMA at full speed.
    void* mem = nullptr;
    bool pinned = false;
    if (device_ops_ && device_ops_->alloc_pinned) {
      if (auto p = device_ops_->alloc_pinned(need); p && *p) {
        mem = *p;
        pinned = true;
      }
    }
    if (mem == nullptr) mem = std::aligned_alloc(4096, need);
    if (mem == nullptr) {
      return Status(Code::kNoResource, fmt::format("cannot allocate a send buffer of {} bytes",
                                                   need));
    }
    auto owned = std::make_unique<SendSlab>();
    sl = owned.get();
    sl->id = next_slab_id_++;
    sl->data = static_cast<uint8_t*>(mem);
    sl->cap = need;
    sl->pinned = pinned;
    sl->memh = map_host(ctx_, mem, need, "a send buffer");
    slab_total_ += need;
    slabs_[sl->id] = std::move(owned);
  }
  sl->in_use = true;
  slab_used_ += sl->cap;
  return make_send_buffer(sl->id, sl->data, sl->cap);
}

Status UcxTransport::send_buffer(const Address& peer, SendBuffer&& buf, size_t used,
                                 uint8_t tclass, uint64_t* token) {
  auto it = owns(buf, this) ? slabs_.find(send_buffer_id(buf)) : slabs_.end();
  if (it == slabs_.end() || !it->second->in_use) {
    buf.reset();
    return Status(Code::kInvalidArgument, "not a send buffer of this transport");
  }
  SendSlab* sl = it->second.get();
  disown(buf);  // the transport holds it from here: back to the pool on any error below
  if (used > sl->cap) {
    release_slab(sl);
    return Status(Code::kOutOfRange, fmt::format("{} bytes used of a send buffer of {}", used,
                                                 sl->cap));
  }
  auto c = ready_conn(peer, used);
  if (!c.is_ok()) {
    release_slab(sl);
    return c.status();
  }
  SendOp* op = new_op(*c, MsgType::kData, (*c)->send_seq, 0, opt_.send_timeout_s);
  (*c)->send_seq++;
  op->tclass = tclass;
  op->slab = sl;
  op->data = sl->data;
  op->len = used;
  op->memh = sl->memh;
  track(op);
  MYCEL_ASSIGN_OR_RETURN(uint64_t tok, launch(op));  // on error launch released the slab
  if (token != nullptr) *token = tok;
  return Ok();
}

void UcxTransport::release_send_buffer(uint64_t id, std::vector<uint8_t>&&) {
  auto it = slabs_.find(id);
  if (it != slabs_.end() && it->second->in_use) release_slab(it->second.get());
}

void UcxTransport::release_slab(SendSlab* sl) {
  sl->in_use = false;
  slab_used_ -= sl->cap;
  slab_free_.push_back(sl);
}

void UcxTransport::free_slab(SendSlab* sl) {
  if (sl->memh != nullptr) ucp_mem_unmap(ctx_, sl->memh);
  if (sl->pinned) device_ops_->free_pinned(sl->data);
  else std::free(sl->data);
  slab_total_ -= sl->cap;
  if (sl->in_use) slab_used_ -= sl->cap;
  slabs_.erase(sl->id);  // frees sl
}

}  // namespace mycel::transport::ucx
