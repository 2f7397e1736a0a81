// The UCX transport's bootstrap listener and handshake (bootstrap.h, docs/security.md).
#include "transport/ucx/bootstrap.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "common/log.h"
#include "transport/ucx/ucx_transport.h"

namespace mycel::transport {

namespace {
constexpr const char* kLogB = "transport";

bool sodium_ready() {
  static const bool ok = sodium_init() >= 0;
  return ok;
}
}  // namespace

bool LogLimiter::allow(std::string_view cause, double now, uint64_t* suppressed) {
  auto it = state_.find(cause);
  if (it == state_.end()) it = state_.emplace(std::string(cause), State{}).first;
  State& s = it->second;
  if (now - s.window_start >= interval_s_) {
    s.window_start = now;
    s.lines = 0;
  }
  if (s.lines >= per_interval_) {
    s.suppressed++;
    return false;
  }
  s.lines++;
  if (suppressed != nullptr) *suppressed = s.suppressed;
  s.suppressed = 0;
  return true;
}

Result<std::vector<SwarmKey>> read_key_file(const std::string& path) {
  struct stat st{};
  if (::stat(path.c_str(), &st) != 0) {
    return Status(Code::kNotFound, "cannot read key file " + path + ": " + std::strerror(errno));
  }
  if ((st.st_mode & 077) != 0) {
    return Status(Code::kInvalidArgument,
                  fmt::format("key file {} is readable by others (mode {:o}): chmod 600 it",
                              path, st.st_mode & 0777));
  }
  std::ifstream in(path);
  if (!in) return Status(Code::kIo, "cannot open key file " + path);
  std::vector<SwarmKey> keys;
  std::string line;
  int lineno = 0;
  while (std::getline(in, line)) {
    lineno++;
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream ls(line);
    std::string id_s, hex;
    if (!(ls >> id_s)) continue;
    auto bad = [&](const char* why) {
      return Status(Code::kCorrupt, fmt::format("{}:{}: {}", path, lineno, why));
    };
    if (!(ls >> hex)) return bad("expected 'ID HEX64'");
    SwarmKey k;
    char* end = nullptr;
    unsigned long id = std::strtoul(id_s.c_str(), &end, 10);
    if (end == id_s.c_str() || *end != 0 || id > 0xffffffffUL) return bad("bad key id");
    k.id = uint32_t(id);
    size_t n = 0;
    if (hex.size() != 64 ||
        sodium_hex2bin(k.key.data(), k.key.size(), hex.c_str(), hex.size(), nullptr, &n,
                       nullptr) != 0 ||
        n != 32) {
      return bad("key is not 64 hex digits");
    }
    for (auto& o : keys) {
      if (o.id == k.id) return bad("key id repeated");
    }
    keys.push_back(k);
  }
  if (keys.empty()) return Status(Code::kCorrupt, "key file " + path + " holds no key");
  return keys;
}

Status write_key_file(const std::string& path, uint32_t id) {
  if (!sodium_ready()) return Status(Code::kInternal, "libsodium failed to initialise");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status(Code::kIo, "cannot create " + path + ": " + std::strerror(errno));
  std::array<uint8_t, 32> k{};
  randombytes_buf(k.data(), k.size());
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, k.data(), k.size());
  sodium_memzero(k.data(), k.size());
  std::string text = fmt::format("# mycel swarm key (keep secret; mode 0600)\n{} {}\n", id, hex);
  sodium_memzero(hex, sizeof hex);
  ssize_t w = ::write(fd, text.data(), text.size());
  ::close(fd);
  if (w != ssize_t(text.size())) return Status(Code::kIo, "cannot write " + path);
  return Ok();
}

