#include "runtime/sim/simulator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/log.h"
#include "kernels/codec.h"
#include "kernels/device.h"
#include "kernels/train_ops.h"
#include "models/data/dataset.h"
#include "models/data/partition.h"
#include "models/data/rng.h"
#include "models/model.h"
#include "models/optim.h"
#include "models/trainer.h"
#include "runtime/core/protocol.h"
#include "runtime/core/rng.h"
#include "runtime/driver/view_codec.h"
#include "runtime/engine/peer_engine.h"
#include "runtime/sim/network.h"
#include "transport/frame.h"

namespace mycel::runtime::sim {
namespace {

namespace tp = mycel::transport;
using Clock = std::chrono::steady_clock;
constexpr double kInf = std::numeric_limits<double>::infinity();

// Simulated addresses: "s:ID" (short enough for std::string's inline storage: no allocation).
std::string address(uint32_t id) { return "s:" + std::to_string(id); }
bool parse_address(const std::string& a, uint32_t* id) {
  if (a.size() < 3 || a[0] != 's' || a[1] != ':') return false;
  auto r = std::from_chars(a.data() + 2, a.data() + a.size(), *id);
  return r.ec == std::errc() && r.ptr == a.data() + a.size();
}

size_t rss_bytes() {
  long pages = 0, resident = 0;
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
  std::fclose(f);
  return static_cast<size_t>(resident) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
}

double process_cpu_s() {
  timespec ts{};
  if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

size_t available_memory() {
  // cgroup v2 limit when one is set, else physical memory.
  size_t phys = static_cast<size_t>(sysconf(_SC_PHYS_PAGES)) * static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::ifstream in("/sys/fs/cgroup/memory.max");
  std::string v;
  if (in >> v && v != "max") {
    size_t lim = 0;
    auto r = std::from_chars(v.data(), v.data() + v.size(), lim);
    if (r.ec == std::errc() && lim > 0) phys = std::min(phys, lim);
  }
  return phys;
}

enum class EvKind : uint8_t { kTick, kArrive, kDeliver, kFail, kOnline, kOffline };

// A message on the way.
struct SimMsg {
  uint32_t from = 0, to = 0;
  bool model = false, reply = false;
  uint64_t age = 0, version = 0, param_count = 0;
  FrameBytes bytes;                 // model: the whole frame, as the live peer sends it
  std::vector<Descriptor> entries;  // view
  size_t wire_bytes = 0;
  double start = 0, up_end = 0;     // uplink: when the first byte left, when the last did
  double latency = 0;
};

struct Event {
  double t;
  uint64_t key;  // (peer that caused it << 32) | that peer's counter: a total, seed-only order
  uint32_t peer;
  EvKind kind;
  SimMsg* msg;
  bool operator>(const Event& o) const { return t != o.t ? t > o.t : key > o.key; }
};

// The worker's event queue: a 4-ary min-heap on (time, key), the order std::priority_queue gave
// (so a seed gives the same run), with half the levels of a binary heap and the four children
// of a node in one or two cache lines.
class EventHeap {
 public:
  bool empty() const { return v_.empty(); }
  const Event& top() const { return v_.front(); }
  void push(const Event& e) {
    size_t i = v_.size();
    v_.push_back(e);
    while (i > 0) {
      const size_t parent = (i - 1) / 4;
      if (!(v_[parent] > e)) break;
      v_[i] = v_[parent];
      i = parent;
    }
    v_[i] = e;
  }
  void pop() {
    const Event last = v_.back();
    v_.pop_back();
    const size_t n = v_.size();
    if (n == 0) return;
    size_t i = 0;
    for (;;) {
      const size_t c = 4 * i + 1;
      if (c >= n) break;
      size_t best = c;
      const size_t end = std::min(c + 4, n);
      for (size_t k = c + 1; k < end; ++k)
        if (v_[best] > v_[k]) best = k;
      if (!(last > v_[best])) break;
      v_[i] = v_[best];
      i = best;
    }
    v_[i] = last;
  }
  const std::vector<Event>& items() const { return v_; }
  // The event after top() (the least of the root's children), or null.
  const Event* second() const {
    const size_t n = std::min<size_t>(v_.size(), 5);
    if (n < 2) return nullptr;
    size_t best = 1;
    for (size_t k = 2; k < n; ++k)
      if (v_[best] > v_[k]) best = k;
    return &v_[best];
  }

 private:
  std::vector<Event> v_;
};

struct Peer {
  std::unique_ptr<PeerEngine> engine;
  const Protocol* core = nullptr;  // engine->core(), for prefetching
  uint32_t shard_off = 0, shard_n = 0, cursor = 0, orders = 0;
  uint32_t counter = 0;
  bool online = false, started = false;
  double tick_at = kInf;  // the tick event in the queue (stale ones are skipped)
  double up_free = 0, down_free = 0;
  uint64_t rng = 0;       // latency and loss draws
};

struct Shared;

// One worker thread's compute context and event queue; the EngineHost of the peer it runs.
class Worker final : public EngineHost {
 public:
  Worker(Shared& s, int index) : sh_(s), index_(index) {}
  Status setup();
  void run_window(double end);
  void push(const Event& e) { q_.push(e); }
  double next_time() const { return q_.empty() ? kInf : q_.top().t; }
  Result<models::EvalStats> evaluate(uint32_t peer);

  // EngineHost.
  void send_model(const ModelSend& s) override;
  void send_view(const std::string& to, MsgKind kind, const std::vector<Descriptor>& entries) override;
  void post(std::function<void()> task) override { task(); }
  bool runs_inline() const override { return true; }
  size_t compute_backlog() const override { return 0; }
  Status train(int steps, float lr, uint64_t age) override;
  CodecContext& decoder() override { return *dec_; }
  CodecContext& encoder() override { return *enc_; }
  void recycle(std::vector<uint8_t>&& bytes) override {
    if (frames_.size() < 4096) frames_.push_back(std::move(bytes));
  }
  // Messages come from and go back to the worker running their event (free lists: no malloc
  // per message once the run is warm).
  SimMsg* alloc_msg() {
    if (msgs_.empty()) return new SimMsg();
    SimMsg* m = msgs_.back();
    msgs_.pop_back();
    return m;
  }
  void free_msg(SimMsg* m) {
    if (!m) return;
    m->bytes.reset();
    m->entries.clear();
    if (msgs_.size() < 65536) msgs_.push_back(m);
    else delete m;
  }
  ~Worker() override {
    // Messages still on the way when the run ends (in the queue or waiting at a window's end).
    for (const Event& e : q_.items()) delete e.msg;
    for (const Event& e : outbox) delete e.msg;
    for (SimMsg* m : msgs_) delete m;
  }

  std::vector<Event> outbox;  // events for peers of other workers, handed over at window ends
  uint64_t events = 0, lost_loss = 0, lost_sender = 0, lost_receiver = 0;
  std::map<std::string, uint64_t> bytes_by_codec;
  double train_wall_s = 0;

 private:
  void dispatch(const Event& e);
  void schedule_tick(uint32_t p);
  struct MsgFree {
    Worker* w;
    void operator()(SimMsg* m) const { w->free_msg(m); }
  };
  using MsgPtr = std::unique_ptr<SimMsg, MsgFree>;
  MsgPtr hold(SimMsg* m) { return MsgPtr(m, MsgFree{this}); }
  bool transmit(MsgPtr m);  // false: the sender went offline before the last byte left
  void emit(const Event& e);
  Event make(double t, uint32_t peer, EvKind kind, SimMsg* m) {
    Peer& src = peers()[cur_];
    return Event{t, (static_cast<uint64_t>(cur_) << 32) | src.counter++, peer, kind, m};
  }
  std::vector<Peer>& peers();

  Shared& sh_;
  int index_;
  std::shared_ptr<Device> dev_;
  std::unique_ptr<models::Model> model_;  // the experiment's shape; training borrows it
  std::unique_ptr<CodecContext> enc_, dec_;
  Buffer<float> xb_, acc_;
  Buffer<int32_t> yb_;
  EventHeap q_;
  uint32_t cur_ = 0;  // the peer being run
  double now_ = 0;
  uint64_t seq_ = 0;
  std::vector<SimMsg*> msgs_;
  std::vector<std::vector<uint8_t>> frames_;
};

struct Shared {
  const ExperimentConfig* cfg = nullptr;
  ParamStore params{RuntimeParams{}};
  // One copy of the parameter set per worker, read by its peers' engines and cores: a shared
  // one's reference count (ParamStore::get, several times per event) bounced between the cores.
  std::vector<std::unique_ptr<ParamStore>> worker_params;
  std::vector<std::string> addresses;  // "s:ID" of every peer, made once
  data::Split data;
  models::InputShape shape;
  std::vector<float> init;  // the initial model
  std::vector<float> arena, residuals, velocity;
  std::vector<int32_t> shard_index;
  std::vector<Peer> peers;
  std::vector<std::unique_ptr<Worker>> workers;
  std::vector<uint32_t> owner_begin;  // worker w runs peers [owner_begin[w], owner_begin[w + 1])
  Network net;
  size_t P = 0;  // parameters per model
  models::LrSchedule sched;
  bool momentum = false;
  float mom = 0, wd = 0;
  int batch = 32;
  double horizon = kInf;
  double lookahead = 0;
  std::shared_ptr<Device> dev;  // for the engines' residual resets (CPU: plain memory)
  int worker_of(uint32_t p) const {
    return static_cast<int>(std::upper_bound(owner_begin.begin(), owner_begin.end(), p) - owner_begin.begin()) - 1;
  }
};

std::vector<Peer>& Worker::peers() { return sh_.peers; }

Status Worker::setup() {
  MYCEL_ASSIGN_OR_RETURN(dev_, make_device("cpu", 1));
  MYCEL_ASSIGN_OR_RETURN(model_, models::make_model(*dev_, sh_.cfg->model, sh_.shape, sh_.cfg->seed));
  MYCEL_CHECK(model_->reserve(std::max(sh_.batch, 256)));
  enc_ = std::make_unique<CodecContext>(*dev_);
  dec_ = std::make_unique<CodecContext>(*dev_);
  MYCEL_ASSIGN_OR_RETURN(xb_, Buffer<float>::make(*dev_, static_cast<size_t>(sh_.batch) * sh_.shape.dim));
  MYCEL_ASSIGN_OR_RETURN(yb_, Buffer<int32_t>::make(*dev_, static_cast<size_t>(sh_.batch)));
  MYCEL_ASSIGN_OR_RETURN(acc_, Buffer<float>::make(*dev_, 2));
  return Ok();
}

// The live peer's Trainer::train_steps, on the peer's shard: batches continue through a
// permutation of the shard, a new one drawn when the current one is used up (a shard smaller
// than a batch is one batch). The model's parameters are copied into the worker's model, the
// steps taken there (the same kernels), and copied back.
Status Worker::train(int steps, float lr, uint64_t age) {
  (void)age;
  const auto t0 = Clock::now();
  Peer& p = peers()[cur_];
  if (p.shard_n == 0) return Ok();
  float* x = sh_.arena.data() + static_cast<size_t>(cur_) * sh_.P;
  float* v = sh_.momentum ? sh_.velocity.data() + static_cast<size_t>(cur_) * sh_.P : nullptr;
  std::memcpy(model_->params().data(), x, sh_.P * sizeof(float));
  int32_t* shard = sh_.shard_index.data() + p.shard_off;
  const uint32_t rows = std::min<uint32_t>(p.shard_n, static_cast<uint32_t>(sh_.batch));
  SgdParams sp;
  sp.lr = lr;
  sp.momentum = sh_.mom;
  sp.weight_decay = sh_.wd;
  for (int s = 0; s < steps; ++s) {
    if (p.cursor + rows > p.shard_n) {
      // A shard of one sample has one permutation: no generator to seed (an mt19937_64 seeding
      // per step was a tenth of the 10,000-peer run, whose peers hold one sample each).
      const uint64_t order = p.orders++;
      if (p.shard_n > 1) {
        data::Rng rng((sh_.cfg->seed * 1000003 + cur_) * 0x9E3779B97F4A7C15ull + order);
        for (uint32_t i = p.shard_n; i > 1; --i) std::swap(shard[i - 1], shard[rng.below(i)]);
      }
      p.cursor = 0;
    }
    MYCEL_CHECK(nn::gather_rows(*dev_, sh_.data.train.x.data(), sh_.data.train.y.data(), sh_.data.train.n,
                                sh_.data.train.dim, shard + p.cursor, rows, xb_.data(), yb_.data()));
    MYCEL_CHECK(model_->forward_backward(xb_.data(), yb_.data(), static_cast<int>(rows), nullptr));
    MYCEL_CHECK(nn::sgd_update(*dev_, model_->params().data(), model_->grads().data(), v, sh_.P, sp));
    p.cursor += rows;
  }
  std::memcpy(x, model_->params().data(), sh_.P * sizeof(float));
  train_wall_s += std::chrono::duration<double>(Clock::now() - t0).count();
  return Ok();
}

Result<models::EvalStats> Worker::evaluate(uint32_t peer) {
  std::memcpy(model_->params().data(), sh_.arena.data() + static_cast<size_t>(peer) * sh_.P, sh_.P * sizeof(float));
  const auto& d = sh_.data.test;
  MYCEL_CHECK(dev_->memset(acc_.data(), 0, acc_.bytes()));
  for (size_t off = 0; off < d.n; off += 256) {
    const int rows = static_cast<int>(std::min<size_t>(256, d.n - off));
    MYCEL_CHECK(model_->evaluate(d.x.data() + off * d.dim, d.y.data() + off, rows, acc_.data()));
  }
  models::EvalStats s;
  s.n = d.n;
  if (d.n) {
    s.loss = double(acc_.data()[0]) / double(d.n);
    s.accuracy = double(acc_.data()[1]) / double(d.n);
  }
  return s;
}

void Worker::emit(const Event& e) {
  if (sh_.worker_of(e.peer) == index_) q_.push(e);
  else outbox.push_back(e);
}

// The uplink: FIFO at the sender's rate; a sender that goes offline before its last byte left
// loses the message. Then loss, latency, and the receiver's side (kArrive, or straight to
// kDeliver when its downlink is unlimited).
bool Worker::transmit(MsgPtr m) {
  Peer& src = peers()[cur_];
  const Uplink u = uplink_transfer(now_, m->wire_bytes, sh_.net.uplink_Bps(cur_), &src.up_free);
  m->start = u.start;
  m->up_end = u.end;
  if (sh_.net.has_churn() && m->up_end > sh_.net.session_end(cur_, now_)) {
    ++lost_sender;  // the sender went offline mid-transfer
    return false;
  }
  PeerCounters& c = src.engine->counters();
  c.bytes_sent += m->wire_bytes;
  ++c.frames_sent;
  if (sh_.net.loss() > 0) {
    SmallRng r(src.rng);
    const bool lost = r.uniform() < sh_.net.loss();
    src.rng = r.state();
    if (lost) {
      ++lost_loss;  // sent (and counted) as the live peer would; lost on the way
      return true;
    }
  }
  m->latency = sh_.net.latency(src.rng);
  const uint32_t to = m->to;
  const bool down_limited = std::isfinite(sh_.net.downlink_Bps(to));
  const double at = m->up_end + m->latency;
  emit(make(at, to, down_limited ? EvKind::kArrive : EvKind::kDeliver, m.release()));
  return true;
}

void Worker::send_model(const ModelSend& s) {
  uint32_t to = 0;
  if (!parse_address(s.to, &to) || to >= peers().size()) return;
  std::vector<uint8_t> room;
  if (!frames_.empty()) {
    room = std::move(frames_.back());
    frames_.pop_back();
  }
  room.resize(s.frame_bytes);
  auto bytes = std::make_shared<std::vector<uint8_t>>(std::move(room));
  auto used = peers()[cur_].engine->encode_frame(s, ++seq_, *bytes, *enc_);
  if (!used) {
    MYCEL_LOG_WARN("sim", "peer {} not sending the model: {}", cur_, used.status().to_string());
    return;
  }
  bytes->resize(*used);
  MsgPtr m = hold(alloc_msg());
  m->from = cur_;
  m->to = to;
  m->model = true;
  m->reply = s.kind == MsgKind::kModelReply;
  m->age = s.age;
  m->version = peers()[cur_].engine->slice_begin(1) == sh_.P ? s.version : s.partition;
  m->param_count = s.length;
  m->wire_bytes = *used;
  m->bytes = std::move(bytes);
  PeerCounters& c = peers()[cur_].engine->counters();
  const size_t wire = m->wire_bytes;
  if (transmit(std::move(m))) {
    // Counted as the live peer counts a completed model send.
    c.model_bytes_sent += wire;
    c.fp32_bytes_equivalent += s.fp32_frame_bytes;
    ++c.models_sent;
    bytes_by_codec[s.codec] += wire;
  }
}

void Worker::send_view(const std::string& to_addr, MsgKind kind, const std::vector<Descriptor>& entries) {
  uint32_t to = 0;
  if (!parse_address(to_addr, &to) || to >= peers().size()) return;
  MsgPtr m = hold(alloc_msg());
  m->from = cur_;
  m->to = to;
  m->model = false;
  m->reply = kind == MsgKind::kShuffleReply;
  m->entries = entries;
  // The live frame's size: header plus the serialised entries.
  size_t bytes = tp::kFrameHeaderBytes + 4;
  for (const auto& d : entries) bytes += 2 + d.address.size() + 4;
  m->wire_bytes = bytes;
  transmit(std::move(m));
}

void Worker::schedule_tick(uint32_t p) {
  Peer& peer = peers()[p];
  const double t = peer.engine->next_tick();
  if (!peer.online || !std::isfinite(t) || t >= peer.tick_at) return;
  peer.tick_at = t;
  q_.push(Event{std::max(t, now_), (static_cast<uint64_t>(p) << 32) | peer.counter++, p, EvKind::kTick, nullptr});
}

void Worker::dispatch(const Event& e) {
  now_ = e.t;
  cur_ = e.peer;
  Peer& p = peers()[e.peer];
  MsgPtr m = hold(e.msg);
  switch (e.kind) {
    case EvKind::kTick:
      if (!p.online || e.t != p.tick_at) return;  // stale (superseded, or the peer went offline)
      p.tick_at = kInf;
      p.engine->tick(now_, *this);
      break;
    case EvKind::kOnline:
      p.online = true;
      p.tick_at = kInf;
      if (!p.started) {  // a peer starts when it is first online
        p.started = true;
        p.engine->start(now_, *this);
      }
      break;
    case EvKind::kOffline:
      p.online = false;
      p.tick_at = kInf;
      return;
    case EvKind::kArrive: {
      // The receiver's downlink, FIFO from the first byte's arrival; the last byte arrives no
      // earlier than it left the sender plus the latency.
      const double end = downlink_transfer(m->start + m->latency, m->up_end + m->latency, m->wire_bytes,
                                           sh_.net.downlink_Bps(e.peer), &p.down_free);
      SimMsg* raw = m.release();
      q_.push(Event{end, e.key, e.peer, EvKind::kDeliver, raw});
      return;
    }
    case EvKind::kDeliver: {
      const double first = m->start + m->latency;
      if (!p.online || (sh_.net.has_churn() && !sh_.net.online_throughout(e.peer, first, now_))) {
        // The receiver is (or went) offline: lost; the sender's connection fails one latency later.
        ++lost_receiver;
        Event f{now_ + std::max(m->latency, sh_.lookahead), e.key, m->from, EvKind::kFail, nullptr};
        SimMsg* note = alloc_msg();
        note->from = m->to;
        f.msg = note;
        emit(f);
        return;
      }
      PeerCounters& c = p.engine->counters();
      ++c.frames_received;
      c.bytes_received += m->wire_bytes;
      const std::string& from = sh_.addresses[m->from];
      if (!p.engine->accepts(from)) break;
      if (m->model) {
        p.engine->on_model(now_, from, m->reply, m->age, m->version, m->param_count, std::move(m->bytes),
                           tp::kFrameHeaderBytes, *this);
      } else {
        p.engine->on_view_lent(now_, from, m->reply, m->entries, *this);
      }
      break;
    }
    case EvKind::kFail:
      if (!p.online) return;
      ++p.engine->counters().send_failures;
      p.engine->peer_down(now_, sh_.addresses[m->from], *this);
      break;
  }
  schedule_tick(e.peer);
}

// Each event touches a peer's state in a 10,000-peer swarm that is not in the cache: the peer
// of the event after next is fetched while this one runs, and its engine, protocol core and
// model one event ahead, its Cyclon view just before it runs (hints only: events pushed meanwhile
// may come first).
void Worker::run_window(double end) {
  while (!q_.empty() && q_.top().t < end) {
    Event e = q_.top();
    q_.pop();
    ++events;
    if (!q_.empty()) {
      if (const Event* n2 = q_.second()) {
        const char* peer = reinterpret_cast<const char*>(&peers()[n2->peer]);
        __builtin_prefetch(peer);
        __builtin_prefetch(peer + sizeof(Peer) - 1);
      }
      const uint32_t next = q_.top().peer;
      const Peer& n1 = peers()[next];
      const char* eng = reinterpret_cast<const char*>(n1.engine.get());
      const char* core = reinterpret_cast<const char*>(n1.core);
      for (int l = 0; l < 6; ++l) {
        __builtin_prefetch(eng + 64 * l);
        __builtin_prefetch(core + 64 * l);
      }
      // Its model (trained, encoded or merged into by most events).
      const char* model = reinterpret_cast<const char*>(sh_.arena.data() + static_cast<size_t>(next) * sh_.P);
      for (size_t b = 0; b < sh_.P * sizeof(float) && b < 1024; b += 64) __builtin_prefetch(model + b);
      if (q_.top().msg) __builtin_prefetch(q_.top().msg);
    }
    // This event's Cyclon view (its core was fetched one event ago): searched by most events.
    if (const PeerSampling* ps = peers()[e.peer].core->sampling()) {
      const char* v = reinterpret_cast<const char*>(ps->view().data());
      const size_t bytes = ps->view().size() * sizeof(Descriptor);
      for (size_t b = 0; b < bytes && b < 1024; b += 64) __builtin_prefetch(v + b);
    }
    dispatch(e);
  }
}

Status write_csv_header(FILE* f) {
  if (std::fprintf(f, "time_s,age,test_accuracy,test_loss,bytes_sent,bytes_received,frames_sent,"
                      "frames_received,model_bytes_sent,fp32_bytes_equivalent,merges,train_steps,codec,online\n") < 0)
    return Error(Code::kIo, "cannot write a peer CSV");
  return Ok();
}

}  // namespace

Result<SimResult> run_simulation(const ExperimentConfig& cfg, const SimOptions& opt) {
  const auto t_setup = Clock::now();
  const size_t rss0 = rss_bytes();
  SimResult res;
  auto sh = std::make_unique<Shared>();
  sh->cfg = &cfg;
  MYCEL_CHECK(sh->params.replace(cfg.params));
  const size_t N = static_cast<size_t>(cfg.peers.count);
  res.peers = N;
  const std::string& proto = cfg.protocol.name;
  const bool fedavg = proto == "fedavg";
  const bool gossip = proto == "gossip" || proto == "push-pull";
  if (cfg.device != "auto" && cfg.device != "cpu")
    return Error(Code::kInvalidArgument, "device: mycel sim runs its peers on the CPU (got '" + cfg.device + "')");
  if (!cfg.peers.addresses.empty())
    return Error(Code::kInvalidArgument, "peers.addresses: a simulation has no real addresses (leave it empty)");

  // The horizon: run.duration_s of simulated time, or run.rounds periods.
  sh->horizon = cfg.duration_s > 0 ? cfg.duration_s : kInf;
  if (!(cfg.duration_s > 0) && gossip) sh->horizon = static_cast<double>(cfg.rounds) * cfg.params.period_s;

  NetworkSpec ns;
  ns.uplink = cfg.network.uplink;
  ns.downlink = cfg.network.downlink;
  ns.latency = cfg.network.latency;
  ns.loss = cfg.network.loss;
  ns.server_link = cfg.network.server_link;
  ns.churn = cfg.churn.model;
  ns.churn_on_s = cfg.churn.on_s;
  ns.churn_off_s = cfg.churn.off_s;
  ns.churn_trace = cfg.churn.trace;
  ns.churn_wrap = cfg.churn.wrap;
  const double horizon_for_churn = std::isfinite(sh->horizon) ? sh->horizon : 30.0 * 86400;
  MYCEL_ASSIGN_OR_RETURN(sh->net, Network::build(ns, N, horizon_for_churn, cfg.seed, fedavg ? 0 : -1));
  res.lookahead_s = sh->net.min_delay(tp::kFrameHeaderBytes);
  sh->lookahead = res.lookahead_s;
  if (!(res.lookahead_s > 0))
    return Error(Code::kInvalidArgument,
                 "network.latency: a message must take some time (latency > 0, or a finite network.uplink): the "
                 "simulator advances by the smallest delay a message can have");
  res.mean_online_fraction = sh->net.has_churn() ? sh->net.mean_online_fraction(horizon_for_churn) : 1.0;

  // Data, once for every peer.
  data::LoadOptions lo = load_options(cfg.data, cfg.seed);
  lo.max_test = cfg.eval.max_test ? cfg.eval.max_test : cfg.data.max_test;
  MYCEL_ASSIGN_OR_RETURN(sh->data, data::load(cfg.data.dataset, lo));
  MYCEL_ASSIGN_OR_RETURN(auto pspec, data::parse_partition_spec(cfg.data.partition));
  const size_t holders_wanted = N - (fedavg ? 1 : 0);
  if (holders_wanted == 0) return Error(Code::kInvalidArgument, "fedavg needs at least one client (peers.count >= 2)");
  // More peers than samples: the shards are dealt to the first n peers and shared by the rest
  // (peer p holds shard p mod n).
  const size_t holders = std::min(holders_wanted, sh->data.train.n);
  MYCEL_ASSIGN_OR_RETURN(auto part, data::partition(sh->data.train.y, sh->data.train.classes, holders, pspec, cfg.seed));
  sh->shape = models::input_shape(sh->data.train);
  sh->batch = cfg.train.batch;
  MYCEL_ASSIGN_OR_RETURN(sh->sched, models::parse_schedule(cfg.train.schedule, static_cast<float>(cfg.params.lr), 1,
                                                           static_cast<float>(cfg.train.weight_decay)));
  sh->mom = static_cast<float>(cfg.train.momentum);
  sh->wd = static_cast<float>(cfg.train.weight_decay);
  sh->momentum = cfg.train.momentum > 0;

  // Threads and their compute contexts.
  int threads = opt.threads > 0 ? opt.threads : cfg.sim.threads;
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), N));
  res.threads = threads;
  MYCEL_ASSIGN_OR_RETURN(sh->dev, make_device("cpu", 1));
  for (int w = 0; w < threads; ++w) {
    sh->workers.push_back(std::make_unique<Worker>(*sh, w));
    MYCEL_CHECK(sh->workers.back()->setup());
  }
  {
    // The initial model, the same on every peer (as the live peers start).
    MYCEL_ASSIGN_OR_RETURN(auto dev, make_device("cpu", 1));
    MYCEL_ASSIGN_OR_RETURN(auto m, models::make_model(*dev, cfg.model, sh->shape, cfg.seed));
    MYCEL_ASSIGN_OR_RETURN(sh->init, m->download_params());
  }
  sh->P = sh->init.size();
  const bool lossy = [&] {
    auto spec = parse_codec(cfg.params.codec);
    return spec && codec_is_lossy(spec->id);
  }();
  const bool want_residual = cfg.params.error_feedback && lossy;
  size_t shard_total = 0;
  for (size_t p = 0; p < N; ++p) {
    if (fedavg && p == 0) continue;
    shard_total += part.peers[(p - (fedavg ? 1 : 0)) % holders].size();
  }
  // Memory: predicted before anything big is allocated.
  const size_t arena_per_peer = sh->P * sizeof(float) * (1 + (want_residual ? 1 : 0) + (sh->momentum ? 1 : 0));
  constexpr size_t kPeerStateBytes = 2048;  // engine, core, view (measured: see bench sim)
  const size_t need = N * (arena_per_peer + kPeerStateBytes) + shard_total * sizeof(int32_t);
  const size_t budget = opt.memory_budget_bytes ? opt.memory_budget_bytes : available_memory() * 8 / 10;
  if (need > budget) {
    const size_t per = arena_per_peer + kPeerStateBytes + (shard_total / std::max<size_t>(1, N) + 1) * sizeof(int32_t);
    return Error(Code::kNoResource, "peers.count: " + std::to_string(N) + " simulated peers need about " +
                                        std::to_string(need >> 20) + " MiB (" + std::to_string(per) +
                                        " bytes per peer) but " + std::to_string(budget >> 20) +
                                        " MiB are available: at most " + std::to_string(budget / per) + " peers fit");
  }
  res.arena_bytes_per_peer = arena_per_peer + shard_total * sizeof(int32_t) / N;
  const size_t rss_before_arena = rss_bytes();
  sh->arena.resize(N * sh->P);
  for (size_t p = 0; p < N; ++p) std::memcpy(sh->arena.data() + p * sh->P, sh->init.data(), sh->P * sizeof(float));
  if (want_residual) sh->residuals.assign(N * sh->P, 0.f);
  if (sh->momentum) sh->velocity.assign(N * sh->P, 0.f);
  sh->shard_index.reserve(shard_total);
  sh->peers.resize(N);
  for (size_t p = 0; p < N; ++p) {
    Peer& peer = sh->peers[p];
    peer.rng = cfg.seed * 0x2545F4914F6CDD1Dull + p * 0x9E3779B97F4A7C15ull + 1;
    if (fedavg && p == 0) continue;
    const auto& idx = part.peers[(p - (fedavg ? 1 : 0)) % holders];
    peer.shard_off = static_cast<uint32_t>(sh->shard_index.size());
    peer.shard_n = static_cast<uint32_t>(idx.size());
    peer.cursor = peer.shard_n;  // a permutation is drawn at the first step
    for (size_t i : idx) sh->shard_index.push_back(static_cast<int32_t>(i));
  }
  const size_t rss_after_arena = rss_bytes();
  part = {};

  // Peers to workers in contiguous blocks.
  sh->owner_begin.resize(static_cast<size_t>(threads) + 1);
  for (int w = 0; w <= threads; ++w) sh->owner_begin[static_cast<size_t>(w)] = static_cast<uint32_t>(N * static_cast<size_t>(w) / static_cast<size_t>(threads));
  for (int w = 0; w < threads; ++w) {
    sh->worker_params.push_back(std::make_unique<ParamStore>(RuntimeParams{}));
    MYCEL_CHECK(sh->worker_params.back()->replace(cfg.params));
  }
  sh->addresses.reserve(N);
  for (size_t p = 0; p < N; ++p) sh->addresses.push_back(address(static_cast<uint32_t>(p)));

  // Engines. Fixed-membership protocols share one address list.
  std::shared_ptr<const std::vector<std::string>> members;
  if (!gossip) {
    auto all = std::make_shared<std::vector<std::string>>();
    all->reserve(N);
    for (size_t p = 0; p < N; ++p) all->push_back(sh->addresses[p]);
    members = all;
  }
  const int seeds = cfg.sim.seeds > 0 ? cfg.sim.seeds : cfg.protocol.view_size;
  for (size_t p = 0; p < N; ++p) {
    ProtocolOptions po = protocol_options(cfg, static_cast<int>(p), sh->peers[p].shard_n);
    po.self = sh->addresses[p];
    if (gossip) {
      SmallRng r(cfg.seed * 31 + p);
      for (int k = 0; k < seeds && N > 1; ++k) {
        uint32_t q = static_cast<uint32_t>(r.below(N - 1));
        if (q >= p) ++q;
        po.seeds.push_back(sh->addresses[q]);
      }
    } else {
      po.peers = *members;
    }
    const ParamStore* params = sh->worker_params[static_cast<size_t>(sh->worker_of(static_cast<uint32_t>(p)))].get();
    MYCEL_ASSIGN_OR_RETURN(auto core, make_protocol(proto, po, params));
    EngineOptions eo;
    eo.id = static_cast<int>(p);
    eo.protocol = proto;
    eo.num_params = sh->P;
    eo.partitions = po.partitions;
    eo.members = members;
    eo.schedule = sh->sched;
    MYCEL_ASSIGN_OR_RETURN(sh->peers[p].engine,
                           PeerEngine::create(eo, std::move(core), params, *sh->dev,
                                              sh->arena.data() + p * sh->P,
                                              want_residual ? sh->residuals.data() + p * sh->P : nullptr));
    sh->peers[p].core = &sh->peers[p].engine->core();
  }
  (void)rss_before_arena;
  (void)rss0;
  const size_t rss_peers = rss_bytes();
  res.bytes_per_peer = rss_peers > rss_after_arena ? (rss_peers - rss_after_arena) / N : 0;


  // Churn transitions are events; a peer starts (engine start()) when it is first online.
  for (size_t p = 0; p < N; ++p) {
    Worker& w = *sh->workers[static_cast<size_t>(sh->worker_of(static_cast<uint32_t>(p)))];
    uint32_t k = 0;
    if (sh->net.online(p, 0))
      w.push(Event{0, (static_cast<uint64_t>(p) << 32) | (0x80000000u + k++), static_cast<uint32_t>(p), EvKind::kOnline, nullptr});
    for (auto [t, on] : sh->net.transitions(p))
      w.push(Event{t, (static_cast<uint64_t>(p) << 32) | (0x80000000u + k++), static_cast<uint32_t>(p),
                   on ? EvKind::kOnline : EvKind::kOffline, nullptr});
  }
  res.setup_s = std::chrono::duration<double>(Clock::now() - t_setup).count();
  MYCEL_LOG_INFO("sim", "{} peers ({} {}, model {} with {} parameters), {} thread(s), lookahead {:.4g} s, setup {:.2f} s",
                 N, proto, cfg.params.codec, cfg.model, sh->P, threads, res.lookahead_s, res.setup_s);

  // Output.
  std::vector<FILE*> csv;
  const size_t csv_peers = opt.out_dir.empty() ? 0 : std::min(N, cfg.sim.csv_peers);
  if (!opt.out_dir.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(opt.out_dir, ec);
    if (ec) return Error(Code::kIo, "cannot create " + opt.out_dir + ": " + ec.message());
    for (size_t p = 0; p < csv_peers; ++p) {
      const std::string path = opt.out_dir + "/peer-" + std::to_string(p) + ".csv";
      FILE* f = std::fopen(path.c_str(), "w");
      if (!f) {
        for (FILE* g : csv) std::fclose(g);
        return Error(Code::kIo, "cannot write " + path);
      }
      csv.push_back(f);
      MYCEL_CHECK(write_csv_header(f));
    }
  }

  // Evaluation: sampled online peers on the shared test set, split over the workers.
  const double every = cfg.eval.every_s;
  double next_eval = 0;
  uint64_t eval_index = 0;
  double eval_wall = 0;
  auto evaluate_now = [&](double t) -> Status {
    const auto t0 = Clock::now();
    std::vector<uint32_t> online;
    // Online by the network's schedule (a peer that has not started yet holds the initial model).
    for (size_t p = 0; p < N; ++p)
      if (sh->net.online(p, t)) online.push_back(static_cast<uint32_t>(p));
    std::vector<uint32_t> sample = online;
    const size_t k = cfg.sim.eval_peers;
    if (k > 0 && sample.size() > k) {
      SmallRng r(cfg.seed * 0x51ED27ull + eval_index);
      for (size_t i = 0; i < k; ++i) std::swap(sample[i], sample[i + r.below(sample.size() - i)]);
      sample.resize(k);
    }
    for (size_t p = 0; p < csv_peers; ++p) sample.push_back(static_cast<uint32_t>(p));  // the CSV peers too
    std::vector<models::EvalStats> st(sample.size());
    std::vector<Status> errs(static_cast<size_t>(threads), Ok());
    std::vector<std::thread> th;
    for (int w = 0; w < threads; ++w) {
      th.emplace_back([&, w] {
        for (size_t i = static_cast<size_t>(w); i < sample.size(); i += static_cast<size_t>(threads)) {
          auto e = sh->workers[static_cast<size_t>(w)]->evaluate(sample[i]);
          if (!e) {
            errs[static_cast<size_t>(w)] = e.status();
            return;
          }
          st[i] = *e;
        }
      });
    }
    for (auto& x : th) x.join();
    for (auto& e : errs) MYCEL_CHECK(e);
    CurvePoint cp;
    cp.time_s = t;
    cp.online = online.size();
    const size_t sampled = sample.size() - csv_peers;
    cp.evaluated = sampled;
    for (size_t i = 0; i < sampled; ++i) {
      cp.mean_accuracy += st[i].accuracy;
      cp.mean_loss += st[i].loss;
    }
    if (sampled) {
      cp.mean_accuracy /= static_cast<double>(sampled);
      cp.mean_loss /= static_cast<double>(sampled);
    }
    cp.mean_error = sampled ? 1.0 - cp.mean_accuracy : 0;
    for (size_t p = 0; p < N; ++p) {
      const PeerCounters& c = sh->peers[p].engine->counters();
      cp.bytes_sent += c.bytes_sent.load(std::memory_order_relaxed);
      cp.model_bytes_sent += c.model_bytes_sent.load(std::memory_order_relaxed);
      cp.messages += c.frames_sent.load(std::memory_order_relaxed);
    }
    res.curve.push_back(cp);
    for (size_t p = 0; p < csv_peers; ++p) {
      const auto& e = st[sampled + p];
      const PeerCounters& c = sh->peers[p].engine->counters();
      std::fprintf(csv[p], "%.3f,%llu,%.6f,%.6f,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%llu,%s,%d\n", t,
                   static_cast<unsigned long long>(sh->peers[p].engine->core().age()), e.accuracy, e.loss,
                   static_cast<unsigned long long>(c.bytes_sent.load()),
                   static_cast<unsigned long long>(c.bytes_received.load()),
                   static_cast<unsigned long long>(c.frames_sent.load()),
                   static_cast<unsigned long long>(c.frames_received.load()),
                   static_cast<unsigned long long>(c.model_bytes_sent.load()),
                   static_cast<unsigned long long>(c.fp32_bytes_equivalent.load()),
                   static_cast<unsigned long long>(c.merges.load()),
                   static_cast<unsigned long long>(c.train_steps.load()), cfg.params.codec.c_str(),
                   sh->peers[p].online ? 1 : 0);
    }
    ++eval_index;
    eval_wall += std::chrono::duration<double>(Clock::now() - t0).count();
    return Ok();
  };
  // The run: windows of at most the lookahead, the workers in parallel inside each.
  const auto t_run = Clock::now();
  const double cpu_run = process_cpu_s();
  double window_end = 0;
  std::atomic<bool> done{false};
  std::barrier sync(threads);
  std::vector<std::thread> pool;
  for (int w = 1; w < threads; ++w)
    pool.emplace_back([&, w] {
      for (;;) {
        sync.arrive_and_wait();
        if (done.load()) return;
        sh->workers[static_cast<size_t>(w)]->run_window(window_end);
        sync.arrive_and_wait();
      }
    });
  Status failed = Ok();
  double t_now = 0, last_progress = -1;
  const double horizon = sh->horizon;
  for (;;) {
    for (auto& w : sh->workers) {
      for (const Event& e : w->outbox) sh->workers[static_cast<size_t>(sh->worker_of(e.peer))]->push(e);
      w->outbox.clear();
    }
    double t_min = kInf;
    for (auto& w : sh->workers) t_min = std::min(t_min, w->next_time());
    if (next_eval <= std::min(t_min, horizon) && next_eval <= horizon) {
      if (Status s = evaluate_now(next_eval); !s.is_ok()) {
        failed = s;
        break;
      }
      next_eval += every;
      continue;
    }
    if (!(t_min < horizon)) break;
    // Round-based protocols stop when every peer has done its rounds.
    if (!gossip && cfg.rounds > 0 && res.windows % 64 == 0) {
      bool all = true;
      for (size_t p = 0; p < N && all; ++p) all = sh->peers[p].engine->core().stats().wakeups >= cfg.rounds;
      if (all) break;
    }
    window_end = std::min({t_min + sh->lookahead, next_eval, horizon});
    t_now = t_min;
    sync.arrive_and_wait();
    sh->workers[0]->run_window(window_end);
    sync.arrive_and_wait();
    ++res.windows;
    if (opt.progress) {
      const double wall = std::chrono::duration<double>(Clock::now() - t_run).count();
      if (wall - last_progress >= 0.5) {
        last_progress = wall;
        uint64_t ev = 0;
        for (auto& w : sh->workers) ev += w->events;
        const double frac = std::isfinite(horizon) && horizon > 0 ? t_now / horizon : 0;
        const double eta = frac > 0 ? wall * (1 - frac) / frac : 0;
        std::fprintf(stderr, "\rsim %10.1f s of %.0f (%5.1f%%)  wall %7.1f s  %8.3g events/s  ETA %6.0f s ", t_now,
                     std::isfinite(horizon) ? horizon : 0.0, 100 * frac, wall, static_cast<double>(ev) / std::max(wall, 1e-9),
                     eta);
        std::fflush(stderr);
      }
    }
  }
  done = true;
  if (threads > 1) sync.arrive_and_wait();
  for (auto& t : pool) t.join();
  if (opt.progress) std::fprintf(stderr, "\n");
  if (failed.is_ok()) {
    const double t_end = std::isfinite(horizon) ? horizon : t_now;
    if (res.curve.empty() || res.curve.back().time_s < t_end) failed = evaluate_now(t_end);
    res.sim_time_s = t_end;
  }
  for (FILE* f : csv) std::fclose(f);
  MYCEL_CHECK(failed);
  res.wall_s = std::chrono::duration<double>(Clock::now() - t_run).count();
  res.cpu_s = process_cpu_s() - cpu_run;
  res.eval_wall_s = eval_wall;
  std::map<std::string, uint64_t> by_codec;
  for (auto& w : sh->workers) {
    res.events += w->events;
    res.lost_loss += w->lost_loss;
    res.lost_sender_offline += w->lost_sender;
    res.lost_receiver_offline += w->lost_receiver;
    res.train_wall_s += w->train_wall_s;
    for (auto& [c, b] : w->bytes_by_codec) by_codec[c] += b;
  }
  for (size_t p = 0; p < N; ++p) {
    const PeerEngine& e = *sh->peers[p].engine;
    res.node_rounds += e.core().stats().wakeups;
    res.models_sent += e.counters().models_sent.load();
    res.merges += e.counters().merges.load();
    res.train_steps += e.counters().train_steps.load();
    res.bytes_sent += e.counters().bytes_sent.load();
    res.model_bytes_sent += e.counters().model_bytes_sent.load();
  }
  if (!opt.out_dir.empty()) {
    // Run-level curves: mean 0-1 error over the evaluated online peers, against simulated time
    // and against the bytes sent by the whole swarm.
    const std::string cpath = opt.out_dir + "/curve.csv";
    FILE* f = std::fopen(cpath.c_str(), "w");
    if (!f) return Error(Code::kIo, "cannot write " + cpath);
    bool ok = std::fprintf(f, "time_s,online,evaluated,mean_accuracy,mean_error,mean_loss,bytes_sent,model_bytes_sent,messages\n") > 0;
    for (const auto& c : res.curve)
      ok = ok && std::fprintf(f, "%.3f,%zu,%zu,%.6f,%.6f,%.6f,%llu,%llu,%llu\n", c.time_s, c.online, c.evaluated,
                              c.mean_accuracy, c.mean_error, c.mean_loss, static_cast<unsigned long long>(c.bytes_sent),
                              static_cast<unsigned long long>(c.model_bytes_sent),
                              static_cast<unsigned long long>(c.messages)) > 0;
    ok = (std::fclose(f) == 0) && ok;
    if (!ok) return Error(Code::kIo, "cannot write " + cpath);
    nlohmann::json j;
    j["name"] = cfg.name;
    j["simulated"] = true;
    j["peers"] = N;
    j["protocol"] = proto;
    j["model"] = cfg.model;
    j["parameters"] = sh->P;
    j["codec"] = cfg.params.codec;
    j["threads"] = threads;
    j["seed"] = cfg.seed;
    j["sim_time_s"] = res.sim_time_s;
    j["wall_s"] = res.wall_s;
    j["cpu_s"] = res.cpu_s;
    j["setup_s"] = res.setup_s;
    j["eval_wall_s"] = res.eval_wall_s;
    j["train_wall_s"] = res.train_wall_s;
    j["events"] = res.events;
    j["events_per_s"] = static_cast<double>(res.events) / std::max(res.wall_s, 1e-9);
    j["node_rounds"] = res.node_rounds;
    j["node_rounds_per_s"] = static_cast<double>(res.node_rounds) / std::max(res.wall_s, 1e-9);
    j["windows"] = res.windows;
    j["lookahead_s"] = res.lookahead_s;
    j["models_sent"] = res.models_sent;
    j["merges"] = res.merges;
    j["train_steps"] = res.train_steps;
    j["bytes_sent"] = res.bytes_sent;
    j["model_bytes_sent"] = res.model_bytes_sent;
    j["bytes_by_codec"] = by_codec;
    j["lost"] = {{"network_loss", res.lost_loss},
                 {"sender_offline", res.lost_sender_offline},
                 {"receiver_offline", res.lost_receiver_offline}};
    j["mean_online_fraction"] = res.mean_online_fraction;
    j["bytes_per_peer"] = res.bytes_per_peer;
    j["arena_bytes_per_peer"] = res.arena_bytes_per_peer;
    j["final"] = {{"time_s", res.curve.empty() ? 0.0 : res.curve.back().time_s},
                  {"mean_accuracy", res.final_accuracy()},
                  {"mean_error", res.curve.empty() ? 1.0 : res.curve.back().mean_error},
                  {"online", res.curve.empty() ? 0 : res.curve.back().online}};
    const std::string spath = opt.out_dir + "/summary.json";
    const std::string tmp = spath + ".tmp";
    std::ofstream out(tmp);
    out << j.dump(2) << "\n";
    out.close();
    if (!out || std::rename(tmp.c_str(), spath.c_str()) != 0) return Error(Code::kIo, "cannot write " + spath);
  }
  return res;
}

}  // namespace mycel::runtime::sim
