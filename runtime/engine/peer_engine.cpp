#include "runtime/engine/peer_engine.h"

#include <algorithm>
#include <cmath>

#include "common/log.h"
#include "transport/frame.h"

namespace mycel::runtime {

namespace tp = mycel::transport;

ProtocolOptions protocol_options(const ExperimentConfig& cfg, int id, uint64_t local_samples) {
  ProtocolOptions po;
  po.seed = cfg.seed * 7777 + static_cast<uint64_t>(id);
  po.view_size = cfg.protocol.view_size;
  po.id = id;
  po.experiment_seed = cfg.seed;
  po.topology = cfg.protocol.topology;
  po.degree = cfg.protocol.degree;
  po.round_timeout_s = cfg.protocol.peer_timeout_s;
  po.startup_timeout_s = cfg.protocol.startup_timeout_s;
  po.max_rounds = cfg.rounds;
  po.client_fraction = cfg.protocol.client_fraction;
  po.local_epochs = cfg.protocol.local_epochs;
  po.local_samples = local_samples;
  po.batch = cfg.train.batch;
  const bool gossip = cfg.protocol.name == "gossip" || cfg.protocol.name == "push-pull";
  po.partitions = gossip ? cfg.protocol.partitions : 1;
  return po;
}

Result<std::unique_ptr<PeerEngine>> PeerEngine::create(const EngineOptions& opt, std::unique_ptr<Protocol> core,
                                                       const ParamStore* params, Device& dev, float* model,
                                                       float* residual) {
  if (!core) return Error(Code::kInvalidArgument, "peer engine: no protocol core");
  if (!params) return Error(Code::kInvalidArgument, "peer engine: no parameter store");
  if (!model || opt.num_params == 0) return Error(Code::kInvalidArgument, "peer engine: no model");
  if (opt.partitions < 1 || static_cast<size_t>(opt.partitions) > opt.num_params)
    return Error(Code::kInvalidArgument, "protocol.partitions (" + std::to_string(opt.partitions) +
                                             ") must be in 1.." + std::to_string(opt.num_params) +
                                             " (the model's parameter count)");
  return std::unique_ptr<PeerEngine>(new PeerEngine(opt, std::move(core), params, dev, model, residual));
}

PeerEngine::PeerEngine(const EngineOptions& opt, std::unique_ptr<Protocol> core, const ParamStore* params,
                       Device& dev, float* model, float* residual)
    : opt_(opt), core_(std::move(core)), params_(params), dev_(dev), model_(model), residual_(residual) {
  fixed_membership_ = opt_.members && !opt_.members->empty() && (opt_.protocol == "dpsgd" || opt_.protocol == "fedavg");
}

void PeerEngine::start(double now, EngineHost& host) {
  acts_.clear();
  next_tick_ = std::numeric_limits<double>::infinity();
  core_->start(now, acts_);
  handle(host);
  if (!std::isfinite(next_tick_)) next_tick_ = now + 1.0;
}

void PeerEngine::tick(double now, EngineHost& host) {
  acts_.clear();
  next_tick_ = std::numeric_limits<double>::infinity();
  core_->tick(now, acts_);
  handle(host);
  if (!std::isfinite(next_tick_)) next_tick_ = now + 1.0;
}

void PeerEngine::peer_up(double now, const std::string& addr, EngineHost& host) {
  acts_.clear();
  core_->peer_up(now, addr, acts_);
  handle(host);
}

void PeerEngine::peer_down(double now, const std::string& addr, EngineHost& host) {
  acts_.clear();
  core_->peer_down(now, addr, acts_);
  handle(host);
}

bool PeerEngine::accepts(const std::string& from) {
  if (!fixed_membership_) return true;
  const auto& m = *opt_.members;
  if (std::find(m.begin(), m.end(), from) != m.end()) return true;
  ++c_.rejected_frames;
  if (unknown_senders_.size() < 64 && unknown_senders_.insert(from).second)
    MYCEL_LOG_WARN("runtime", "ignoring frames from {}: not one of the {} peers of this {} experiment", from,
                   m.size(), opt_.protocol);
  return false;
}

void PeerEngine::on_view(double now, const std::string& from, bool reply, std::vector<Descriptor> entries,
                         EngineHost& host) {
  on_view_lent(now, from, reply, entries, host);
}

void PeerEngine::on_view_lent(double now, const std::string& from, bool reply, std::vector<Descriptor>& entries,
                              EngineHost& host) {
  Message msg;
  msg.from = from;
  msg.kind = reply ? MsgKind::kShuffleReply : MsgKind::kShuffle;
  msg.entries.swap(entries);
  acts_.clear();
  core_->message(now, msg, acts_);  // a const Message: the entries are only read
  entries.swap(msg.entries);
  handle(host);
}

void PeerEngine::on_model(double now, const std::string& from, bool reply, uint64_t age, uint64_t version,
                          uint64_t param_count, FrameBytes bytes, size_t payload_offset, EngineHost& host) {
  if (fixed_membership_ && bytes && payload_offset >= tp::kFrameHeaderBytes) {
    // The transport names the peer a frame came from (ucx: the peer authenticated by the
    // connection's handshake); with a fixed membership its id is its index in the list, so a
    // header claiming another id is an impersonation attempt (or a misconfigured peer).
    const uint64_t sid = tp::frame_sender_id(*bytes);
    const auto& m = *opt_.members;
    if (sid >= m.size() || m[sid] != from) {
      ++c_.rejected_frames;
      ++c_.sender_mismatches;
      if (mismatch_logged_ < 16) {
        ++mismatch_logged_;
        MYCEL_LOG_WARN("runtime", "model frame from {} claims sender id {} ({}): dropped", from, sid,
                       sid < m.size() ? "the id of " + m[sid] : std::string("not a peer of this experiment"));
      }
      return;
    }
  }
  const uint32_t parts = static_cast<uint32_t>(opt_.partitions);
  // With partitions the version field is the slice index and param_count its length.
  const uint32_t part = parts > 1 ? static_cast<uint32_t>(std::min<uint64_t>(version, 1u << 30)) : 0;
  const size_t expect = part < parts ? slice_begin(part + 1) - slice_begin(part) : 0;
  if (param_count != expect || expect == 0) {
    ++c_.rejected_payloads;
    MYCEL_LOG_WARN("runtime", "model from {} has {} parameters (slice {}), expected {}: dropped", from,
                   param_count, part, expect);
    return;
  }
  if (!bytes || bytes->size() < payload_offset) {
    ++c_.rejected_payloads;
    return;
  }
  auto ph = read_header(bytes->data() + payload_offset, bytes->size() - payload_offset, expect);
  if (!ph) {
    ++c_.rejected_payloads;
    MYCEL_LOG_WARN("runtime", "model from {} has a bad payload: {}", from, ph.status().to_string());
    return;
  }
  // The trust bound, before the core sees the message: a refused model must not move the
  // core's age (or take a merge slot) either. A zstd body is judged after decompression, in
  // the decode on the compute context.
  const float bound = static_cast<float>(params_->get()->max_abs_param);
  bool checked = false;
  if (bound > 0 && !(ph->flags & kPayloadFlagZstd)) {
    const size_t body_at = payload_offset + kPayloadHeaderBytes;
    Status s = check_magnitude(*ph, bytes->data() + body_at, bytes->size() - body_at, bound);
    if (!s.is_ok()) {
      rejected_model(from, s);
      return;
    }
    checked = true;
  }
  Message msg;
  msg.from = from;
  msg.kind = reply ? MsgKind::kModelReply : MsgKind::kModel;
  msg.age = age;
  msg.version = version;
  msg.handle = ++next_handle_;
  msg.partition = part;
  held_.push_back(Held{msg.handle, std::move(bytes), payload_offset, part, checked});
  acts_.clear();
  core_->message(now, msg, acts_);
  handle(host);
}

void PeerEngine::rejected_model(const std::string& from, const Status& s) {
  // A forger can send many: the first 16 are logged, then one at each power of two.
  const uint64_t k = ++c_.rejected_payloads;
  if (k <= 16 || (k & (k - 1)) == 0)
    MYCEL_LOG_WARN("runtime", "a received model from {} was rejected, local model unchanged ({} so far): {}", from,
                   k, s.to_string());
}

void PeerEngine::merge(EngineHost& host, FrameBytes bytes, size_t payload_offset, size_t off, size_t len, float w,
                       bool checked) {
  std::span<const uint8_t> payload(bytes->data() + payload_offset, bytes->size() - payload_offset);
  // The trust bound of the live parameter set: a payload with a larger value is refused before
  // it touches the model (checked on the host, for every backend).
  CodecContext& dec = host.decoder();
  dec.set_max_abs(checked ? 0.f : static_cast<float>(params_->get()->max_abs_param));
  Status s = dec.decode_merge(payload, model_ + off, len, w);
  if (s.is_ok()) {
    ++c_.merges;
  } else {
    rejected_model("a peer", s);
  }
  if (bytes.use_count() == 1) host.recycle(std::move(*bytes));
}

bool PeerEngine::take_held(uint64_t handle, Held* out) {
  for (size_t i = 0; i < held_.size(); ++i) {
    if (held_[i].handle != handle) continue;
    *out = std::move(held_[i]);
    held_.erase(held_.begin() + static_cast<std::ptrdiff_t>(i));  // keeps arrival order
    return true;
  }
  return false;
}

// The one executor of the core's actions.
void PeerEngine::handle(EngineHost& host) {
  // A core's action may make the engine call back into it (training_skipped): work on a copy
  // of the list so that a nested input cannot invalidate it.
  std::vector<Action> acts;
  acts.swap(acts_);
  for (auto& a : acts) {
    if (auto* s = std::get_if<SendModel>(&a)) {
      auto p = params_->get();
      if (p->codec != codec_text_) {
        auto spec = parse_codec(p->codec);
        if (!spec) continue;  // validated with the parameter set; defensive
        codec_spec_ = *spec;
        codec_text_ = p->codec;
      }
      ModelSend m;
      m.to = std::move(s->to);
      m.kind = s->kind;
      m.age = s->age;
      m.version = s->version;
      m.partition = s->partition;
      m.codec = codec_text_;
      m.spec = codec_spec_;
      m.offset = slice_begin(s->partition);
      m.length = slice_begin(s->partition + 1) - m.offset;
      m.frame_bytes = tp::kFrameHeaderBytes + max_payload_bytes(m.spec, m.length);
      m.fp32_frame_bytes = tp::kFrameHeaderBytes + kPayloadHeaderBytes + 4 * m.length;
      host.send_model(m);
    } else if (auto* v = std::get_if<SendView>(&a)) {
      host.send_view(v->to, v->kind, v->entries);
    } else if (auto* d = std::get_if<Drop>(&a)) {
      Held h;
      if (!take_held(d->handle, &h)) continue;
      if (h.bytes.use_count() == 1) host.recycle(std::move(*h.bytes));
    } else if (auto* mg = std::get_if<MergeModel>(&a)) {
      Held h;
      if (!take_held(mg->handle, &h)) continue;
      const float w = mg->weight;
      const size_t off = slice_begin(h.partition);
      const size_t len = slice_begin(h.partition + 1) - off;
      run(host, [this, &host, b = std::move(h.bytes), po = h.payload_offset, off, len, w, ck = h.checked]() mutable {
        merge(host, std::move(b), po, off, len, w, ck);
      });
    } else if (auto* t = std::get_if<Train>(&a)) {
      // Compute is the bottleneck: when the compute context is already behind, an asynchronous
      // protocol skips this training rather than queue it, so merges and sends are not delayed
      // behind a growing backlog. Round-based protocols never skip: a step is lost to the round.
      if (core_->may_skip_training() && host.compute_backlog() > opt_.max_backlog) {
        core_->training_skipped(t->steps);
        c_.skipped_steps += static_cast<uint64_t>(t->steps);
        continue;
      }
      const int steps = t->steps;
      const uint64_t clock_age = std::max<uint64_t>(1, t->age + 1);
      models::LrSchedule sched = opt_.schedule;
      sched.base = static_cast<float>(t->lr);
      const float lr = sched.lr(models::ScheduleClock{0, 0, clock_age});
      run(host, [this, &host, steps, lr, clock_age] {
        Status st = host.train(steps, lr, clock_age);
        if (st.is_ok()) c_.train_steps += static_cast<uint64_t>(steps);
        else MYCEL_LOG_WARN("runtime", "training failed: {}", st.to_string());
      });
    } else if (auto* tm = std::get_if<SetTimer>(&a)) {
      next_tick_ = std::min(next_tick_, tm->at);
    }
  }
  acts.clear();
  if (acts_.empty()) acts_.swap(acts);  // keep the capacity for the next input
}

Result<size_t> PeerEngine::encode_frame(const ModelSend& s, uint64_t seq, std::span<uint8_t> room, CodecContext& enc) {
  if (room.size() < tp::kFrameHeaderBytes) return Error(Code::kOutOfRange, "frame buffer too small");
  float* residual = nullptr;
  auto p = params_->get();
  // Error feedback carries a dense codec's rounding error into the next send. A sparse codec
  // (top-k, random-k) sends whole model values and the receiver merges only those coordinates:
  // there is no error to carry, and a residual would add the whole model to itself for every
  // send a coordinate misses (top-k 1%: values near 100x the model's, refused by the receivers'
  // trust.max_abs_param bound). So sparse codecs send without a residual.
  if (residual_ && p->error_feedback && codec_is_lossy(s.spec.id) && !codec_is_sparse(s.spec.id)) {
    if (residual_codec_ != s.codec) {  // a new codec starts with a clean residual
      MYCEL_CHECK(dev_.memset(residual_, 0, opt_.num_params * sizeof(float)));
      residual_codec_ = s.codec;
    }
    residual = residual_ + s.offset;  // with partitions, the slice's residual goes with it
  }
  MYCEL_ASSIGN_OR_RETURN(auto hdr, enc.encode_into(s.spec, model_ + s.offset, s.length, residual,
                                                   (static_cast<uint64_t>(opt_.id) << 40) ^ seq,  // randk seed
                                                   room.subspan(tp::kFrameHeaderBytes)));
  const size_t used = tp::kFrameHeaderBytes + kPayloadHeaderBytes + hdr.body_bytes;
  tp::FrameHeader h;
  h.type = tp::MessageType::kModel;
  h.flags = s.kind == MsgKind::kModelReply ? tp::kFlagReply : 0;
  h.sender_id = static_cast<uint64_t>(opt_.id);
  h.seq = seq;
  h.model_age = s.age;
  h.model_version = opt_.partitions > 1 ? s.partition : s.version;
  h.codec = static_cast<uint8_t>(s.spec.id);
  h.param_count = s.length;
  MYCEL_CHECK(tp::seal_frame(h, room.first(used)));
  return used;
}

}  // namespace mycel::runtime