namespace ucx {

namespace {

constexpr std::array<uint8_t, 4> kBsMagic = {'M', 'Y', 'B', 'S'};
constexpr uint8_t kBsVersion = 1;
constexpr size_t kMaxBody = 2048;   // M3/M4 hold a worker address (a few hundred bytes on tcp)
constexpr size_t kMaxAddr = 256;    // a listen address
constexpr size_t kNonce = 32;
constexpr size_t kMac = crypto_auth_BYTES;
static_assert(kMac == 32);
constexpr int kAcceptBatch = 64;
constexpr double kAcceptBackoffMinS = 0.01, kAcceptBackoffMaxS = 1.0;

// Unauthenticated mode: a key every build knows, so the handshake still runs (and garbage is
// still refused) but proves nothing.
SwarmKey public_key() {
  SwarmKey k;
  k.id = 0;
  crypto_generichash(k.key.data(), k.key.size(),
                     reinterpret_cast<const uint8_t*>("mycel unauthenticated swarm"), 27,
                     nullptr, 0);
  return k;
}

enum class State : uint8_t {
  kConnecting,  // client: TCP connect in progress
  kSendM1, kWaitM2, kSendM3, kWaitM4,                 // client
  kWaitM1, kSendM2, kWaitM3, kSendM4,                 // server
};

void put16(std::vector<uint8_t>& v, size_t x) {
  v.push_back(uint8_t(x));
  v.push_back(uint8_t(x >> 8));
}
void put32(std::vector<uint8_t>& v, uint32_t x) {
  for (int i = 0; i < 4; ++i) v.push_back(uint8_t(x >> (8 * i)));
}
void put(std::vector<uint8_t>& v, const uint8_t* p, size_t n) { v.insert(v.end(), p, p + n); }

std::string source_ip(const sockaddr_storage& sa) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (sa.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(sa).sin_addr, buf, sizeof buf);
  } else if (sa.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6&>(sa).sin6_addr, buf, sizeof buf);
  }
  return buf;
}

bool is_loopback(const std::string& ip) {
  return ip.starts_with("127.") || ip == "::1" || ip.starts_with("::ffff:127.");
}

}  // namespace

struct Bootstrap::Session {
  uint64_t id = 0;
  int fd = -1;
  bool outgoing = false;
  State state = State::kWaitM1;
  double deadline = 0;
  std::string source;                 // incoming: the source IP
  std::vector<uint8_t> in;            // the message being read (length prefix, then body)
  size_t want = 2;                    // bytes of `in` wanted before the next step
  std::vector<uint8_t> out;           // bytes to write
  size_t out_off = 0;
  SwarmKey key;
  std::array<uint8_t, kNonce> nc{}, ns{};
  Address peer_addr;
  std::vector<uint8_t> peer_wa;
};

Bootstrap::Bootstrap(BootstrapConfig cfg) : cfg_(std::move(cfg)), log_(cfg_.log_interval_s, 5) {
  (void)sodium_ready();
  if (cfg_.keys.empty()) cfg_.keys.push_back(public_key());
}

Bootstrap::~Bootstrap() { close(); }

void Bootstrap::close() {
  for (auto& [id, s] : sessions_) {
    if (s->fd >= 0) ::close(s->fd);
  }
  sessions_.clear();
  per_source_.clear();
  pending_in_ = 0;
  if (listen_fd_ >= 0) ::close(listen_fd_);
  listen_fd_ = -1;
}

const SwarmKey* Bootstrap::key_by_id(uint32_t id) const {
  for (auto& k : cfg_.keys) {
    if (k.id == id) return &k;
  }
  return nullptr;
}

Status Bootstrap::listen(const sockaddr_storage& sa, socklen_t len, uint16_t* port) {
  if (!sodium_ready()) return Status(Code::kInternal, "libsodium failed to initialise");
  int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status(Code::kIo, std::string("socket: ") + std::strerror(errno));
  int one = 1;
  // A restarted peer listens on its old port at once (connections to the old one may linger).
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&sa), len) != 0 || ::listen(fd, 128) != 0) {
    Status st(Code::kUnavailable, std::string("cannot listen: ") + std::strerror(errno));
    ::close(fd);
    return st;
  }
  sockaddr_storage bound{};
  socklen_t blen = sizeof bound;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
  *port = bound.ss_family == AF_INET6
              ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
              : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  listen_fd_ = fd;
  return Ok();
}

