#include "runtime/driver/live_peer.h"

#include <fcntl.h>
#include <malloc.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "common/log.h"
#include "kernels/codec.h"
#include "kernels/device.h"
#include "models/data/cache.h"
#include "models/data/dataset.h"
#include "models/data/partition.h"
#include "models/model.h"
#include "models/optim.h"
#include "models/trainer.h"
#include <nlohmann/json.hpp>

#include "runtime/control/metrics.h"
#include "runtime/control/server.h"
#include "runtime/core/protocol.h"
#include "runtime/engine/checkpoint.h"
#include "runtime/engine/peer_engine.h"
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

// Bytes and frames sent are counted in one place: when the transport reports a send complete
// (LivePeer::on_send_done), model frames being a subset of all frames; a send that fails or is
// refused is not counted as sent. The counters themselves are the engine's (PeerCounters).
struct CodecBytes {
  std::mutex mu;
  std::map<std::string, uint64_t> bytes;  // model bytes sent per codec
};

// The peer's CSV: whole rows or nothing. Each row goes out in write() calls on the file itself
// (no stdio buffer that could flush half a row later); a row that cannot be written whole (a
// full disk) is cut back off, so the file always ends with a complete row. Opened to append
// (a resumed peer), a torn last line left by a crash is cut back to the last newline first.
class RowFile {
 public:
  RowFile() = default;
  RowFile(const RowFile&) = delete;
  RowFile& operator=(const RowFile&) = delete;
  ~RowFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  Status open(const std::string& path, bool append, const std::string& header) {
    path_ = path;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? 0 : O_TRUNC), 0644);
    if (fd_ < 0) return Error(Code::kIo, "cannot write " + path + ": " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) return Error(Code::kIo, "cannot stat " + path + ": " + std::strerror(errno));
    size_ = append ? st.st_size : 0;
    if (size_ > 0) {  // keep whole lines only
      int rfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      off_t end = size_;
      char c = 0;
      while (rfd >= 0 && end > 0 && ::pread(rfd, &c, 1, end - 1) == 1 && c != '\n') --end;
      if (rfd >= 0) ::close(rfd);
      if (end != size_) {
        if (::ftruncate(fd_, end) != 0) return Error(Code::kIo, "cannot trim " + path + ": " + std::strerror(errno));
        MYCEL_LOG_WARN("runtime", "{}: a torn last line ({} bytes) was cut off", path, static_cast<long long>(size_ - end));
        size_ = end;
      }
    }
    if (size_ == 0 && !append_row(header))
      return Error(Code::kIo, "cannot write " + path + ": " + std::strerror(errno));
    return Ok();
  }
  // False (errno set) when the row could not be written whole; the file is then as before.
  bool append_row(std::string_view row) {
    size_t done = 0;
    while (done < row.size()) {
      ssize_t w = ::pwrite(fd_, row.data() + done, row.size() - done, size_ + static_cast<off_t>(done));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        const int err = w < 0 ? errno : ENOSPC;
        (void)!::ftruncate(fd_, size_);
        errno = err;
        return false;
      }
      done += static_cast<size_t>(w);
    }
    size_ += static_cast<off_t>(done);
    return true;
  }
  Status close() {
    if (fd_ < 0) return Ok();
    int r = ::close(fd_);
    fd_ = -1;
    if (r != 0) return Error(Code::kIo, "cannot write " + path_ + ": " + std::strerror(errno));
    return Ok();
  }
  bool is_open() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
  off_t size_ = 0;
  std::string path_;
};

class LivePeer final : public EngineHost {
 public:
  explicit LivePeer(const PeerArgs& a) : args_(a), cfg_(a.cfg), params_(a.cfg.params) {}
  ~LivePeer() {
    worker_.drain();
    if (ckpt_thread_.joinable()) ckpt_thread_.join();
  }

  Status setup();
  Status run(const std::atomic<bool>* stop);
  Status write_class_names(const std::vector<std::string>& names);
  Status make_out_dir();  // args_.out_dir, or an error naming it (never an exception)

