#include "transport/inproc.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include <fmt/format.h>

#include "common/log.h"
#include "transport/link_estimator.h"

namespace mycel::transport {
namespace {

constexpr std::string_view kScheme = "inproc://";
using Clock = std::chrono::steady_clock;

double secs(Clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

class Core;

// A queued event; for frames, also who sent it and how to complete that send.
struct Entry {
  Event ev;
  std::weak_ptr<Core> sender;
  uint64_t token = 0;
  size_t bytes = 0;
  Clock::time_point sent_at;
};

struct PeerState {
  PeerStats st;
  std::weak_ptr<Core> remote;
  bool ever_connected = false;
  LinkEstimator link;
};

// What the sender keeps of a send in flight until it completes.
struct InFlight {
  uint8_t tclass = 0;
  size_t buffer_bytes = 0;  // send_buffer(): the buffer's share of the send-buffer budget
};

Entry make_event(EventKind kind, const Address& peer, Status status = {}, uint64_t token = 0) {
  Entry e;
  e.ev.kind = kind;
  e.ev.peer = peer;
  e.ev.status = std::move(status);
  e.ev.token = token;
  return e;
}

// The shared state of one inproc transport. Peers hold weak pointers to it. Locking rule:
// a thread holds at most one Core's mutex at a time (and never the registry's with it), so
// two transports sending to each other cannot deadlock.
class Core {
 public:
  Core(Address addr, std::string name, const Options& opt)
      : addr_(std::move(addr)), name_(std::move(name)), opt_(opt) {}

  const Address& addr() const { return addr_; }
  const std::string& name() const { return name_; }
  const Options& opt() const { return opt_; }

  // Sender side: reserves the in-flight budget and marks the connection up.
  Status reserve(const Address& peer, const std::shared_ptr<Core>& remote, size_t n,
                 uint64_t* token, uint8_t tclass, size_t buffer_bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return Error(Code::kUnavailable, "inproc transport is closed");
    PeerState& ps = peer_state(peer);
    if (ps.st.inflight_bytes > 0 && ps.st.inflight_bytes + n > opt_.max_inflight_bytes) {
      return Error(Code::kNoResource,
                   fmt::format("{} bytes in flight to {}; {} more exceed the budget of {}",
                               ps.st.inflight_bytes, peer, n, opt_.max_inflight_bytes));
    }
    ps.st.inflight_bytes += n;
    *token = next_token_++;
    inflight_[*token] = InFlight{tclass, buffer_bytes};
    ps.link.started(*token, n, secs(Clock::now()));
    connect_locked(ps, peer, remote);
    if (opt_.send_timeout_s > 0) {
      auto now = Clock::now();
      auto limit = std::chrono::duration<double>(std::min(opt_.send_timeout_s, 86400.0));
      pending_.push_back({now + std::chrono::duration_cast<Clock::duration>(limit), now, *token,
                          peer, remote, n});
      outstanding_.insert(*token);
    }
    return Ok();
  }

  // Receiver side: queues the frame (and kPeerUp first if the connection is new).
  // Returns a non-ok Status when the frame cannot be taken.
  Status deliver(const std::shared_ptr<Core>& sender, std::vector<uint8_t>&& bytes,
                 uint64_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return Error(Code::kUnavailable, fmt::format("{} is closed", addr_));
    PeerState& ps = peer_state(sender->addr());
    if (bytes.size() > opt_.max_frame_bytes) {
      ++ps.st.rejected_frames;
      return Error(Code::kOutOfRange,
                   fmt::format("frame of {} bytes exceeds {}'s limit of {}", bytes.size(), addr_,
                               opt_.max_frame_bytes));
    }
    connect_locked(ps, sender->addr(), sender);
    Entry e;
    e.ev.kind = EventKind::kFrame;
    e.ev.peer = sender->addr();
    e.ev.frame.from = sender->addr();
    e.bytes = bytes.size();
    e.ev.frame.bytes = std::move(bytes);
    e.sender = sender;
    e.token = token;
    e.sent_at = Clock::now();
    queue_.push_back(std::move(e));
    cv_.notify_all();
    return Ok();
  }

  // Sender side: the receiver took the frame (ok) or could not (failure).
  void complete(const Address& peer, uint64_t token, size_t bytes, Clock::time_point sent_at,
                Status failure) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    outstanding_.erase(token);
    InFlight f;
    if (auto fi = inflight_.find(token); fi != inflight_.end()) {
      f = fi->second;
      inflight_.erase(fi);
    }
    buffer_used_ -= std::min(buffer_used_, f.buffer_bytes);  // the send buffer is free again
    auto it = peers_.find(peer);
    if (it == peers_.end()) return;
    PeerState& ps = it->second;
    ps.st.inflight_bytes -= std::min(ps.st.inflight_bytes, bytes);
    const double now = secs(Clock::now());
    const double busy = ps.link.ended(token, now, failure.is_ok());
    Entry e;
    if (failure.is_ok()) {
      // Counted as sent here, at completion. No wire, so no round trip: the RTT figure is the
      // delivery latency, from the link starting on the frame to the receiver taking it.
      ps.st.bytes_sent += bytes;
      ++ps.st.frames_sent;
      if (busy >= 0) ps.link.rtt_sample(busy, now);
      e = make_event(EventKind::kSendComplete, peer, {}, token);
    } else {
      ++ps.st.send_failures;
      if (failure.code() == Code::kTimeout) ++ps.st.timeouts;
      e = make_event(EventKind::kSendFailed, peer, failure, token);
    }
    e.ev.tclass = f.tclass;
    e.ev.bytes = bytes;
    queue_.push_back(std::move(e));
    if (!failure.is_ok() && failure.code() == Code::kUnavailable) down_locked(ps, peer, failure);
    cv_.notify_all();
  }

  // The remote side went away or disconnected us.
  void peer_down(const Address& peer, const Status& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    auto it = peers_.find(peer);
    if (it != peers_.end()) down_locked(it->second, peer, why);
    cv_.notify_all();
  }

  std::vector<Event> poll(double timeout_s, size_t max) {
    // Bounded so that the conversion to the clock's integer ticks cannot overflow.
    const auto until = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(
                                              std::clamp(timeout_s, 0.0, 86400.0)));
    std::vector<Event> out;
    struct Done {
      std::weak_ptr<Core> sender;
      uint64_t token;
      size_t bytes;
      Clock::time_point sent_at;
    };
    std::vector<Done> done;
    for (;;) {
      expire_sends(Clock::now());
      std::unique_lock<std::mutex> lock(mu_);
      if (queue_.empty() && !closed_ && Clock::now() < until) {
        // Sleeps until an event, the caller's timeout or the next send deadline.
        auto wake = std::min(until, next_deadline_locked());
        cv_.wait_until(lock, wake, [&] { return !queue_.empty() || closed_; });
        if (queue_.empty() && !closed_ && Clock::now() < until) continue;  // a send expired
      }
      while (!queue_.empty() && out.size() < max) {
        Entry e = std::move(queue_.front());
        queue_.pop_front();
        if (e.ev.kind == EventKind::kFrame) {
          PeerState& ps = peer_state(e.ev.peer);
          ps.st.bytes_received += e.bytes;
          ++ps.st.frames_received;
          done.push_back({std::move(e.sender), e.token, e.bytes, e.sent_at});
        }
        out.push_back(std::move(e.ev));
      }
      break;
    }
    // Consumed frames leave their senders' budgets (outside this lock: one Core at a time).
    for (Done& d : done) {
      if (auto s = d.sender.lock()) s->complete(addr_, d.token, d.bytes, d.sent_at, Ok());
    }
    return out;
  }