void Bootstrap::set_identity(Address local, std::vector<uint8_t> worker_addr) {
  local_ = std::move(local);
  worker_addr_ = std::move(worker_addr);
}

Result<uint64_t> Bootstrap::connect(const sockaddr_storage& sa, socklen_t len, double now) {
  int fd = ::socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status(Code::kNoResource, std::string("socket: ") + std::strerror(errno));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&sa), len);
  if (rc != 0 && errno != EINPROGRESS) {
    Status st(Code::kUnavailable, std::string("connect: ") + std::strerror(errno));
    ::close(fd);
    return st;
  }
  auto s = std::make_unique<Session>();
  s->id = next_id_++;
  s->fd = fd;
  s->outgoing = true;
  s->state = rc == 0 ? State::kSendM1 : State::kConnecting;
  s->deadline = now + cfg_.handshake_timeout_s;
  s->key = cfg_.keys.front();
  randombytes_buf(s->nc.data(), kNonce);
  std::vector<uint8_t>& m = s->out;
  put16(m, 4 + 2 + 4 + kNonce);
  put(m, kBsMagic.data(), 4);
  m.push_back(kBsVersion);
  m.push_back(1);
  put32(m, s->key.id);
  put(m, s->nc.data(), kNonce);
  uint64_t id = s->id;
  sessions_[id] = std::move(s);
  return id;
}

void Bootstrap::cancel(uint64_t id) {
  auto it = sessions_.find(id);
  if (it != sessions_.end() && it->second->outgoing) erase(id);
}

void Bootstrap::erase(uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  Session& s = *it->second;
  if (s.fd >= 0) ::close(s.fd);
  if (!s.outgoing) {
    pending_in_--;
    auto ps = per_source_.find(s.source);
    if (ps != per_source_.end() && --ps->second == 0) per_source_.erase(ps);
  }
  sessions_.erase(it);
}

void Bootstrap::add_pollfds(std::vector<pollfd>* fds, double now) const {
  if (listen_fd_ >= 0 && now >= accept_paused_until_) fds->push_back({listen_fd_, POLLIN, 0});
  for (auto& [id, s] : sessions_) {
    short ev = POLLIN;
    if (s->state == State::kConnecting || s->out_off < s->out.size()) ev = POLLOUT;
    fds->push_back({s->fd, ev, 0});
  }
}

double Bootstrap::next_deadline() const {
  double d = 1e300;
  if (listen_fd_ >= 0 && accept_paused_until_ > 0) d = accept_paused_until_;
  for (auto& [id, s] : sessions_) d = std::min(d, s->deadline);
  return d;
}

void Bootstrap::drop(Session& s, uint64_t* counter, std::string_view cause,
                     std::string_view detail, double now) {
  if (counter != nullptr) (*counter)++;
  uint64_t suppressed = 0;
  if (log_.allow(cause, now, &suppressed)) {
    std::string who = s.outgoing ? "an outgoing handshake" : "a handshake from " + s.source;
    if (suppressed > 0) {
      MYCEL_LOG_WARN(kLogB, "bootstrap: dropped {}: {} ({} more of this kind not logged)", who,
                     detail, suppressed);
    } else {
      MYCEL_LOG_WARN(kLogB, "bootstrap: dropped {}: {}", who, detail);
    }
  }
}

