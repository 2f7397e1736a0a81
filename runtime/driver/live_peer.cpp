#include "runtime/driver/live_peer.h"

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>

#include "common/log.h"
#include "kernels/codec.h"
#include "kernels/device.h"
#include "models/data/cache.h"
#include "models/data/dataset.h"
#include "models/data/partition.h"
#include "models/model.h"
#include "models/optim.h"
#include "models/trainer.h"
#include "runtime/core/protocol.h"
#include "runtime/driver/device_ops.h"
#include "runtime/driver/view_codec.h"
#include "runtime/driver/worker.h"
#include "transport/frame.h"
#include "transport/transport.h"

namespace mycel::runtime {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kMaxPendingCompute = 3;  // worker tasks queued before training is skipped
constexpr size_t kMaxHeldTestBytes = size_t(8) << 20;  // larger test sets are read in chunks
constexpr size_t kTestChunkRows = 256;
constexpr uint8_t kModelClass = 1;  // the transport's traffic class of model frames
namespace tp = mycel::transport;

// Counters shared by the loop and the worker. Bytes and frames sent are counted in one place:
// when the transport reports a send complete (LivePeer::on_send_done), model frames being a
// subset of all frames; a send that fails or is refused is not counted as sent.
struct Metrics {
  std::atomic<uint64_t> bytes_sent{0}, bytes_received{0}, frames_sent{0}, frames_received{0};
  std::atomic<uint64_t> model_bytes_sent{0}, fp32_bytes_equivalent{0}, models_sent{0};
  std::atomic<uint64_t> merges{0}, train_steps{0}, rejected_frames{0}, rejected_payloads{0};
  std::atomic<uint64_t> dropped_sends{0}, send_failures{0}, skipped_steps{0};
  std::atomic<uint64_t> unreached_sends{0};  // sends to peers never reached yet (not started)
  std::mutex mu;
  std::map<std::string, uint64_t> bytes_by_codec;  // model bytes sent per codec
};

class LivePeer {
 public:
  explicit LivePeer(const PeerArgs& a) : args_(a), cfg_(a.cfg), params_(a.cfg.params) {}

  Status setup();
  Status run(const std::atomic<bool>* stop);
  Status write_class_names(const std::vector<std::string>& names);

 private:
  double now() const { return std::chrono::duration<double>(Clock::now() - t0_).count(); }
  void handle(std::vector<Action>& acts);
  void on_frame(tp::Frame&& f);
  void send_view(const std::string& to, MsgKind kind, const std::vector<Descriptor>& entries);
  // What an in-flight send will count when it completes.
  struct InFlight {
    size_t bytes = 0;
    size_t fp32_bytes = 0;  // model frames: what fp32 would have sent; 0 for other frames
    std::string codec;      // model frames
  };
  void send_bytes(const std::string& to, std::vector<uint8_t> bytes, InFlight what);
  void on_send_done(uint64_t token, bool ok);
  void on_unreachable(const std::string& peer, const Status& why, bool count = true);
  std::map<uint64_t, InFlight> inflight_;
  void flush_outbox();
  // One warning per peer when it becomes unreachable (a seed that is not up, a peer that died);
  // the peer-sampling layer retries it with backoff, and a frame from it clears the mark.
  void note_unreachable(const std::string& peer, const Status& why) {
    if (unreachable_.insert(peer).second)
      MYCEL_LOG_WARN("runtime", "peer {} unreachable ({}): retrying with backoff", peer,
                     why.is_ok() ? std::string("connection closed") : why.to_string());
  }
  std::set<std::string> unreachable_, unknown_senders_;
  std::set<std::string> reached_;  // peers heard from (a frame or a connection) at least once
  double next_tick_ = 0;
  void encode_and_queue(const std::string& to, MsgKind kind, uint64_t age, uint64_t version, uint32_t part,
                        std::string codec, tp::SendBuffer buf);
  // Received frames the worker is done with, handed back to the transport by the loop.
  std::mutex recycle_mu_;
  std::vector<std::vector<uint8_t>> recycle_box_;
  void evaluate(double t);
  Result<models::EvalStats> evaluate_chunks();
  std::optional<data::TestChunks> test_chunks_;  // a large test set, read a chunk at a time
  data::Dataset chunk_;
  Status write_summary(double t);