  // Receiver side: takes back a frame not yet polled (its send timed out). False when the
  // frame was already consumed (its completion is on the way).
  bool withdraw(const Address& from, uint64_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (it->ev.kind == EventKind::kFrame && it->token == token && it->ev.peer == from) {
        queue_.erase(it);
        return true;
      }
    }
    return false;
  }

  // Sender side: sends past their deadline whose frames the receiver has not taken fail with
  // kTimeout (the frame is withdrawn, so it is never delivered late).
  void expire_sends(Clock::time_point now) {
    std::vector<Pending> expired;
    {
      std::lock_guard<std::mutex> lock(mu_);
      while (!pending_.empty()) {
        Pending& p = pending_.front();
        bool live = outstanding_.count(p.token) > 0;
        if (live && p.deadline > now) break;
        if (live) expired.push_back(std::move(p));
        pending_.pop_front();
      }
    }
    for (Pending& p : expired) {
      auto remote = p.remote.lock();
      if (remote && remote->withdraw(addr_, p.token)) {
        complete(p.peer, p.token, p.bytes, p.sent_at,
                 Error(Code::kTimeout, fmt::format("{} did not take the frame within {} s",
                                                   p.peer, opt_.send_timeout_s)));
      }
    }
  }

  // Marks the local side of a connection down; returns the remote to tell, if any.
  std::shared_ptr<Core> disconnect_local(const Address& peer) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(peer);
    if (it == peers_.end() || !it->second.st.connected) return nullptr;
    down_locked(it->second, peer, Error(Code::kCancelled, "disconnected locally"));
    cv_.notify_all();
    return it->second.remote.lock();
  }

  // Closes: frames never polled fail back to their senders, connected peers see kPeerDown.
  void close() {
    std::vector<Entry> orphans;
    std::vector<std::weak_ptr<Core>> remotes;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      for (Entry& e : queue_) {
        if (e.ev.kind == EventKind::kFrame) orphans.push_back(std::move(e));
      }
      queue_.clear();
      pending_.clear();
      outstanding_.clear();
      for (auto& [peer, ps] : peers_) {
        if (ps.st.connected) remotes.push_back(ps.remote);
        down_locked(ps, peer, Error(Code::kCancelled, "transport closed"));
      }
      closed_ = true;
      cv_.notify_all();
    }
    for (Entry& e : orphans) {
      if (auto s = e.sender.lock()) {
        s->complete(addr_, e.token, e.bytes, e.sent_at,
                    Error(Code::kUnavailable, fmt::format("{} closed before taking the frame",
                                                          addr_)));
      }
    }
    for (auto& w : remotes) {
      if (auto r = w.lock()) r->peer_down(addr_, Error(Code::kUnavailable,
                                                       fmt::format("{} closed", addr_)));
    }
  }

  std::vector<PeerStats> stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<PeerStats> out;
    out.reserve(peers_.size());
    const double now = secs(Clock::now());
    for (const auto& [peer, ps] : peers_) {
      out.push_back(ps.st);
      ps.link.report(&out.back(), now);
    }
    return out;
  }

  // Send buffers: plain vectors, reused from the frames the caller recycles, bounded by
  // Options::max_send_buffer_bytes acquired or in flight (one larger may go when none is).
  Result<std::vector<uint8_t>> acquire_buffer(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return Error(Code::kUnavailable, "inproc transport is closed");
    if (buffer_used_ > 0 && buffer_used_ + n > opt_.max_send_buffer_bytes) {
      return Error(Code::kNoResource,
                   fmt::format("send buffers are exhausted ({} of {} bytes in use)", buffer_used_,
                               opt_.max_send_buffer_bytes));
    }
    std::vector<uint8_t> v;
    auto it = free_.lower_bound(n);
    if (it != free_.end()) {
      free_bytes_ -= it->first;
      v = std::move(it->second);
      free_.erase(it);
    }
    v.resize(n);
    buffer_used_ += n;
    return v;
  }
  void release_buffer(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    buffer_used_ -= std::min(buffer_used_, n);
  }
  void recycle(std::vector<uint8_t>&& v) {
    std::lock_guard<std::mutex> lock(mu_);
    const size_t cap = v.capacity();
    if (cap == 0 || free_bytes_ + cap > opt_.recv_pool_bytes) return;
    free_bytes_ += cap;
    free_.emplace(cap, std::move(v));
  }

  // A send that found no listener: counted against an existing peer entry only, so that
  // sends to arbitrary names cannot grow the table.
  void note_unreachable(const Address& peer) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(peer);
    if (it != peers_.end()) ++it->second.st.send_failures;
  }

 private:
  PeerState& peer_state(const Address& peer) {
    auto [it, fresh] = peers_.try_emplace(peer);
    if (fresh) it->second.st.peer = peer;
    return it->second;
  }
  void connect_locked(PeerState& ps, const Address& peer, const std::shared_ptr<Core>& remote) {
    if (ps.st.connected) return;
    ps.st.connected = true;
    ps.remote = remote;
    if (ps.ever_connected) ++ps.st.reconnects;
    ps.ever_connected = true;
    queue_.push_back(make_event(EventKind::kPeerUp, peer));
    cv_.notify_all();
  }
  // The earliest deadline of a send still outstanding (completed ones are dropped first).
  Clock::time_point next_deadline_locked() {
    while (!pending_.empty() && outstanding_.count(pending_.front().token) == 0) {
      pending_.pop_front();
    }
    return pending_.empty() ? Clock::time_point::max() : pending_.front().deadline;
  }
  void down_locked(PeerState& ps, const Address& peer, const Status& why) {
    if (!ps.st.connected) return;
    ps.st.connected = false;
    queue_.push_back(make_event(EventKind::kPeerDown, peer, why));
  }

  const Address addr_;
  const std::string name_;
  const Options opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Entry> queue_;
  std::map<Address, PeerState> peers_;
  uint64_t next_token_ = 1;
  bool closed_ = false;
  // Sends awaiting completion, in send order (so deadlines increase), for send_timeout_s.
  struct Pending {
    Clock::time_point deadline, sent_at;
    uint64_t token;
    Address peer;
    std::weak_ptr<Core> remote;
    size_t bytes;
  };
  std::deque<Pending> pending_;
  std::unordered_set<uint64_t> outstanding_;
  std::unordered_map<uint64_t, InFlight> inflight_;  // by token, until completion
  size_t buffer_used_ = 0;  // bytes of send buffers acquired or in flight
  std::multimap<size_t, std::vector<uint8_t>> free_;  // recycled vectors, by capacity
  size_t free_bytes_ = 0;
};