void Bootstrap::accept_all(double now) {
  if (listen_fd_ < 0 || now < accept_paused_until_) return;
  accept_paused_until_ = 0;
  for (int i = 0; i < kAcceptBatch; ++i) {
    sockaddr_storage sa{};
    socklen_t len = sizeof sa;
    int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&sa), &len,
                       SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED) {
        accept_backoff_s_ = 0;
        return;
      }
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors: stop accepting for a while (the listener leaves the poll set),
        // never retry at once (issue 15: a peer at the fd limit spun at 100% CPU).
        accept_backoff_s_ = accept_backoff_s_ == 0
                                ? kAcceptBackoffMinS
                                : std::min(2 * accept_backoff_s_, kAcceptBackoffMaxS);
        accept_paused_until_ = now + accept_backoff_s_;
        stats_.accept_backoffs++;
        uint64_t sup = 0;
        if (log_.allow("emfile", now, &sup)) {
          MYCEL_LOG_WARN(kLogB, "bootstrap: accept: {}; not accepting for {:.2f} s ({} not logged)",
                         std::strerror(errno), accept_backoff_s_, sup);
        }
        return;
      }
      uint64_t sup = 0;
      if (log_.allow("accept", now, &sup)) {
        MYCEL_LOG_WARN(kLogB, "bootstrap: accept: {}", std::strerror(errno));
      }
      return;
    }
    accept_backoff_s_ = 0;
    accept_paused_until_ = 0;
    stats_.accepted++;
    std::string src = source_ip(sa);
    uint64_t* refused = nullptr;
    const char* why = nullptr;
    if (pending_in_ >= cfg_.max_pending) {
      refused = &stats_.refused_pending;
      why = "too many handshakes in progress";
    } else if (per_source_[src] >= cfg_.max_pending_per_source) {
      refused = &stats_.refused_source;
      why = "too many handshakes in progress from this source";
    } else if (established_ + pending_in_ >= cfg_.max_connections) {
      refused = &stats_.refused_connections;
      why = "connection limit reached";
    }
    if (refused != nullptr) {
      if (per_source_[src] == 0) per_source_.erase(src);
      (*refused)++;
      ::close(fd);
      uint64_t sup = 0;
      if (log_.allow(why, now, &sup)) {
        MYCEL_LOG_WARN(kLogB, "bootstrap: refused a connection from {}: {} ({} not logged)", src,
                       why, sup);
      }
      continue;
    }
    auto s = std::make_unique<Session>();
    s->id = next_id_++;
    s->fd = fd;
    s->outgoing = false;
    s->state = State::kWaitM1;
    s->deadline = now + cfg_.handshake_timeout_s;
    s->source = src;
    per_source_[src]++;
    pending_in_++;
    uint64_t id = s->id;
    sessions_[id] = std::move(s);
  }
}