  PeerArgs args_;
  ExperimentConfig cfg_;
  ParamStore params_;
  std::shared_ptr<Device> dev_;
  data::Dataset shard_;
  std::unique_ptr<models::Model> model_;
  std::unique_ptr<models::Trainer> trainer_;
  models::DeviceData test_;
  models::LrSchedule sched_;
  std::unique_ptr<tp::Transport> tr_;
  std::unique_ptr<tp::FrameDecoder> decoder_;
  std::unique_ptr<Protocol> proto_;
  std::unique_ptr<CodecContext> enc_, dec_;
  Buffer<float> residual_;
  std::string residual_codec_;
  Metrics m_;
  // Received model frames the core has not yet merged or dropped, by handle.
  struct Held {
    std::shared_ptr<std::vector<uint8_t>> bytes;
    uint32_t partition = 0;
  };
  std::map<uint64_t, Held> held_;
  // Partitioned subsampling: slice p of the flat vector is [slice_begin(p), slice_begin(p + 1)).
  size_t slice_begin(uint32_t p) const {
    return model_->num_params() * p / static_cast<size_t>(partitions_);
  }
  int partitions_ = 1;
  uint64_t next_handle_ = 0;
  std::mutex out_mu_;
  struct Outgoing {
    std::string to;
    std::vector<uint8_t> bytes;  // a view frame, or a model frame where the transport has no pool
    tp::SendBuffer buf;          // a model frame in a pooled send buffer (used bytes of it)
    size_t used = 0;             // 0 with a buffer: encoding failed, the buffer goes back
    InFlight what;
  };
  std::deque<Outgoing> outbox_;
  std::atomic<uint64_t> seq_{0};  // frame sequence numbers (loop and worker both send)
  Clock::time_point t0_ = Clock::now();
  FILE* csv_ = nullptr;
  std::atomic<double> last_acc_{0}, last_loss_{0};
  std::atomic<uint64_t> age_seen_{0};
  Worker worker_;  // last: destroyed (joined) first, while everything its tasks use still exists
};

// String labels (a csv: data set) were mapped to 0..C-1 in sorted order: the mapping goes to the
// run folder as classes.csv (index,name), written whole or not at all.
Status LivePeer::write_class_names(const std::vector<std::string>& names) {
  std::filesystem::create_directories(args_.out_dir);
  const std::string path = args_.out_dir + "/classes.csv";
  const std::string tmp = path + ".tmp." + std::to_string(args_.id);
  FILE* f = std::fopen(tmp.c_str(), "w");
  if (!f) return Error(Code::kIo, "cannot write " + tmp);
  bool ok = std::fprintf(f, "index,name\n") > 0;
  for (size_t i = 0; i < names.size() && ok; ++i) ok = std::fprintf(f, "%zu,%s\n", i, names[i].c_str()) > 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return Error(Code::kIo, "cannot write " + path);
  }
  return Ok();
}