// The process-wide table of listeners by name. Never destroyed, so that transports living in
// static storage can still unregister at exit.
class Registry {
 public:
  static Registry& get() {
    static Registry* r = new Registry;
    return *r;
  }
  bool add(const std::string& name, const std::shared_ptr<Core>& core) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(name);
    if (it != map_.end() && !it->second.expired()) return false;
    map_[name] = core;
    return true;
  }
  std::shared_ptr<Core> find(const std::string& name) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(name);
    return it == map_.end() ? nullptr : it->second.lock();
  }
  void remove(const std::string& name, const Core* core) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(name);
    if (it == map_.end()) return;
    auto cur = it->second.lock();
    if (!cur || cur.get() == core) map_.erase(it);
  }
  std::string unique_name() { return fmt::format("anon-{}", ++anon_); }

 private:
  std::mutex mu_;
  std::unordered_map<std::string, std::weak_ptr<Core>> map_;
  std::atomic<uint64_t> anon_{0};
};

class InprocTransport final : public Transport {
 public:
  InprocTransport(std::shared_ptr<Core> core, std::shared_ptr<const DeviceMemoryOps> ops)
      : core_(std::move(core)) {
    device_ops_ = std::move(ops);
  }
  ~InprocTransport() override { close(); }

  Address local_address() const override { return core_->addr(); }

