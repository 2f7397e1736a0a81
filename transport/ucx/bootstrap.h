// The UCX transport's bootstrap: mycel's own listener in front of UCX (docs/security.md).
//
// UCX's connection manager (its sockaddr listener) is never exposed: UCX 1.13.1 aborts on 17
// bytes of garbage sent to it (issue 15). Instead the transport's listen port is a plain,
// non-blocking TCP listener served by this class, which runs an authenticated handshake and
// only then exchanges UCX worker addresses; the UCX endpoints are created from those
// (UCP_EP_PARAM_FIELD_REMOTE_ADDRESS).
//
// Handshake (every message: u16 little-endian body length, then the body; bodies start with
// "MYBS", version 1, a type byte; K is the swarm key named by key_id, MAC is libsodium's
// crypto_auth, HMAC-SHA-512-256, keyed with K):
//   M1 C->S  key_id u32, Nc (32 random bytes)
//   M2 S->C  Ns (32 random bytes), MAC("mycel-bs-2" Nc Ns)              server proves K
//   M3 C->S  C's listen address, C's worker address, MAC("mycel-bs-3" Nc Ns addr wa)
//                                                                      client proves K
//   M4 S->C  S's listen address, S's worker address, MAC("mycel-bs-4" Nc Ns addr wa)
// The client sends nothing about itself before the server has proven K, and the server sends
// its worker address only to a client that proved K. Fresh nonces on both sides: a recorded
// M3 or M4 does not verify in another session. Each side then derives two 64-bit session tags
// (BLAKE2b keyed with K over the nonces): every UCX message carries the receiver's tag, which
// is how the receiver knows which authenticated session (and peer) a message belongs to.
//
// Bounds: a deadline per handshake, caps on handshakes pending in total and per source IP
// and on connections in total; accept() failing with EMFILE/ENFILE backs off (the listener
// leaves the poll set for a while) instead of spinning. Garbage, truncated handshakes, wrong
// keys and floods are dropped, counted (BootstrapStats) and logged at a bounded rate.
#pragma once

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "transport/transport.h"

namespace mycel::transport {

// A swarm key: 32 bytes, named by an id so that keys can be rotated (a peer accepts every key
// in its file and dials with the first).
struct SwarmKey {
  uint32_t id = 0;
  std::array<uint8_t, 32> key{};
};

// Key files: one key per line, "ID HEX64" (decimal id, 64 hex digits); '#' starts a comment.
// read_key_file refuses a file readable by group or others (mode must be 0600 or stricter).
Result<std::vector<SwarmKey>> read_key_file(const std::string& path);
// Creates `path` (must not exist) with mode 0600 holding one fresh random key with this id.
Status write_key_file(const std::string& path, uint32_t id = 1);

// At most `per_interval` lines per interval for one cause; the next line allowed says how many
// were suppressed meanwhile. Not thread-safe (each transport is driven by one thread).
class LogLimiter {
 public:
  explicit LogLimiter(double interval_s = 1.0, int per_interval = 5)
      : interval_s_(interval_s), per_interval_(per_interval) {}
  // True when a line for `cause` may be written now; *suppressed gets the count skipped since.
  bool allow(std::string_view cause, double now, uint64_t* suppressed);