Status LivePeer::setup() {
  MYCEL_ASSIGN_OR_RETURN(dev_, make_device(cfg_.device, args_.threads));
  // Data: this peer's shard of the training set, and a test subset for evaluation.
  data::LoadOptions lo = load_options(cfg_.data, cfg_.seed);
  lo.max_test = cfg_.eval.max_test ? cfg_.eval.max_test : cfg_.data.max_test;
  MYCEL_ASSIGN_OR_RETURN(auto pspec, data::parse_partition_spec(cfg_.data.partition));
  // FedAvg: peer 0 is the server and holds no data; the clients 1..N-1 share the training set.
  const bool fedavg = cfg_.protocol.name == "fedavg";
  const bool fed_server = fedavg && args_.id == 0;
  const size_t holders = static_cast<size_t>(cfg_.peers.count - (fedavg ? 1 : 0));
  if (holders == 0) return Error(Code::kInvalidArgument, "fedavg needs at least one client (peers.count >= 2)");
  std::optional<size_t> shard;  // none: the server's "shard" is test rows; it only evaluates
  if (!fed_server) shard = static_cast<size_t>(args_.id - (fedavg ? 1 : 0));
  // Only this peer's rows are read, from a per-host cache of the converted data set
  // (models/data/cache.h); the test rows are read below, whole or a chunk at a time.
  // The rows go straight to the device a block at a time (never held twice).
  data::LoadOptions lo_rows = lo;
  lo_rows.max_test = 1;
  models::DeviceData train_rows;
  data::RowSink sink;
  sink.begin = [&](const data::Dataset& shape) -> Status {
    if (shape.n == 0) return Error(Code::kInvalidArgument, "peer " + std::to_string(args_.id) + " got no training samples");
    MYCEL_ASSIGN_OR_RETURN(train_rows, models::DeviceData::allocate(*dev_, shape.n, shape.dim, shape.classes));
    return Ok();
  };
  sink.rows = [&](size_t row0, const data::Dataset& block) { return train_rows.write_rows(*dev_, row0, block); };
  MYCEL_ASSIGN_OR_RETURN(auto pd, data::load_peer_data(cfg_.data.dataset, lo_rows, pspec, holders, shard, cfg_.seed, sink));
  shard_ = std::move(pd.shard);  // the shape (n, dim, classes); the rows are in train_rows
  if (!pd.class_names.empty() && !args_.out_dir.empty()) MYCEL_CHECK(write_class_names(pd.class_names));
  if (shard_.n == 0) return Error(Code::kInvalidArgument, "peer " + std::to_string(args_.id) + " got no training samples");
  const models::InputShape shape = models::input_shape(shard_);
  // The evaluation subset: held on the device when small, else read from the cache a chunk at
  // a time at each evaluation, so a peer never holds a large test set.
  data::Dataset test_rows;
  if (auto chunks = data::TestChunks::open(pd.cache_file, cfg_.data.dataset, lo); chunks) {
    const size_t bytes = chunks->rows() * shard_.dim * sizeof(float);
    if (bytes > kMaxHeldTestBytes) {
      test_chunks_ = std::move(chunks).value();
    } else {
      MYCEL_CHECK(chunks->read(0, chunks->rows(), test_rows));
    }
  } else {  // no cache usable (nothing writable): the test rows come from a plain load
    MYCEL_ASSIGN_OR_RETURN(auto whole, data::load_peer_data(cfg_.data.dataset, lo, pspec, holders, shard, cfg_.seed));
    test_rows = std::move(whole.test);
  }
  if (!test_chunks_) {
    MYCEL_ASSIGN_OR_RETURN(test_, models::DeviceData::upload(*dev_, test_rows));
  }
  test_rows = {};

  // Model: every peer starts from the same initialisation (seeded), as in the papers.
  MYCEL_ASSIGN_OR_RETURN(model_, models::make_model(*dev_, cfg_.model, shape, cfg_.seed));
  MYCEL_ASSIGN_OR_RETURN(sched_, models::parse_schedule(cfg_.train.schedule, static_cast<float>(cfg_.params.lr), 1,
                                                         static_cast<float>(cfg_.train.weight_decay)));
  models::TrainConfig tc;
  tc.batch = cfg_.train.batch;
  tc.lr = static_cast<float>(cfg_.params.lr);
  tc.momentum = static_cast<float>(cfg_.train.momentum);
  tc.weight_decay = static_cast<float>(cfg_.train.weight_decay);
  tc.schedule = sched_;
  tc.seed = cfg_.seed * 1000003 + static_cast<uint64_t>(args_.id);
  MYCEL_ASSIGN_OR_RETURN(trainer_, models::Trainer::create(*model_, std::move(train_rows), tc));

  enc_ = std::make_unique<CodecContext>(*dev_);
  dec_ = std::make_unique<CodecContext>(*dev_);
  MYCEL_ASSIGN_OR_RETURN(residual_, Buffer<float>::make(*dev_, model_->num_params()));
  MYCEL_CHECK(dev_->memset(residual_.data(), 0, residual_.bytes()));

  tp::Options to;
  to.max_frame_bytes = max_payload_bytes(CodecSpec{}, model_->num_params()) + (size_t(1) << 20);
  // On a GPU the transport's send buffers are page-locked (the encoder's device-to-host copy of
  // each body lands there at DMA speed) and device frames could be staged.
  if (dev_->kind() != DeviceKind::kCpu) {
    MYCEL_ASSIGN_OR_RETURN(to.device_ops, device_memory_ops(dev_));
  }
  MYCEL_ASSIGN_OR_RETURN(tr_, tp::make_transport(args_.listen, to));
  tp::FrameLimits fl;
  fl.max_params = model_->num_params();
  fl.max_payload_bytes = to.max_frame_bytes;
  decoder_ = std::make_unique<tp::FrameDecoder>(fl);

  ProtocolOptions po;
  po.self = tr_->local_address();
  po.seeds = args_.seeds;
  po.seed = cfg_.seed * 7777 + static_cast<uint64_t>(args_.id);
  po.view_size = cfg_.protocol.view_size;
  po.peers = args_.peers;
  po.id = args_.id;
  po.experiment_seed = cfg_.seed;
  po.topology = cfg_.protocol.topology;
  po.degree = cfg_.protocol.degree;
  po.round_timeout_s = cfg_.protocol.peer_timeout_s;
  po.startup_timeout_s = cfg_.protocol.startup_timeout_s;
  po.max_rounds = cfg_.rounds;
  po.client_fraction = cfg_.protocol.client_fraction;
  po.local_epochs = cfg_.protocol.local_epochs;
  po.local_samples = fed_server ? 0 : shard_.n;
  po.batch = cfg_.train.batch;
  const bool gossip = cfg_.protocol.name == "gossip" || cfg_.protocol.name == "push-pull";
  partitions_ = gossip ? cfg_.protocol.partitions : 1;
  if (static_cast<size_t>(partitions_) > model_->num_params())
    return Error(Code::kInvalidArgument, "protocol.partitions (" + std::to_string(partitions_) +
                                             ") exceeds the model's " + std::to_string(model_->num_params()) +
                                             " parameters");
  po.partitions = partitions_;
  MYCEL_ASSIGN_OR_RETURN(proto_, make_protocol(cfg_.protocol.name, po, &params_));

  if (!args_.out_dir.empty()) {
    std::filesystem::create_directories(args_.out_dir);
    std::string path = args_.out_dir + "/peer-" + std::to_string(args_.id) + ".csv";
    csv_ = std::fopen(path.c_str(), "w");
    if (!csv_) return Error(Code::kIo, "cannot write " + path);
    std::fprintf(csv_, "time_s,age,test_accuracy,test_loss,bytes_sent,bytes_received,frames_sent,"
                       "frames_received,model_bytes_sent,fp32_bytes_equivalent,merges,train_steps,codec\n");
    std::fflush(csv_);
  }
  MYCEL_LOG_INFO("runtime", "peer {} at {}: {} samples, model {} ({} params), protocol {}, codec {}",
                 args_.id, po.self, shard_.n, cfg_.model, model_->num_params(), cfg_.protocol.name,
                 cfg_.params.codec);
  return Ok();
}