  Status send(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token,
              uint8_t tclass = 0) override {
    return send_impl(peer, std::move(bytes), token, tclass, 0);
  }

  Result<SendBuffer> acquire_send_buffer(size_t bytes) override {
    if (bytes > core_->opt().max_frame_bytes) {
      return Error(Code::kOutOfRange, fmt::format("a send buffer of {} bytes exceeds "
                                                  "max_frame_bytes {}", bytes,
                                                  core_->opt().max_frame_bytes));
    }
    MYCEL_ASSIGN_OR_RETURN(std::vector<uint8_t> v, core_->acquire_buffer(bytes));
    return make_send_buffer(1, nullptr, 0, std::move(v));
  }

  Status send_buffer(const Address& peer, SendBuffer&& buf, size_t used, uint8_t tclass = 0,
                     uint64_t* token = nullptr) override {
    if (!owns(buf, this)) {
      buf.reset();
      return Error(Code::kInvalidArgument, "not a send buffer of this transport");
    }
    std::vector<uint8_t> v = take_vector(buf);
    disown(buf);
    const size_t n = v.size();  // its share of the budget, given back at completion
    if (used > n) {
      core_->release_buffer(n);
      return Error(Code::kOutOfRange, fmt::format("{} bytes used of a send buffer of {}", used, n));
    }
    v.resize(used);
    return send_impl(peer, std::move(v), token, tclass, n);
  }