 private:
  struct State {
    double window_start = -1e300;
    int lines = 0;
    uint64_t suppressed = 0;
  };
  double interval_s_;
  int per_interval_;
  std::map<std::string, State, std::less<>> state_;
};

namespace ucx {

struct BootstrapConfig {
  std::vector<SwarmKey> keys;  // empty: the well-known unauthenticated key (id 0)
  double handshake_timeout_s = 5.0;
  size_t max_pending = 64;             // handshakes in progress, in total (incoming)
  size_t max_pending_per_source = 32;  // handshakes in progress from one source IP
  size_t max_connections = 1024;       // live connections + pending incoming handshakes
  bool check_source_host = false;      // a numeric claimed host must match a remote source IP
  double log_interval_s = 1.0;
};

struct BootstrapStats {
  uint64_t accepted = 0;             // TCP connections accepted
  uint64_t completed_in = 0;         // incoming handshakes that authenticated
  uint64_t completed_out = 0;        // outgoing handshakes that authenticated
  uint64_t failed_out = 0;           // outgoing handshakes that failed (any reason)
  uint64_t refused_pending = 0;      // dropped at accept: max_pending reached
  uint64_t refused_source = 0;       // dropped at accept: max_pending_per_source reached
  uint64_t refused_connections = 0;  // dropped at accept: max_connections reached
  uint64_t accept_backoffs = 0;      // accept() ran out of descriptors (EMFILE, ENFILE, ...)
  uint64_t timeouts = 0;             // incoming handshakes past their deadline
  uint64_t bad_messages = 0;         // garbage: bad length, magic, version, type or layout
  uint64_t truncated = 0;            // the peer closed in the middle of a handshake
  uint64_t auth_failures = 0;        // a MAC that did not verify
  uint64_t unknown_keys = 0;         // M1 named a key id this peer does not hold
  uint64_t bad_source = 0;           // claimed host disagrees with the source (check_source_host)
  uint64_t dropped() const {
    return refused_pending + refused_source + refused_connections + timeouts + bad_messages +
           truncated + auth_failures + unknown_keys + bad_source;
  }
};

// A finished handshake (or a failed outgoing one).
struct BootstrapDone {
  uint64_t id = 0;
  bool outgoing = false;
  Status status;                     // outgoing only: why it failed
  Address peer;                      // incoming: the address the peer proved; outgoing: its own
  std::vector<uint8_t> worker_addr;  // the peer's UCX worker address
  uint64_t recv_tag = 0;             // carried by every UCX message the peer sends us
  uint64_t send_tag = 0;             // carried by every UCX message we send the peer
};

class Bootstrap {
 public:
  explicit Bootstrap(BootstrapConfig cfg);
  ~Bootstrap();
  Bootstrap(const Bootstrap&) = delete;
  Bootstrap& operator=(const Bootstrap&) = delete;

  // Binds and listens (non-blocking); *port gets the port bound (sa's port 0: any free one).
  Status listen(const sockaddr_storage& sa, socklen_t len, uint16_t* port);
  // What this peer proves in its handshakes: its listen address and UCX worker address.
  void set_identity(Address local, std::vector<uint8_t> worker_addr);
  // Starts an outgoing handshake to sa; its BootstrapDone comes from progress().
  Result<uint64_t> connect(const sockaddr_storage& sa, socklen_t len, double now);
  void cancel(uint64_t id);  // an outgoing handshake no longer wanted: closed, no result
  // The transport's live connection count, for max_connections.
  void set_established(size_t n) { established_ = n; }

  // The descriptors to wait on now (the listener only when accepting is not backed off).
  void add_pollfds(std::vector<pollfd>* fds, double now) const;
  // The earliest time progress() has something to do without any descriptor being ready.
  double next_deadline() const;
  // Accepts, reads, writes, times out; finished handshakes are appended to *out.
  void progress(double now, std::vector<BootstrapDone>* out);
  void close();

  const BootstrapStats& stats() const { return stats_; }
  size_t pending_incoming() const { return pending_in_; }
  size_t pending() const { return sessions_.size(); }

 private:
  struct Session;
  void accept_all(double now);
  // Returns false when the session ended (finished or dropped) and must be erased.
  bool step(Session& s, double now, std::vector<BootstrapDone>* out);
  void drop(Session& s, uint64_t* counter, std::string_view cause, std::string_view detail,
            double now);
  void erase(uint64_t id);
  const SwarmKey* key_by_id(uint32_t id) const;

  BootstrapConfig cfg_;
  int listen_fd_ = -1;
  Address local_;
  std::vector<uint8_t> worker_addr_;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
  std::map<std::string, size_t> per_source_;  // pending incoming handshakes by source IP
  size_t pending_in_ = 0;
  size_t established_ = 0;
  uint64_t next_id_ = 1;
  double accept_paused_until_ = 0;
  double accept_backoff_s_ = 0;
  BootstrapStats stats_;
  LogLimiter log_;
};

}  // namespace ucx
}  // namespace mycel::transport