void LivePeer::send_bytes(const std::string& to, std::vector<uint8_t> bytes, InFlight what) {
  what.bytes = bytes.size();
  uint64_t token = 0;
  Status s = tr_->send(to, std::move(bytes), &token);
  if (s.is_ok()) {
    inflight_[token] = std::move(what);
  } else if (s.code() == Code::kNoResource) {
    ++m_.dropped_sends;  // back-pressure: this exchange is skipped, the next period tries again
  } else {
    on_unreachable(to, s);
  }
}

// A send to `peer` failed, or its connection closed. A peer never reached yet (it has not
// started, or is starting) is not a failure: the protocol probes it until it answers.
void LivePeer::on_unreachable(const std::string& peer, const Status& why, bool count) {
  if (count) {
    if (reached_.count(peer)) ++m_.send_failures;
    else ++m_.unreached_sends;
  }
  if (reached_.count(peer)) note_unreachable(peer, why);
  std::vector<Action> acts;
  proto_->peer_down(now(), peer, acts);
  handle(acts);
}

void LivePeer::on_send_done(uint64_t token, bool ok) {
  auto it = inflight_.find(token);
  if (it == inflight_.end()) return;
  const InFlight& w = it->second;
  if (ok) {
    m_.bytes_sent += w.bytes;
    ++m_.frames_sent;
    if (w.fp32_bytes) {
      m_.model_bytes_sent += w.bytes;
      m_.fp32_bytes_equivalent += w.fp32_bytes;
      ++m_.models_sent;
      std::lock_guard lk(m_.mu);
      m_.bytes_by_codec[w.codec] += w.bytes;
    }
  }
  inflight_.erase(it);
}

void LivePeer::send_view(const std::string& to, MsgKind kind, const std::vector<Descriptor>& entries) {
  tp::FrameHeader h;
  h.type = tp::MessageType::kView;
  h.flags = kind == MsgKind::kShuffleReply ? tp::kFlagReply : 0;
  h.sender_id = static_cast<uint64_t>(args_.id);
  h.seq = ++seq_;
  auto frame = tp::encode_frame(h, serialize_view(entries));
  if (!frame) {
    MYCEL_LOG_WARN("runtime", "cannot frame a view: {}", frame.status().to_string());
    return;
  }
  send_bytes(to, std::move(frame).value(), InFlight{});
}

// Runs on the worker: encodes the model as it is now and queues the frame for the loop.
// Runs on the worker: encodes the model as it is now into the frame buffer (a pooled send
// buffer acquired by the loop, or a fresh vector) and queues it for the loop to send. The codec
// is the one the loop sized the buffer for. A pooled buffer always goes back to the loop (sent,
// or returned to the pool there): the transport is single-threaded.
void LivePeer::encode_and_queue(const std::string& to, MsgKind kind, uint64_t age, uint64_t version,
                                uint32_t part, std::string codec, tp::SendBuffer buf) {
  auto p = params_.get();
  auto spec = parse_codec(codec);
  auto give_back = [&] {
    if (!buf) return;
    std::lock_guard lk(out_mu_);
    outbox_.push_back(Outgoing{to, {}, std::move(buf), 0, {}});
  };
  if (!spec) return give_back();
  float* residual = nullptr;
  if (p->error_feedback && codec_is_lossy(spec->id)) {
    if (residual_codec_ != codec) {  // a new codec starts with a clean residual
      (void)dev_->memset(residual_.data(), 0, residual_.bytes());
      residual_codec_ = codec;
    }
    residual = residual_.data();
  }
  // With partitioned subsampling only slice `part` goes out (its residual slice with it).
  const size_t off = slice_begin(part), len = slice_begin(part + 1) - off;
  if (residual) residual += off;
  const uint64_t seq = ++seq_;
  // The codec writes the payload in place after the frame header; seal_frame fills the header:
  // the model's bytes are written once, into the buffer the transport sends.
  std::vector<uint8_t> frame;
  if (!buf) frame = tp::make_frame_buffer(max_payload_bytes(*spec, len));
  const std::span<uint8_t> room = buf ? buf.span() : std::span<uint8_t>(frame);
  auto hdr = enc_->encode_into(*spec, model_->params().data() + off, len, residual,
                               (static_cast<uint64_t>(args_.id) << 40) ^ seq,  // randk index seed
                               room.subspan(tp::kFrameHeaderBytes));
  if (!hdr) {
    MYCEL_LOG_WARN("runtime", "not sending the model: {}", hdr.status().to_string());
    return give_back();
  }
  const size_t used = tp::kFrameHeaderBytes + kPayloadHeaderBytes + hdr->body_bytes;
  tp::FrameHeader h;
  h.type = tp::MessageType::kModel;
  h.flags = kind == MsgKind::kModelReply ? tp::kFlagReply : 0;
  h.sender_id = static_cast<uint64_t>(args_.id);
  h.seq = seq;
  h.model_age = age;
  h.model_version = partitions_ > 1 ? part : version;
  h.codec = static_cast<uint8_t>(spec->id);
  h.param_count = len;
  if (Status st = tp::seal_frame(h, room.first(used)); !st.is_ok()) {
    MYCEL_LOG_WARN("runtime", "not sending the model: {}", st.to_string());
    return give_back();
  }
  InFlight what;
  what.fp32_bytes = tp::kFrameHeaderBytes + kPayloadHeaderBytes + 4 * len;
  what.codec = codec;
  if (!buf) frame.resize(used);
  std::lock_guard lk(out_mu_);
  outbox_.push_back(Outgoing{to, std::move(frame), std::move(buf), used, std::move(what)});
}