 private:
  // Seconds into the run: a resumed peer goes on from its checkpoint's time (t_offset_).
  double now() const { return t_offset_ + std::chrono::duration<double>(Clock::now() - t0_).count(); }
  // EngineHost: the engine's I/O goes to the transport, its compute to the worker thread.
  void send_model(const ModelSend& s) override;
  void send_view(const std::string& to, MsgKind kind, const std::vector<Descriptor>& entries) override;
  void post(std::function<void()> task) override { worker_.post(std::move(task)); }
  size_t compute_backlog() const override { return worker_.pending(); }
  Status train(int steps, float lr, uint64_t age) override {
    return trainer_->train_steps(static_cast<size_t>(steps), lr, age);
  }
  CodecContext& decoder() override { return *dec_; }
  CodecContext& encoder() override { return *enc_; }
  void recycle(std::vector<uint8_t>&& bytes) override {
    std::lock_guard lk(recycle_mu_);
    recycle_box_.push_back(std::move(bytes));
  }
  PeerCounters& m() { return engine_->counters(); }

  void on_frame(tp::Frame&& f);
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
  std::set<std::string> unreachable_;
  std::set<std::string> reached_;  // peers heard from (a frame or a connection) at least once
  void encode_and_queue(const ModelSend& s, tp::SendBuffer buf);
  // Received frames the worker is done with, handed back to the transport by the loop.
  std::mutex recycle_mu_;
  std::vector<std::vector<uint8_t>> recycle_box_;
  void evaluate(double t);
  Result<models::EvalStats> evaluate_chunks();
  std::optional<data::TestChunks> test_chunks_;  // a large test set, read a chunk at a time
  data::Dataset chunk_;
  Status write_summary(double t);
  // The counters and live parameters as a snapshot (any thread); with_links adds the transport's
  // per-link figures (loop thread only: the transport is single-threaded).
  std::shared_ptr<control::PeerSnapshot> snapshot(double t, bool with_links);
  void publish(double t, const char* state);
  std::mutex eval_mu_;
  control::Histogram eval_hist_ = control::Histogram::with_bounds({0.001, 0.01, 0.1, 1, 10});
  control::SnapshotBox box_;
  control::EventRing events_;
  std::unique_ptr<control::ControlServer> ctl_;
  std::atomic<bool> stop_requested_{false};

  // Checkpoints (runtime/engine/checkpoint.h). The loop takes the protocol state and starts a
  // job; the worker copies the model, velocity, residual and trainer position (the state every
  // task posted before it left); a writer thread encodes and writes the file, off the loop and
  // off the compute thread. One job at a time.
  using CkptWaiter = std::shared_ptr<std::promise<Result<std::string>>>;
  struct CkptJob {
    ckpt::Checkpoint c;
    std::vector<CkptWaiter> waiters;
  };
  Status resume();
  void start_checkpoint(double t, std::vector<CkptWaiter> waiters);
  Status copy_compute_state(ckpt::Checkpoint& c);
  void write_checkpoint(std::shared_ptr<CkptJob> job, Status copied);
  void wait_checkpoint();  // the job in flight, if any, is done (loop thread, after a drain)
  std::string ckpt_dir_;
  ckpt::Header ckpt_want_;
  uint64_t ckpt_seq_ = 0;
  std::atomic<bool> ckpt_busy_{false};
  std::thread ckpt_thread_;  // the writer (started by the worker, joined by the next job or the end)
  std::mutex ckpt_mu_;
  std::vector<CkptWaiter> ckpt_requests_;  // POST /checkpoint, waiting for the loop
  std::atomic<uint64_t> ckpt_written_{0}, ckpt_failed_{0};
  Status ckpt_last_;  // the last job's outcome (under ckpt_mu_)
  bool ckpt_closed_ = false;  // under ckpt_mu_: no more requests (the last checkpoint is on its way)
  double t_offset_ = 0;
  bool resumed_ = false;

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
  std::unique_ptr<PeerEngine> engine_;
  std::unique_ptr<CodecContext> enc_, dec_;
  Buffer<float> residual_;
  CodecBytes by_codec_;
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
  RowFile csv_;
  std::atomic<bool> csv_failed_{false};
  std::atomic<double> last_acc_{0}, last_loss_{0};
  std::atomic<uint64_t> age_seen_{0};
  Worker worker_;  // last: destroyed (joined) first, while everything its tasks use still exists
};