  void recycle(std::vector<uint8_t>&& bytes) override { core_->recycle(std::move(bytes)); }

  std::vector<Event> poll(double timeout_s, size_t max) override {
    return core_->poll(timeout_s, max);
  }

 protected:
  void release_send_buffer(uint64_t, std::vector<uint8_t>&& vec) override {
    core_->release_buffer(vec.size());
    core_->recycle(std::move(vec));
  }

 private:
  // buffer_bytes: a send buffer's share of the budget, released when the send ends (or now,
  // when it is refused before anything is queued).
  Status send_impl(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token,
                   uint8_t tclass, size_t buffer_bytes) {
    Status st = send_checked(peer, std::move(bytes), token, tclass, buffer_bytes);
    if (!st.is_ok() && buffer_bytes > 0) core_->release_buffer(buffer_bytes);
    return st;
  }

  Status send_checked(const Address& peer, std::vector<uint8_t> bytes, uint64_t* token,
                      uint8_t tclass, size_t buffer_bytes) {
    if (!peer.starts_with(kScheme) || peer.size() == kScheme.size()) {
      return Error(Code::kInvalidArgument,
                   fmt::format("'{}' is not an inproc address (inproc://NAME)", peer));
    }
    std::shared_ptr<Core> remote = Registry::get().find(peer.substr(kScheme.size()));
    if (!remote) {
      core_->note_unreachable(peer);
      return Error(Code::kUnavailable, fmt::format("no inproc listener at {}", peer));
    }
    uint64_t tok = 0;
    size_t n = bytes.size();
    MYCEL_CHECK(core_->reserve(peer, remote, n, &tok, tclass, buffer_bytes));
    if (token) *token = tok;
    Status st = remote->deliver(core_, std::move(bytes), tok);
    // A refusal is reported like a failed transfer: the send itself was accepted.
    if (!st.is_ok()) core_->complete(peer, tok, n, Clock::now(), std::move(st));
    return Ok();
  }

 public:
  void disconnect(const Address& peer) override {
    if (auto remote = core_->disconnect_local(peer)) {
      remote->peer_down(core_->addr(), Error(Code::kUnavailable,
                                             fmt::format("{} disconnected", core_->addr())));
    }
  }

  void close() override {
    core_->close();
    Registry::get().remove(core_->name(), core_.get());
  }

  std::vector<PeerStats> stats() const override { return core_->stats(); }

 private:
  std::shared_ptr<Core> core_;
};

}  // namespace

Result<std::unique_ptr<Transport>> make_inproc_transport(std::string_view listen,
                                                         const Options& opt) {
  if (!listen.starts_with(kScheme)) {
    return Error(Code::kInvalidArgument,
                 fmt::format("'{}' is not an inproc address (inproc://NAME)", listen));
  }
  std::string name(listen.substr(kScheme.size()));
  const bool anonymous = name.empty();
  std::shared_ptr<Core> core;
  // An anonymous name may collide with one a caller chose; the next number is then tried.
  for (int attempt = 0; attempt < 1000; ++attempt) {
    if (anonymous) name = Registry::get().unique_name();
    core = std::make_shared<Core>(fmt::format("{}{}", kScheme, name), name, opt);
    if (Registry::get().add(name, core)) break;
    core.reset();
    if (!anonymous) break;
  }
  if (!core) {
    return Error(Code::kUnavailable, fmt::format("inproc://{} is already in use", name));
  }
  MYCEL_LOG_DEBUG("transport", "inproc transport listening at {}", core->addr());
  return std::unique_ptr<Transport>(
      std::make_unique<InprocTransport>(std::move(core), opt.device_ops));
}

}  // namespace mycel::transport