void LivePeer::flush_outbox() {
  std::deque<Outgoing> out;
  {
    std::lock_guard lk(out_mu_);
    out.swap(outbox_);
  }
  for (auto& o : out) {
    if (!o.buf) {
      send_bytes(o.to, std::move(o.bytes), std::move(o.what));
      continue;
    }
    if (o.used == 0) {  // encoding failed: back to the pool, here on the loop thread
      o.buf.reset();
      continue;
    }
    o.what.bytes = o.used;
    uint64_t token = 0;
    Status st = tr_->send_buffer(o.to, std::move(o.buf), o.used, kModelClass, &token);
    if (st.is_ok()) inflight_[token] = std::move(o.what);
    else if (st.code() == Code::kNoResource) ++m_.dropped_sends;
    else on_unreachable(o.to, st);
  }
  // Received frames the worker has merged: their memory serves the next ones.
  std::vector<std::vector<uint8_t>> done;
  {
    std::lock_guard lk(recycle_mu_);
    done.swap(recycle_box_);
  }
  for (auto& v : done) tr_->recycle(std::move(v));
}

// Carries out the core's actions.
void LivePeer::handle(std::vector<Action>& acts) {
  for (auto& a : acts) {
    if (auto* s = std::get_if<SendModel>(&a)) {
      std::string to = s->to;
      MsgKind kind = s->kind;
      uint64_t age = s->age, version = s->version;
      uint32_t part = s->partition;
      // The codec is fixed here, with the size of the pooled send buffer it is encoded into.
      std::string codec = params_.get()->codec;
      auto spec = parse_codec(codec);
      if (!spec) continue;  // validated with the parameter set; defensive
      const size_t len = slice_begin(part + 1) - slice_begin(part);
      auto buf = std::make_shared<tp::SendBuffer>();
      if (auto b = tr_->acquire_send_buffer(tp::kFrameHeaderBytes + max_payload_bytes(*spec, len)); b) {
        *buf = std::move(b).value();
      } else if (b.status().code() == Code::kNoResource) {
        ++m_.dropped_sends;  // every pooled buffer is in flight: back-pressure, skip this one
        continue;
      }  // else no pool on this transport: a vector
      worker_.post([this, to, kind, age, version, part, codec, buf] {
        encode_and_queue(to, kind, age, version, part, codec, std::move(*buf));
      });
    } else if (auto* v = std::get_if<SendView>(&a)) {
      send_view(v->to, v->kind, v->entries);
    } else if (auto* d = std::get_if<Drop>(&a)) {
      auto it = held_.find(d->handle);
      if (it == held_.end()) continue;
      if (it->second.bytes.use_count() == 1) tr_->recycle(std::move(*it->second.bytes));
      held_.erase(it);
    } else if (auto* mg = std::get_if<MergeModel>(&a)) {
      auto it = held_.find(mg->handle);
      if (it == held_.end()) continue;
      float w = mg->weight;
      auto bytes = std::move(it->second.bytes);
      const size_t off = slice_begin(it->second.partition);
      const size_t len = slice_begin(it->second.partition + 1) - off;
      held_.erase(it);
      worker_.post([this, bytes, w, off, len] {
        std::span<const uint8_t> payload(bytes->data() + tp::kFrameHeaderBytes,
                                         bytes->size() - tp::kFrameHeaderBytes);
        Status s = dec_->decode_merge(payload, model_->params().data() + off, len, w);
        if (s.is_ok()) {
          ++m_.merges;
        } else {
          ++m_.rejected_payloads;
          MYCEL_LOG_WARN("runtime", "a received model was rejected, local model unchanged: {}", s.to_string());
        }
        if (bytes.use_count() == 1) {  // its memory serves the next frames (the loop hands it back)
          std::lock_guard lk(recycle_mu_);
          recycle_box_.push_back(std::move(*bytes));
        }
      });
    } else if (auto* t = std::get_if<Train>(&a)) {
      // Compute is the bottleneck: when the worker is already behind, an asynchronous protocol
      // skips this training rather than queue it, so merges and sends are not delayed behind a
      // growing backlog. Round-based protocols never skip: a skipped step is lost to the round.
      if (proto_->may_skip_training() && worker_.pending() > kMaxPendingCompute) {
        proto_->training_skipped(t->steps);
        m_.skipped_steps += static_cast<uint64_t>(t->steps);
        continue;
      }
      int steps = t->steps;
      uint64_t age = t->age;
      float base = static_cast<float>(t->lr);
      worker_.post([this, steps, age, base] {
        models::LrSchedule s = sched_;
        s.base = base;
        float lr = s.lr(models::ScheduleClock{0, 0, std::max<uint64_t>(1, age + 1)});
        Status st = trainer_->train_steps(static_cast<size_t>(steps), lr, std::max<uint64_t>(1, age + 1));
        if (st.is_ok()) m_.train_steps += static_cast<uint64_t>(steps);
        else MYCEL_LOG_WARN("runtime", "training failed: {}", st.to_string());
      });
    } else if (auto* tm = std::get_if<SetTimer>(&a)) {
      // The timer contract: the earliest SetTimer from any input wins; tick() clears the timer
      // first, so the timers a tick() returns replace the earlier ones.
      next_tick_ = std::min(next_tick_, tm->at);
    }
  }
}