namespace {

// Reads until s.in holds `want` bytes. 1: complete; 0: not yet; -1: EOF; -2: error.
int read_some(int fd, std::vector<uint8_t>& in, size_t want) {
  while (in.size() < want) {
    uint8_t buf[kMaxBody + 2];
    ssize_t n = ::recv(fd, buf, std::min(sizeof buf, want - in.size()), 0);
    if (n > 0) {
      in.insert(in.end(), buf, buf + n);
      continue;
    }
    if (n == 0) return -1;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    return -2;
  }
  return 1;
}

// A parsed body cursor.
struct Cursor {
  const uint8_t* p;
  size_t n;
  bool ok = true;
  const uint8_t* take(size_t k) {
    if (!ok || n < k) {
      ok = false;
      return nullptr;
    }
    const uint8_t* r = p;
    p += k;
    n -= k;
    return r;
  }
  size_t u16() {
    const uint8_t* b = take(2);
    return b ? size_t(b[0]) | size_t(b[1]) << 8 : 0;
  }
};

void mac_of(uint8_t out[kMac], const SwarmKey& k, const char* label, const uint8_t* nc,
            const uint8_t* ns, const uint8_t* rest, size_t rest_n) {
  crypto_auth_hmacsha512256_state st;
  crypto_auth_hmacsha512256_init(&st, k.key.data(), k.key.size());
  crypto_auth_hmacsha512256_update(&st, reinterpret_cast<const uint8_t*>(label),
                                   std::strlen(label));
  crypto_auth_hmacsha512256_update(&st, nc, kNonce);
  crypto_auth_hmacsha512256_update(&st, ns, kNonce);
  if (rest_n > 0) crypto_auth_hmacsha512256_update(&st, rest, rest_n);
  crypto_auth_hmacsha512256_final(&st, out);
}

uint64_t tag_of(const SwarmKey& k, char side, const uint8_t* nc, const uint8_t* ns) {
  uint8_t in[1 + 2 * kNonce];
  in[0] = uint8_t(side);
  std::memcpy(in + 1, nc, kNonce);
  std::memcpy(in + 1 + kNonce, ns, kNonce);
  uint8_t out[16];
  crypto_generichash(out, sizeof out, in, sizeof in, k.key.data(), k.key.size());
  uint64_t t = 0;
  std::memcpy(&t, out, 8);
  return t == 0 ? 1 : t;  // 0 is never a tag
}

// M3/M4: address, worker address, MAC over them.
std::vector<uint8_t> identity_msg(uint8_t type, const char* label, const SwarmKey& k,
                                  const uint8_t* nc, const uint8_t* ns, const Address& addr,
                                  const std::vector<uint8_t>& wa) {
  std::vector<uint8_t> id;
  put16(id, addr.size());
  put(id, reinterpret_cast<const uint8_t*>(addr.data()), addr.size());
  put16(id, wa.size());
  put(id, wa.data(), wa.size());
  uint8_t mac[kMac];
  mac_of(mac, k, label, nc, ns, id.data(), id.size());
  std::vector<uint8_t> m;
  put16(m, 6 + id.size() + kMac);
  put(m, kBsMagic.data(), 4);
  m.push_back(kBsVersion);
  m.push_back(type);
  put(m, id.data(), id.size());
  put(m, mac, kMac);
  return m;
}

}  // namespace

void Bootstrap::progress(double now, std::vector<BootstrapDone>* out) {
  accept_all(now);
  std::vector<uint64_t> ended;
  for (auto& [id, s] : sessions_) {
    if (!step(*s, now, out)) ended.push_back(id);
  }
  for (uint64_t id : ended) erase(id);
}