// String labels (a csv: data set) were mapped to 0..C-1 in sorted order: the mapping goes to the
// run folder as classes.csv (index,name), written whole or not at all.
Status LivePeer::write_class_names(const std::vector<std::string>& names) {
  MYCEL_CHECK(make_out_dir());
  std::string text = "index,name\n";
  for (size_t i = 0; i < names.size(); ++i) text += std::to_string(i) + "," + names[i] + "\n";
  // Written whole (temporary file, checked writes, fsync, rename) or not at all.
  return ckpt::write_atomic(args_.out_dir + "/classes.csv",
                            std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

Status LivePeer::make_out_dir() {
  std::error_code ec;
  std::filesystem::create_directories(args_.out_dir, ec);
  if (ec) return Error(Code::kIo, "cannot create the output folder " + args_.out_dir + ": " + ec.message());
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
  to.key_file = cfg_.transport.key_file;  // empty: unauthenticated, with the transport's warning
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

  ProtocolOptions po = protocol_options(cfg_, args_.id, fed_server ? 0 : shard_.n);
  po.self = tr_->local_address();
  po.seeds = args_.seeds;
  po.peers = args_.peers;
  MYCEL_ASSIGN_OR_RETURN(auto core, make_protocol(cfg_.protocol.name, po, &params_));
  EngineOptions eo;
  eo.id = args_.id;
  eo.protocol = cfg_.protocol.name;
  eo.num_params = model_->num_params();
  eo.partitions = po.partitions;
  eo.members = std::make_shared<const std::vector<std::string>>(args_.peers);
  eo.schedule = sched_;
  eo.max_backlog = kMaxPendingCompute;
  MYCEL_ASSIGN_OR_RETURN(engine_, PeerEngine::create(eo, std::move(core), &params_, *dev_, model_->params().data(),
                                                     residual_.data()));

  // Checkpoints: what a checkpoint of this peer must agree on, where they go, and the sequence
  // to go on from (never reusing a number, even of a damaged file).
  ckpt_want_.protocol = cfg_.protocol.name;
  MYCEL_ASSIGN_OR_RETURN(auto mspec, models::parse_model_spec(cfg_.model));
  ckpt_want_.model = mspec.text();
  ckpt_want_.num_params = model_->num_params();
  ckpt_want_.partitions = static_cast<uint32_t>(po.partitions);
  ckpt_want_.peer_id = args_.id;
  ckpt_want_.config = ckpt::must_match_keys(cfg_);
  ckpt_want_.config_hash = ckpt::hash_keys(ckpt_want_.config);
  ckpt_dir_ = cfg_.checkpoint.dir.empty() ? args_.out_dir : cfg_.checkpoint.dir;
  if (!ckpt_dir_.empty()) {
    auto have = ckpt::list(ckpt_dir_, args_.id);
    if (!have.empty()) ckpt_seq_ = have.front().sequence;
  }
  if (cfg_.checkpoint.every_s > 0 && ckpt_dir_.empty())
    return Error(Code::kInvalidArgument, "checkpoint.every_s is set but there is no folder for checkpoints: set "
                                         "checkpoint.dir or --out");
  if (!args_.resume_dir.empty()) MYCEL_CHECK(resume());

  if (!args_.out_dir.empty()) {
    MYCEL_CHECK(make_out_dir());
    std::string path = args_.out_dir + "/peer-" + std::to_string(args_.id) + ".csv";
    // A resumed peer goes on with the rows it wrote before it stopped.
    std::error_code ec;
    const bool append = resumed_ && std::filesystem::file_size(path, ec) > 0 && !ec;
    MYCEL_CHECK(csv_.open(path, append, control::csv_header()));
  }
  // The control endpoint (off unless control.enabled: `mycel run` turns it on, on loopback).
  if (cfg_.control.enabled) {
    MYCEL_ASSIGN_OR_RETURN(auto copt, control::ServerOptions::from_config(cfg_.control, args_.out_dir));
    auto hooks = control::ControlHooks::for_param_store(params_, &stop_requested_);
    // POST /checkpoint: the loop writes one at its next cycle; the request waits for the file.
    hooks.checkpoint = [this]() -> Result<std::string> {
      auto w = std::make_shared<std::promise<Result<std::string>>>();
      auto done = w->get_future();
      {
        std::lock_guard lk(ckpt_mu_);
        if (ckpt_closed_) return Error(Code::kUnavailable, "the peer is stopping (its last checkpoint is written)");
        ckpt_requests_.push_back(w);
      }
      if (done.wait_for(std::chrono::seconds(120)) != std::future_status::ready)
        return Error(Code::kTimeout, "no checkpoint written within 120 s");
      return done.get();
    };
    MYCEL_ASSIGN_OR_RETURN(ctl_, control::ControlServer::start(copt, std::move(hooks), &box_, &events_));
    if (!args_.out_dir.empty()) MYCEL_CHECK(ctl_->write_endpoint_file(args_.out_dir, args_.id, cfg_.control.token_file));
    publish(0, "starting");
    MYCEL_LOG_INFO("runtime", "peer {} control endpoint at {}", args_.id, ctl_->url());
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
    ++m().dropped_sends;  // back-pressure: this exchange is skipped, the next period tries again
  } else {
    on_unreachable(to, s);
  }
}

// A send to `peer` failed, or its connection closed. A peer never reached yet (it has not
// started, or is starting) is not a failure: the protocol probes it until it answers.
void LivePeer::on_unreachable(const std::string& peer, const Status& why, bool count) {
  if (count) {
    if (reached_.count(peer)) ++m().send_failures;
    else ++m().unreached_sends;
  }
  if (reached_.count(peer)) note_unreachable(peer, why);
  if (ctl_) events_.push("peer_down", peer + (why.is_ok() ? std::string() : ": " + why.to_string()));
  engine_->peer_down(now(), peer, *this);
}

void LivePeer::on_send_done(uint64_t token, bool ok) {
  auto it = inflight_.find(token);
  if (it == inflight_.end()) return;
  const InFlight& w = it->second;
  if (ok) {
    m().bytes_sent += w.bytes;
    ++m().frames_sent;
    if (w.fp32_bytes) {
      m().model_bytes_sent += w.bytes;
      m().fp32_bytes_equivalent += w.fp32_bytes;
      ++m().models_sent;
      std::lock_guard lk(by_codec_.mu);
      by_codec_.bytes[w.codec] += w.bytes;
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

// Runs on the worker: the engine encodes the model as it is now into the frame buffer (a pooled
// send buffer acquired by the loop, or a fresh vector), queued for the loop to send. A pooled
// buffer always goes back to the loop (sent, or returned to the pool there): the transport is
// single-threaded.
void LivePeer::encode_and_queue(const ModelSend& s, tp::SendBuffer buf) {
  std::vector<uint8_t> frame;
  if (!buf) frame.resize(s.frame_bytes);
  const std::span<uint8_t> room = buf ? buf.span() : std::span<uint8_t>(frame);
  auto used = engine_->encode_frame(s, ++seq_, room, *enc_);
  std::lock_guard lk(out_mu_);
  if (!used) {
    MYCEL_LOG_WARN("runtime", "not sending the model: {}", used.status().to_string());
    if (buf) outbox_.push_back(Outgoing{s.to, {}, std::move(buf), 0, {}});
    return;
  }
  InFlight what;
  what.fp32_bytes = s.fp32_frame_bytes;
  what.codec = s.codec;
  if (!buf) frame.resize(*used);
  outbox_.push_back(Outgoing{s.to, std::move(frame), std::move(buf), *used, std::move(what)});
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
    else if (st.code() == Code::kNoResource) ++m().dropped_sends;
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

// The engine's SendModel: a pooled send buffer is acquired here, on the loop (back-pressure when
// every one is in flight), and the encoding goes to the worker.
void LivePeer::send_model(const ModelSend& s) {
  auto buf = std::make_shared<tp::SendBuffer>();
  if (auto b = tr_->acquire_send_buffer(s.frame_bytes); b) {
    *buf = std::move(b).value();
  } else if (b.status().code() == Code::kNoResource) {
    ++m().dropped_sends;  // every pooled buffer is in flight: back-pressure, skip this one
    return;
  }  // else no pool on this transport: a vector
  worker_.post([this, s, buf] { encode_and_queue(s, std::move(*buf)); });
}

void LivePeer::on_frame(tp::Frame&& f) {
  ++m().frames_received;
  m().bytes_received += f.bytes.size();
  unreachable_.erase(f.from);
  reached_.insert(f.from);
  // Fixed-membership protocols (D-PSGD, FedAvg) take frames from the listed peers only.
  if (!engine_->accepts(f.from)) return;
  tp::FrameError fe;
  auto view = decoder_->decode(f.from, f.bytes, &fe);
  if (!view) {
    ++m().rejected_frames;
    if (ctl_) events_.push("rejected_frame", f.from + ": " + std::string(tp::frame_error_name(fe)));
    if (tp::frame_fate(fe) == tp::FrameFate::kClose) tr_->disconnect(f.from);
    return;
  }
  const auto& h = view->header;
  const bool reply = (h.flags & tp::kFlagReply) != 0;
  switch (h.type) {
    case tp::MessageType::kView: {
      auto entries = parse_view(view->payload);
      if (!entries) {
        ++m().rejected_frames;
        MYCEL_LOG_DEBUG("runtime", "bad view from {}: {}", f.from, entries.status().to_string());
        return;
      }
      engine_->on_view(now(), f.from, reply, std::move(entries).value(), *this);
      return;
    }
    case tp::MessageType::kModel: {
      const size_t payload_offset = static_cast<size_t>(view->payload.data() - f.bytes.data());
      const uint64_t age = h.model_age, version = h.model_version, count = h.param_count;
      engine_->on_model(now(), f.from, reply, age, version, count,
                        std::make_shared<std::vector<uint8_t>>(std::move(f.bytes)), payload_offset, *this);
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
  const auto t0 = Clock::now();
  auto e = test_chunks_ ? evaluate_chunks() : trainer_->evaluate(test_);
  {
    std::lock_guard lk(eval_mu_);
    eval_hist_.observe(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  if (!e) {
    MYCEL_LOG_WARN("runtime", "evaluation failed: {}", e.status().to_string());
    return;
  }
  last_acc_ = e->accuracy;
  last_loss_ = e->loss;
  if (csv_.is_open()) {
    auto snap = snapshot(t, false);
    // Checked: a row that cannot be written whole (a full disk) is cut back off and logged once,
    // and the peer exits non-zero at the end naming its CSV; later rows are still tried.
    if (!csv_.append_row(control::csv_row(*snap)) && !csv_failed_.exchange(true))
      MYCEL_LOG_WARN("runtime", "peer {}: cannot write peer-{}.csv ({}): its rows are incomplete", args_.id, args_.id,
                     std::strerror(errno));
  }
}

std::shared_ptr<control::PeerSnapshot> LivePeer::snapshot(double t, bool with_links) {
  auto s = std::make_shared<control::PeerSnapshot>();
  const PeerCounters& c = engine_->counters();
  s->peer = args_.id;
  s->address = tr_->local_address();
  s->seconds = t;
  s->age = age_seen_.load();
  s->test_accuracy = last_acc_.load();
  s->test_loss = last_loss_.load();
  s->samples = shard_.n;
  s->bytes_sent = c.bytes_sent.load();
  s->bytes_received = c.bytes_received.load();
  s->frames_sent = c.frames_sent.load();
  s->frames_received = c.frames_received.load();
  s->model_bytes_sent = c.model_bytes_sent.load();
  s->fp32_bytes_equivalent = c.fp32_bytes_equivalent.load();
  s->models_sent = c.models_sent.load();
  s->merges = c.merges.load();
  s->train_steps = c.train_steps.load();
  s->rejected_frames = c.rejected_frames.load();
  s->rejected_payloads = c.rejected_payloads.load();
  s->dropped_sends = c.dropped_sends.load();
  s->send_failures = c.send_failures.load();
  s->unreached_sends = c.unreached_sends.load();
  s->skipped_steps = c.skipped_steps.load();
  s->sender_mismatches = c.sender_mismatches.load();
  if (ctl_) s->control_refused = ctl_->refused_requests() + ctl_->rejected_connections();
  s->checkpoints_written = ckpt_written_.load();
  s->checkpoint_failures = ckpt_failed_.load();
  {
    std::lock_guard lk(eval_mu_);
    s->eval_seconds = eval_hist_;
  }
  {
    std::lock_guard lk(by_codec_.mu);
    s->bytes_by_codec = by_codec_.bytes;
  }
  s->params = *params_.get();
  s->params_version = params_.version();
  if (with_links) {
    const auto& ps = engine_->core().stats();
    s->wakeups = ps.wakeups;
    s->peers_down = ps.peers_down;
    s->ages_clamped = ps.ages_clamped;
    s->links = tr_->stats();
  }
  return s;
}

// Runs on the loop: what the control endpoint serves.
void LivePeer::publish(double t, const char* state) {
  if (!ctl_) return;
  age_seen_ = engine_->core().age();
  auto s = snapshot(t, true);
  s->state = state;
  box_.publish(std::move(s));
}

Status LivePeer::write_summary(double t) {
  if (args_.out_dir.empty()) return Ok();
  const std::string path = args_.out_dir + "/peer-" + std::to_string(args_.id) + ".json";
  auto s = snapshot(t, true);
  s->age = engine_->core().age();
  s->state = "done";
  const std::string text = control::summary_json(*s).dump() + "\n";
  // Whole or not at all: never an empty or half-written result in place (checked writes, fsync).
  return ckpt::write_atomic(path, std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
}

Status LivePeer::run(const std::atomic<bool>* stop) {
  t0_ = Clock::now();
  engine_->start(now(), *this);
  const double ckpt_every = cfg_.checkpoint.every_s;
  double next_ckpt = ckpt_every > 0 ? now() + ckpt_every : std::numeric_limits<double>::infinity();
  double next_publish = 0;
  uint64_t params_seen = params_.version();
  double next_eval = 0;
  const double duration = cfg_.duration_s;
  for (;;) {
    double t = now();
    if ((stop && stop->load()) || stop_requested_.load() || (duration > 0 && t >= duration) ||
        (cfg_.rounds > 0 && engine_->core().stats().wakeups >= cfg_.rounds))
      break;
    if (t >= next_eval) {
      age_seen_ = engine_->core().age();
      worker_.post([this, t] { evaluate(t); });
      next_eval = t + cfg_.eval.every_s;
    }
    if (ctl_ && t >= next_publish) {
      publish(t, "running");
      next_publish = t + 0.5;
      if (params_.version() != params_seen) {
        params_seen = params_.version();
        events_.push("params", "version " + std::to_string(params_seen) + ": codec " + params_.get()->codec);
      }
    }
    if (t >= engine_->next_tick()) engine_->tick(t, *this);
    if (!ckpt_busy_.load()) {
      std::vector<CkptWaiter> asked;
      {
        std::lock_guard lk(ckpt_mu_);
        asked.swap(ckpt_requests_);
      }
      if (!asked.empty() || t >= next_ckpt) {
        start_checkpoint(t, std::move(asked));
        if (t >= next_ckpt) next_ckpt = t + ckpt_every;
      }
    }
    flush_outbox();
    double wait = std::min({engine_->next_tick(), next_eval, duration > 0 ? duration : 1e18}) - now();
    if (worker_.pending() > 0) wait = std::min(wait, 0.002);  // an encode may queue a send
    wait = std::clamp(wait, 0.0, 0.25);
    for (auto& e : tr_->poll(wait)) {
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
          engine_->peer_up(now(), e.peer, *this);
          if (ctl_) events_.push("peer_up", e.peer);
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
  age_seen_ = engine_->core().age();
  worker_.post([this, t_end] { evaluate(t_end); });
  worker_.drain();
  if (stop_requested_.load()) events_.push("stop", "stopped by the control endpoint");
  // The last checkpoint, on a clean stop (end of run, SIGTERM, POST /stop): written whole, or
  // the peer exits non-zero saying why (the previous checkpoint stays in place).
  Status final_ckpt;
  {
    wait_checkpoint();
    std::vector<CkptWaiter> asked;
    {
      std::lock_guard lk(ckpt_mu_);
      asked.swap(ckpt_requests_);
      ckpt_closed_ = true;
    }
    if (ckpt_every > 0 || !asked.empty()) {
      start_checkpoint(t_end, std::move(asked));
      worker_.drain();
      wait_checkpoint();
      std::lock_guard lk(ckpt_mu_);
      if (ckpt_every > 0) final_ckpt = ckpt_last_;
    }
  }
  publish(t_end, "done");
  MYCEL_CHECK(write_summary(t_end));
  if (ckpt_written_.load() || ckpt_failed_.load())
    MYCEL_LOG_INFO("runtime", "peer {}: {} checkpoints written, {} failed", args_.id, ckpt_written_.load(),
                   ckpt_failed_.load());
  MYCEL_LOG_INFO("runtime", "peer {} done after {:.1f}s: test accuracy {:.4f}, {} merges, {} bytes sent", args_.id,
                 t_end, last_acc_.load(), m().merges.load(), m().bytes_sent.load());
  // Let in-flight sends finish briefly, then close.
  auto until = Clock::now() + std::chrono::milliseconds(200);
  while (Clock::now() < until) tr_->poll(0.05);
  tr_->close();
  if (ctl_) ctl_->stop();
  MYCEL_CHECK(csv_.close());
  if (csv_failed_.load())
    return Error(Code::kIo, "peer-" + std::to_string(args_.id) +
                                ".csv is incomplete: rows could not be written (those written are whole)");
  if (!final_ckpt.is_ok()) return Error(final_ckpt.code(), "the last checkpoint: " + final_ckpt.message());
  return Ok();
}

Status LivePeer::resume() {
  std::vector<std::string> skipped;
  auto l = ckpt::load_latest(args_.resume_dir, ckpt_want_, &skipped);
  for (const auto& why : skipped) {
    MYCEL_LOG_WARN("runtime", "skipping a damaged checkpoint: {}", why);
    std::fprintf(stderr, "mycel peer %d: skipping a damaged checkpoint: %s\n", args_.id, why.c_str());
  }
  if (!l) return l.status();
  const ckpt::Checkpoint& c = l->ckpt;
  const size_t n = model_->num_params();
  MYCEL_CHECK(model_->params().upload(c.params.data(), n));
  auto& vel = trainer_->optimizer().velocity();
  if (!c.velocity.empty() && vel.data()) MYCEL_CHECK(vel.upload(c.velocity.data(), n));
  if (!c.residual.empty()) {
    MYCEL_CHECK(residual_.upload(c.residual.data(), n));
    engine_->set_residual_codec(c.residual_codec);
  }
  MYCEL_CHECK(trainer_->restore_position(models::Trainer::Position{c.trainer.orders_drawn, c.trainer.cursor,
                                                                   c.trainer.sgd_steps, c.trainer.epoch}));
  if (Status s = engine_->core().restore_state(c.protocol_state); !s.is_ok())
    return Error(s.code(), l->path + ": " + s.message());
  auto live = apply_param_changes(*params_.get(), c.live_params);
  if (!live) return Error(live.status().code(), l->path + ": live parameters: " + live.status().message());
  MYCEL_CHECK(params_.restore(std::move(live).value(), c.params_version));
  std::map<std::string, uint64_t> counters(c.counters.begin(), c.counters.end());
  m().for_each([&counters](const char* name, std::atomic<uint64_t>& v) {
    if (auto it = counters.find(name); it != counters.end()) v = it->second;
  });
  MYCEL_CHECK(dev_->sync());
  t_offset_ = c.header.peer_seconds;
  resumed_ = true;
  age_seen_ = engine_->core().age();
  ckpt_seq_ = std::max(ckpt_seq_, c.header.sequence);
  MYCEL_LOG_INFO("runtime", "peer {} resumes from {} (age {}, {:.1f} s into the run)", args_.id, l->path,
                 engine_->core().age(), c.header.peer_seconds);
  std::fprintf(stderr, "mycel peer %d: resuming from %s (checkpoint %llu, age %llu, %.1f s into the run)\n", args_.id,
               l->path.c_str(), static_cast<unsigned long long>(c.header.sequence),
               static_cast<unsigned long long>(engine_->core().age()), c.header.peer_seconds);
  return Ok();
}

// Loop thread: the protocol's state now; the rest is copied by the worker after every task
// posted before (so model and protocol state agree), and written by the writer thread.
void LivePeer::start_checkpoint(double t, std::vector<CkptWaiter> waiters) {
  auto job = std::make_shared<CkptJob>();
  job->waiters = std::move(waiters);
  if (ckpt_dir_.empty()) {
    write_checkpoint(job, Error(Code::kInvalidArgument, "no checkpoint folder: set checkpoint.dir or --out"));
    return;
  }
  ckpt::Checkpoint& c = job->c;
  c.header = ckpt_want_;
  c.header.sequence = ++ckpt_seq_;
  c.header.peer_seconds = t;
  c.header.unix_time = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  c.header.age = engine_->core().age();
  c.protocol_state = engine_->core().save_state();
  c.live_params = live_param_values(*params_.get());
  c.params_version = params_.version();
  m().for_each([&c](const char* name, const std::atomic<uint64_t>& v) { c.counters.emplace_back(name, v.load()); });
  ckpt_busy_ = true;
  worker_.post([this, job] {
    Status s = copy_compute_state(job->c);
    if (ckpt_thread_.joinable()) ckpt_thread_.join();  // the previous writer (already done)
    ckpt_thread_ = std::thread([this, job, s] { write_checkpoint(job, s); });
  });
}

// Worker thread.
Status LivePeer::copy_compute_state(ckpt::Checkpoint& c) {
  const size_t n = model_->num_params();
  c.params.resize(n);
  MYCEL_CHECK(model_->params().download(c.params.data(), n));
  auto& vel = trainer_->optimizer().velocity();
  if (vel.data()) {
    c.velocity.resize(n);
    MYCEL_CHECK(vel.download(c.velocity.data(), n));
  }
  c.residual_codec = engine_->residual_codec();
  if (!c.residual_codec.empty()) {
    c.residual.resize(n);
    MYCEL_CHECK(residual_.download(c.residual.data(), n));
  }
  const auto pos = trainer_->position();
  c.trainer = ckpt::TrainerPos{pos.orders_drawn, pos.cursor, pos.sgd_steps, pos.epoch};
  return Ok();
}

// Writer thread (or the loop, for a job that could not start).
void LivePeer::write_checkpoint(std::shared_ptr<CkptJob> job, Status copied) {
  Status s = copied;
  std::string path;
  if (s.is_ok()) {
    const auto bytes = ckpt::encode(job->c);
    path = ckpt_dir_ + "/" + ckpt::file_name(args_.id, job->c.header.sequence);
    std::error_code ec;
    std::filesystem::create_directories(ckpt_dir_, ec);
    s = ckpt::write_atomic(path, bytes);
    if (s.is_ok()) ckpt::prune(ckpt_dir_, args_.id, cfg_.checkpoint.keep);
  }
  if (s.is_ok()) {
    ++ckpt_written_;
    MYCEL_LOG_DEBUG("runtime", "peer {} checkpoint {} written", args_.id, path);
    if (ctl_) events_.push("checkpoint", path);
  } else {
    const uint64_t k = ++ckpt_failed_;
    if (k <= 16 || (k & (k - 1)) == 0)
      MYCEL_LOG_WARN("runtime", "peer {}: checkpoint failed ({} so far), the previous one is kept: {}", args_.id, k,
                     s.to_string());
    if (ctl_) events_.push("checkpoint_failed", s.message());
  }
  {
    std::lock_guard lk(ckpt_mu_);
    ckpt_last_ = s;
  }
  for (auto& w : job->waiters) {
    w->set_value(s.is_ok() ? Result<std::string>(path) : Result<std::string>(s));
  }
  ckpt_busy_ = false;
}

void LivePeer::wait_checkpoint() {
  while (ckpt_busy_.load()) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  worker_.drain();  // the task that started the writer has returned: ckpt_thread_ is set
  if (ckpt_thread_.joinable()) ckpt_thread_.join();
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