void LivePeer::on_frame(tp::Frame&& f) {
  ++m_.frames_received;
  m_.bytes_received += f.bytes.size();
  unreachable_.erase(f.from);
  reached_.insert(f.from);
  // Fixed-membership protocols (D-PSGD, FedAvg) take frames from the listed peers only.
  if (!args_.peers.empty() && (cfg_.protocol.name == "dpsgd" || cfg_.protocol.name == "fedavg") &&
      std::find(args_.peers.begin(), args_.peers.end(), f.from) == args_.peers.end()) {
    ++m_.rejected_frames;
    if (unknown_senders_.insert(f.from).second)
      MYCEL_LOG_WARN("runtime", "ignoring frames from {}: not one of the {} peers of this {} experiment", f.from,
                     args_.peers.size(), cfg_.protocol.name);
    return;
  }
  tp::FrameError fe;
  auto view = decoder_->decode(f.from, f.bytes, &fe);
  if (!view) {
    ++m_.rejected_frames;
    if (tp::frame_fate(fe) == tp::FrameFate::kClose) tr_->disconnect(f.from);
    return;
  }
  const auto& h = view->header;
  Message msg;
  msg.from = f.from;
  std::vector<Action> acts;
  switch (h.type) {
    case tp::MessageType::kView: {
      auto entries = parse_view(view->payload);
      if (!entries) {
        ++m_.rejected_frames;
        MYCEL_LOG_DEBUG("runtime", "bad view from {}: {}", f.from, entries.status().to_string());
        return;
      }
      msg.kind = (h.flags & tp::kFlagReply) ? MsgKind::kShuffleReply : MsgKind::kShuffle;
      msg.entries = std::move(entries).value();
      proto_->message(now(), msg, acts);
      handle(acts);
      return;
    }
    case tp::MessageType::kModel: {
      // Gossip with partitions: model_version is the slice index and param_count its length.
      const uint32_t part = partitions_ > 1 ? static_cast<uint32_t>(std::min<uint64_t>(h.model_version, 1u << 30)) : 0;
      const size_t expect = part < static_cast<uint32_t>(partitions_) ? slice_begin(part + 1) - slice_begin(part) : 0;
      if (h.param_count != expect || expect == 0) {
        ++m_.rejected_payloads;
        MYCEL_LOG_WARN("runtime", "model from {} has {} parameters (slice {}), expected {}: dropped", f.from,
                       h.param_count, part, expect);
        return;
      }
      auto ph = read_header(view->payload.data(), view->payload.size(), expect);
      if (!ph) {
        ++m_.rejected_payloads;
        MYCEL_LOG_WARN("runtime", "model from {} has a bad payload: {}", f.from, ph.status().to_string());
        return;
      }
      msg.kind = (h.flags & tp::kFlagReply) ? MsgKind::kModelReply : MsgKind::kModel;
      msg.age = h.model_age;
      msg.version = h.model_version;
      msg.handle = ++next_handle_;
      msg.partition = part;
      held_[msg.handle] = Held{std::make_shared<std::vector<uint8_t>>(std::move(f.bytes)), part};
      proto_->message(now(), msg, acts);
      handle(acts);
      return;
    }
    default:
      MYCEL_LOG_DEBUG("runtime", "ignoring a {} frame from {}", tp::message_type_name(h.type), f.from);
      return;
  }
}