// One session's state machine, as far as its socket allows without blocking.
bool Bootstrap::step(Session& s, double now, std::vector<BootstrapDone>* out) {
  auto fail_out = [&](Code code, std::string why) {
    stats_.failed_out++;
    BootstrapDone d;
    d.id = s.id;
    d.outgoing = true;
    d.status = Status(code, std::move(why));
    out->push_back(std::move(d));
    return false;
  };
  // A body that failed a check: incoming sessions are dropped and counted; outgoing ones fail.
  auto bad = [&](uint64_t* counter, const char* cause, std::string detail) {
    if (s.outgoing) {
      (*counter)++;
      return fail_out(Code::kCorrupt, "handshake: " + detail);
    }
    drop(s, counter, cause, detail, now);
    return false;
  };
  if (now >= s.deadline) {
    if (s.outgoing) return fail_out(Code::kTimeout, "handshake timed out");
    drop(s, &stats_.timeouts, "timeout", "handshake not finished in time", now);
    return false;
  }
  for (;;) {
    if (s.state == State::kConnecting) {
      pollfd p{s.fd, POLLOUT, 0};
      if (::poll(&p, 1, 0) <= 0) return true;
      int err = 0;
      socklen_t el = sizeof err;
      ::getsockopt(s.fd, SOL_SOCKET, SO_ERROR, &err, &el);
      if (err != 0) return fail_out(Code::kUnavailable, std::string("connect: ") + std::strerror(err));
      s.state = State::kSendM1;
    }
    // Writing states: flush s.out, then move on.
    if (s.out_off < s.out.size()) {
      ssize_t n = ::send(s.fd, s.out.data() + s.out_off, s.out.size() - s.out_off, MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
        if (s.outgoing) return fail_out(Code::kUnavailable, std::string("send: ") + std::strerror(errno));
        drop(s, &stats_.truncated, "truncated", std::string("send: ") + std::strerror(errno), now);
        return false;
      }
      s.out_off += size_t(n);
      if (s.out_off < s.out.size()) return true;
    }
    s.out.clear();
    s.out_off = 0;
    switch (s.state) {
      case State::kSendM1: s.state = State::kWaitM2; s.in.clear(); s.want = 2; continue;
      case State::kSendM3: s.state = State::kWaitM4; s.in.clear(); s.want = 2; continue;
      case State::kSendM2: s.state = State::kWaitM3; s.in.clear(); s.want = 2; continue;
      case State::kSendM4: {
        stats_.completed_in++;
        BootstrapDone d;
        d.id = s.id;
        d.outgoing = false;
        d.peer = s.peer_addr;
        d.worker_addr = std::move(s.peer_wa);
        d.recv_tag = tag_of(s.key, 's', s.nc.data(), s.ns.data());
        d.send_tag = tag_of(s.key, 'c', s.nc.data(), s.ns.data());
        out->push_back(std::move(d));
        return false;
      }
      default: break;
    }
    // Reading states: the u16 length, then the body.
    int r = read_some(s.fd, s.in, s.want);
    if (r == 0) return true;
    if (r < 0) {
      if (s.outgoing) {
        stats_.truncated++;
        return fail_out(Code::kUnavailable, "handshake: the peer closed the connection");
      }
      drop(s, &stats_.truncated, "truncated",
           r == -1 ? "closed in the middle of the handshake" : std::strerror(errno), now);
      return false;
    }
    if (s.want == 2) {
      size_t len = size_t(s.in[0]) | size_t(s.in[1]) << 8;
      if (len < 6 || len > kMaxBody) {
        return bad(&stats_.bad_messages, "garbage", fmt::format("bad message length {}", len));
      }
      s.want = 2 + len;
      continue;
    }
    Cursor c{s.in.data() + 2, s.in.size() - 2};
    const uint8_t* hdr = c.take(6);
    const uint8_t expect_type = s.state == State::kWaitM1   ? 1
                                : s.state == State::kWaitM2 ? 2
                                : s.state == State::kWaitM3 ? 3
                                                            : 4;
    if (std::memcmp(hdr, kBsMagic.data(), 4) != 0) {
      return bad(&stats_.bad_messages, "garbage", "bad magic (not a mycel bootstrap)");
    }
    if (hdr[4] != kBsVersion) {
      return bad(&stats_.bad_messages, "version",
                 fmt::format("bootstrap version {} (this build speaks {})", hdr[4], kBsVersion));
    }
    if (hdr[5] != expect_type) {
      return bad(&stats_.bad_messages, "garbage",
                 fmt::format("message type {} where {} was due", hdr[5], expect_type));
    }
    switch (s.state) {
      case State::kWaitM1: {
        const uint8_t* kid = c.take(4);
        const uint8_t* nc = c.take(kNonce);
        if (!c.ok || c.n != 0) return bad(&stats_.bad_messages, "garbage", "bad hello layout");
        uint32_t id = uint32_t(kid[0]) | uint32_t(kid[1]) << 8 | uint32_t(kid[2]) << 16 |
                      uint32_t(kid[3]) << 24;
        const SwarmKey* k = key_by_id(id);
        if (k == nullptr) {
          return bad(&stats_.unknown_keys, "key", fmt::format("unknown key id {}", id));
        }
        s.key = *k;
        std::memcpy(s.nc.data(), nc, kNonce);
        randombytes_buf(s.ns.data(), kNonce);
        uint8_t mac[kMac];
        mac_of(mac, s.key, "mycel-bs-2", s.nc.data(), s.ns.data(), nullptr, 0);
        put16(s.out, 6 + kNonce + kMac);
        put(s.out, kBsMagic.data(), 4);
        s.out.push_back(kBsVersion);
        s.out.push_back(2);
        put(s.out, s.ns.data(), kNonce);
        put(s.out, mac, kMac);
        s.state = State::kSendM2;
        continue;
      }
      case State::kWaitM2: {
        const uint8_t* ns = c.take(kNonce);
        const uint8_t* mac = c.take(kMac);
        if (!c.ok || c.n != 0) return bad(&stats_.bad_messages, "garbage", "bad reply layout");
        std::memcpy(s.ns.data(), ns, kNonce);
        uint8_t want[kMac];
        mac_of(want, s.key, "mycel-bs-2", s.nc.data(), s.ns.data(), nullptr, 0);
        if (sodium_memcmp(want, mac, kMac) != 0) {
          return bad(&stats_.auth_failures, "auth",
                     "the server did not prove the swarm key (wrong key?)");
        }
        s.out = identity_msg(3, "mycel-bs-3", s.key, s.nc.data(), s.ns.data(), local_,
                             worker_addr_);
        s.state = State::kSendM3;
        continue;
      }
      case State::kWaitM3:
      case State::kWaitM4: {
        const uint8_t* id_start = c.p;
        size_t alen = c.u16();
        const uint8_t* a = c.take(alen);
        size_t wlen = c.u16();
        const uint8_t* w = c.take(wlen);
        const size_t id_len = size_t(c.p - id_start);
        const uint8_t* mac = c.take(kMac);
        if (!c.ok || c.n != 0 || alen == 0 || alen > kMaxAddr || wlen == 0) {
          return bad(&stats_.bad_messages, "garbage", "bad identity layout");
        }
        const bool m3 = s.state == State::kWaitM3;
        uint8_t want[kMac];
        mac_of(want, s.key, m3 ? "mycel-bs-3" : "mycel-bs-4", s.nc.data(), s.ns.data(),
               id_start, id_len);
        if (sodium_memcmp(want, mac, kMac) != 0) {
          return bad(&stats_.auth_failures, "auth",
                     m3 ? "the client did not prove the swarm key (wrong key?)"
                        : "the server's identity does not verify");
        }
        s.peer_addr.assign(reinterpret_cast<const char*>(a), alen);
        s.peer_wa.assign(w, w + wlen);
        std::string host;
        uint16_t port = 0;
        if (!parse_ucx_address(s.peer_addr, &host, &port).is_ok()) {
          return bad(&stats_.bad_messages, "garbage", "bad listen address in handshake");
        }
        if (m3 && cfg_.check_source_host && !is_loopback(s.source)) {
          in6_addr tmp6;
          in_addr tmp4;
          const bool numeric = inet_pton(AF_INET, host.c_str(), &tmp4) == 1 ||
                               inet_pton(AF_INET6, host.c_str(), &tmp6) == 1;
          std::string src = s.source;
          if (src.starts_with("::ffff:")) src = src.substr(7);
          if (numeric && host != src) {
            return bad(&stats_.bad_source, "source",
                       fmt::format("claims host {} but connects from {}", host, src));
          }
        }
        if (m3) {
          s.out = identity_msg(4, "mycel-bs-4", s.key, s.nc.data(), s.ns.data(), local_,
                               worker_addr_);
          s.state = State::kSendM4;
          continue;
        }
        stats_.completed_out++;
        BootstrapDone d;
        d.id = s.id;
        d.outgoing = true;
        d.peer = s.peer_addr;
        d.worker_addr = std::move(s.peer_wa);
        d.recv_tag = tag_of(s.key, 'c', s.nc.data(), s.ns.data());
        d.send_tag = tag_of(s.key, 's', s.nc.data(), s.ns.data());
        out->push_back(std::move(d));
        return false;
      }
      default:
        return true;
    }
  }
}

}  // namespace ucx
}  // namespace mycel::transport
