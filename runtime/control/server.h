// The control endpoint of one peer: HTTP/1.1 (cpp-httplib) on its own threads, never on the
// peer's event loop. What it shows comes from an immutable PeerSnapshot the loop publishes
// (SnapshotBox: a mutex-protected shared_ptr swap) and from a bounded ring of events the loop
// pushes (EventRing); what it changes goes through callbacks the driver provides
// (ControlHooks). Routes (docs/control.md):
//   GET  /status      JSON: the snapshot (metric table), live parameters and their version
//   GET  /metrics     Prometheus text exposition
//   GET  /params      {"version": N, "params": {key: value}}
//   PUT  /params      a partial set {"codec.spec": "topk:0.01", ...}: validated by the config
//                     schema, applied at once through set_params; 400 names the key and reason
//   POST /checkpoint  writes a checkpoint now and answers its path (docs/checkpoints.md); 501
//                     where the driver keeps none (hooks.checkpoint empty)
//   POST /stop        asks the loop to stop cleanly (202)
//   GET  /events?after=SEQ&wait_s=W   long polling: events with seq > SEQ, waiting up to W s
//   GET  /events/stream?after=SEQ     server-sent events (also /events with Accept:
//                                     text/event-stream); holds one serving thread
// Security: binds to loopback unless told otherwise; PUT/POST need "Authorization: Bearer
// TOKEN"; off loopback every request does. Bodies over max_body_bytes get 413; more than
// max_connections connections at once get 503; reads and writes time out after timeout_s.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"
#include "runtime/control/metrics.h"

namespace mycel::control {

// The loop publishes a new snapshot (every cycle, or every evaluation); readers on other
// threads take the current one. A published snapshot is never changed.
class SnapshotBox {
 public:
  void publish(std::shared_ptr<const PeerSnapshot> s) {
    std::lock_guard lk(mu_);
    cur_ = std::move(s);
  }
  std::shared_ptr<const PeerSnapshot> get() const {
    std::lock_guard lk(mu_);
    return cur_;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const PeerSnapshot> cur_;
};

struct Event {
  uint64_t seq = 0;   // 1, 2, ... in push order
  double t = 0;       // when it was pushed: Unix time, seconds
  std::string kind;   // "decision", "peer_up", "peer_down", "rejected_frame", "params", "stop", ...
  std::string message;
};

// A bounded ring: the oldest events are dropped when it is full. Thread-safe.
class EventRing {
 public:
  explicit EventRing(size_t capacity = 1024) : cap_(capacity ? capacity : 1) {}
  uint64_t push(std::string kind, std::string message);
  // Events with seq > after (oldest first), waiting up to wait_s for at least one, or until
  // *cancel becomes true. *dropped: how many events after `after` the ring no longer holds.
  std::vector<Event> since(uint64_t after, double wait_s, const std::atomic<bool>* cancel = nullptr,
                           uint64_t* dropped = nullptr) const;
  uint64_t last_seq() const;

 private:
  size_t cap_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<Event> ev_;
  uint64_t next_ = 1;
};

// What the endpoint may do to the peer. Each callback is called on a server thread and must be
// thread-safe; the server never calls two set_params at once.
struct ControlHooks {
  // The live parameter set in force and its version.
  std::function<std::pair<runtime::RuntimeParams, uint64_t>()> get_params;
  // Replaces the whole live set at once (the loop reads it at its next cycle); the new version.
  std::function<Result<uint64_t>(const runtime::RuntimeParams&)> set_params;
  std::function<void()> stop;                        // a clean stop, results written
  std::function<Result<std::string>()> checkpoint;   // the file written; empty: 501
  // The usual wiring: a ParamStore (thread-safe) and the loop's stop flag.
  static ControlHooks for_param_store(runtime::ParamStore& store, std::atomic<bool>* stop_flag);
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 0;                 // 0: any free port (ControlServer::port() tells which)
  std::string token;            // the bearer token; must not be empty
  size_t max_body_bytes = 65536;
  int max_connections = 8;
  double timeout_s = 5;
  double max_event_wait_s = 10;  // the longest a /events long poll waits
  // From the config's control section; the token from control.token_file, else generated into
  // out_dir/control.token (mode 0600).
  static Result<ServerOptions> from_config(const runtime::ExperimentConfig::Control& c, const std::string& out_dir);
};

// Reads a token file (refused when group or others may read it, or when empty), or, with
// token_file empty, generates a token into out_dir/control.token with mode 0600 (an existing
// one there is reused: the peers of one run share it). *path_out: the file used.
Result<std::string> load_or_create_token(const std::string& token_file, const std::string& out_dir,
                                         std::string* path_out = nullptr);

// PUT /params without the socket: a request body checked against the live set in force. ok:
// `params` is the whole new set and `changes` the body's keys as config text, in body order.
// Else `error` says why (and `key` names the key to blame, when one is): the body is not JSON, not
// a non-empty object, a value is not a string, number or boolean, or a key or value fails the
// config schema (runtime::apply_param_changes). What the server calls, and what the fuzz target
// runtime/control/fuzz/params_fuzz.cpp feeds arbitrary bytes to.
struct ParamsUpdate {
  bool ok = false;
  std::string error, key;
  runtime::RuntimeParams params;
  std::vector<std::pair<std::string, std::string>> changes;
};
ParamsUpdate parse_params_update(std::string_view body, const runtime::RuntimeParams& current);

// True for 127.0.0.0/8, ::1 and "localhost".
bool is_loopback_host(const std::string& host);

class ControlServer {
 public:
  // Binds, then serves on its own threads until stop() or destruction. The box and ring must
  // outlive the server.
  static Result<std::unique_ptr<ControlServer>> start(ServerOptions opt, ControlHooks hooks, const SnapshotBox* box,
                                                      EventRing* events);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  int port() const;
  std::string url() const;  // "http://HOST:PORT"
  void stop();
  uint64_t rejected_connections() const;  // answered 503 for the connection cap
  uint64_t listen_restarts() const;       // times the listening socket failed and was reopened
  // Requests answered 4xx (malformed, invalid, no or wrong token, over the size limit, ...).
  uint64_t refused_requests() const;

  // Writes out_dir/control-ID.json ({"peer", "url", "pid", "token_file"}), atomically: how
  // `mycel ctl RUN_DIR` and `mycel top RUN_DIR` find the peers of a run.
  Status write_endpoint_file(const std::string& out_dir, int peer, const std::string& token_file) const;

  struct Impl;

 private:
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mycel::control