// Runs on the worker: the test rows a chunk at a time (read from the data cache), combined.
Result<models::EvalStats> LivePeer::evaluate_chunks() {
  models::EvalStats all;
  double loss = 0, correct = 0;
  for (size_t b = 0; b < test_chunks_->rows(); b += kTestChunkRows) {
    MYCEL_CHECK(test_chunks_->read(b, kTestChunkRows, chunk_));
    MYCEL_ASSIGN_OR_RETURN(auto e, trainer_->evaluate(chunk_));
    loss += e.loss * static_cast<double>(e.n);
    correct += e.accuracy * static_cast<double>(e.n);
    all.n += e.n;
  }
  if (all.n) {
    all.loss = loss / static_cast<double>(all.n);
    all.accuracy = correct / static_cast<double>(all.n);
  }
  return all;
}

// Runs on the worker.
void LivePeer::evaluate(double t) {
  auto e = test_chunks_ ? evaluate_chunks() : trainer_->evaluate(test_);
  if (!e) {
    MYCEL_LOG_WARN("runtime", "evaluation failed: {}", e.status().to_string());
    return;
  }
  last_acc_ = e->accuracy;
  last_loss_ = e->loss;
  if (csv_) {
    std::fprintf(csv_, "%.3f,%llu,%.6f,%.6f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%s\n", t,
                 static_cast<unsigned long long>(age_seen_.load()), e->accuracy, e->loss,
                 static_cast<unsigned long long>(m_.bytes_sent.load()),
                 static_cast<unsigned long long>(m_.bytes_received.load()),
                 static_cast<unsigned long long>(m_.frames_sent.load()),
                 static_cast<unsigned long long>(m_.frames_received.load()),
                 static_cast<unsigned long long>(m_.model_bytes_sent.load()),
                 static_cast<unsigned long long>(m_.fp32_bytes_equivalent.load()),
                 static_cast<unsigned long long>(m_.merges.load()),
                 static_cast<unsigned long long>(m_.train_steps.load()), params_.get()->codec.c_str());
    std::fflush(csv_);
  }
}

Status LivePeer::write_summary(double t) {
  if (args_.out_dir.empty()) return Ok();
  std::string path = args_.out_dir + "/peer-" + std::to_string(args_.id) + ".json";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return Error(Code::kIo, "cannot write " + path);
  std::string codecs;
  {
    std::lock_guard lk(m_.mu);
    for (const auto& [c, b] : m_.bytes_by_codec)
      codecs += (codecs.empty() ? "" : ",") + std::string("\"") + c + "\":" + std::to_string(b);
  }
  // The transport's view of each link (transport::PeerStats): what the scheduler will steer by.
  // Last in the object, so that readers looking up a top-level key find it first.
  std::string links;
  for (const tp::PeerStats& l : tr_->stats()) {
    links += fmt::format(
        "{}{{\"peer\":\"{}\",\"bytes_sent\":{},\"bytes_received\":{},\"frames_sent\":{},"
        "\"frames_received\":{},\"send_failures\":{},\"timeouts\":{},\"reconnects\":{},"
        "\"rejected_frames\":{},\"bandwidth_Bps\":{:.0f},\"bandwidth_age_s\":{:.3f},\"rtt_s\":{:.6f},"
        "\"rtt_age_s\":{:.3f},\"oldest_send_wait_s\":{:.6f},\"connected\":{}}}",
        links.empty() ? "" : ",", l.peer, l.bytes_sent, l.bytes_received, l.frames_sent,
        l.frames_received, l.send_failures, l.timeouts, l.reconnects, l.rejected_frames,
        l.bandwidth_Bps, l.bandwidth_age_s, l.rtt_s, l.rtt_age_s, l.oldest_send_wait_s,
        l.connected ? "true" : "false");
  }
  const auto& ps = proto_->stats();
  std::fprintf(f,
               "{\"peer\":%d,\"address\":\"%s\",\"seconds\":%.3f,\"age\":%llu,\"test_accuracy\":%.6f,"
               "\"test_loss\":%.6f,\"samples\":%zu,\"bytes_sent\":%llu,\"bytes_received\":%llu,"
               "\"frames_sent\":%llu,\"frames_received\":%llu,\"model_bytes_sent\":%llu,"
               "\"fp32_bytes_equivalent\":%llu,\"models_sent\":%llu,\"merges\":%llu,\"train_steps\":%llu,"
               "\"rejected_frames\":%llu,\"rejected_payloads\":%llu,\"dropped_sends\":%llu,"
               "\"send_failures\":%llu,\"unreached_sends\":%llu,\"skipped_steps\":%llu,\"wakeups\":%llu,\"peers_down\":%llu,\"bytes_by_codec\":{%s},"
               "\"links\":[%s]}\n",
               args_.id, tr_->local_address().c_str(), t, static_cast<unsigned long long>(proto_->age()),
               last_acc_.load(), last_loss_.load(), shard_.n,
               static_cast<unsigned long long>(m_.bytes_sent.load()),
               static_cast<unsigned long long>(m_.bytes_received.load()),
               static_cast<unsigned long long>(m_.frames_sent.load()),
               static_cast<unsigned long long>(m_.frames_received.load()),
               static_cast<unsigned long long>(m_.model_bytes_sent.load()),
               static_cast<unsigned long long>(m_.fp32_bytes_equivalent.load()),
               static_cast<unsigned long long>(m_.models_sent.load()),
               static_cast<unsigned long long>(m_.merges.load()),
               static_cast<unsigned long long>(m_.train_steps.load()),
               static_cast<unsigned long long>(m_.rejected_frames.load()),
               static_cast<unsigned long long>(m_.rejected_payloads.load()),
               static_cast<unsigned long long>(m_.dropped_sends.load()),
               static_cast<unsigned long long>(m_.send_failures.load()),
               static_cast<unsigned long long>(m_.unreached_sends.load()),
               static_cast<unsigned long long>(m_.skipped_steps.load()),
               static_cast<unsigned long long>(ps.wakeups), static_cast<unsigned long long>(ps.peers_down),
               codecs.c_str(), links.c_str());
  std::fclose(f);
  return Ok();
}

Status LivePeer::run(const std::atomic<bool>* stop) {
  t0_ = Clock::now();
  std::vector<Action> acts;
  next_tick_ = std::numeric_limits<double>::infinity();
  proto_->start(0, acts);
  handle(acts);
  if (!std::isfinite(next_tick_)) next_tick_ = 1.0;
  double next_eval = 0;
  const double duration = cfg_.duration_s;
  for (;;) {
    double t = now();
    if ((stop && stop->load()) || (duration > 0 && t >= duration) ||
        (cfg_.rounds > 0 && proto_->stats().wakeups >= cfg_.rounds))
      break;
    if (t >= next_eval) {
      age_seen_ = proto_->age();
      worker_.post([this, t] { evaluate(t); });
      next_eval = t + cfg_.eval.every_s;
    }
    if (t >= next_tick_) {
      acts.clear();
      next_tick_ = std::numeric_limits<double>::infinity();
      proto_->tick(t, acts);
      handle(acts);
      if (!std::isfinite(next_tick_)) next_tick_ = t + 1.0;
    }
    flush_outbox();
    double wait = std::min({next_tick_, next_eval, duration > 0 ? duration : 1e18}) - now();
    if (worker_.pending() > 0) wait = std::min(wait, 0.002);  // an encode may queue a send
    wait = std::clamp(wait, 0.0, 0.25);
    for (auto& e : tr_->poll(wait)) {
      std::vector<Action> a2;
      switch (e.kind) {
        case tp::EventKind::kFrame:
          on_frame(std::move(e.frame));
          break;
        case tp::EventKind::kSendComplete:
          on_send_done(e.token, true);
          break;
        case tp::EventKind::kPeerUp:
          reached_.insert(e.peer);
          unreachable_.erase(e.peer);
          proto_->peer_up(now(), e.peer, a2);
          break;
        case tp::EventKind::kSendFailed:
          on_send_done(e.token, false);
          on_unreachable(e.peer, e.status);
          break;
        case tp::EventKind::kPeerDown:
          on_unreachable(e.peer, e.status, false);
          break;
        default:
          break;
      }
      handle(a2);
    }
  }
  worker_.drain();
  flush_outbox();
  // Sends still in flight complete (and are counted) before the figures are written.
  for (auto until = Clock::now() + std::chrono::seconds(2); !inflight_.empty() && Clock::now() < until;)
    for (auto& e : tr_->poll(0.05)) {
      if (e.kind == tp::EventKind::kSendComplete) on_send_done(e.token, true);
      else if (e.kind == tp::EventKind::kSendFailed) on_send_done(e.token, false);
    }
  double t_end = now();
  age_seen_ = proto_->age();
  worker_.post([this, t_end] { evaluate(t_end); });
  worker_.drain();
  MYCEL_CHECK(write_summary(t_end));
  MYCEL_LOG_INFO("runtime", "peer {} done after {:.1f}s: test accuracy {:.4f}, {} merges, {} bytes sent", args_.id,
                 t_end, last_acc_.load(), m_.merges.load(), m_.bytes_sent.load());
  // Let in-flight sends finish briefly, then close.
  auto until = Clock::now() + std::chrono::milliseconds(200);
  while (Clock::now() < until) tr_->poll(0.05);
  tr_->close();
  if (csv_) std::fclose(csv_);
  return Ok();
}

}  // namespace

Status run_peer(const PeerArgs& args, const std::atomic<bool>* stop) {
  // A peer is a long-lived process whose large buffers (a data shard read once, test chunks,
  // frames) come and go: a fixed mmap threshold hands every buffer above it back to the system
  // when freed, where glibc's adaptive one (raised to the largest block freed, up to 32 MiB)
  // would keep them in the heap for good.
  mallopt(M_MMAP_THRESHOLD, 256 << 10);
  LivePeer peer(args);
  MYCEL_CHECK(peer.setup());
  return peer.run(stop);
}

}  // namespace mycel::runtime
