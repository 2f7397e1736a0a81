// The UCX transport on a hostile network (issue 15, docs/security.md): the bootstrap listener
// in front of UCX survives garbage (the 17 bytes that aborted UCX 1.13.1's connection
// manager), truncated and unauthenticated handshakes, wrong keys, idle and flooding
// connections, running out of descriptors; each is dropped and counted, and a real peer still
// connects and exchanges frames afterwards. Also: key files, the log limiter, the bound on the
// reorder buffer.
#include <gtest/gtest.h>

#if MYCEL_HAVE_UCX

#include <arpa/inet.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "common/log.h"
#include "transport/ucx/bootstrap.h"
#include "transport/ucx/ucx_transport.h"

namespace mycel::transport {
namespace {

using Clock = std::chrono::steady_clock;

std::unique_ptr<Transport> make(const Options& opt = {}) {
  auto r = make_ucx_transport("ucx://127.0.0.1:0", opt);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

uint16_t port_of(const Transport& t) {
  std::string h;
  uint16_t p = 0;
  EXPECT_TRUE(parse_ucx_address(t.local_address(), &h, &p).is_ok());
  return p;
}

TrustStats trust(const Transport& t) {
  auto r = ucx_trust_stats(t);
  EXPECT_TRUE(r.is_ok());
  return r.is_ok() ? r.value() : TrustStats{};
}

// A raw TCP client of the attacker's: connects to 127.0.0.1:port (blocking), -1 on failure.
int raw_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

void raw_send(int fd, const std::vector<uint8_t>& b) {
  ASSERT_EQ(::send(fd, b.data(), b.size(), MSG_NOSIGNAL), ssize_t(b.size()));
}

// Polls both transports for `s` seconds (events discarded).
void spin(Transport* a, Transport* b, double s) {
  auto end = Clock::now() + std::chrono::duration<double>(s);
  while (Clock::now() < end) {
    if (a) a->poll(0.005);
    if (b) b->poll(0);
  }
}

bool pump_until(const std::vector<Transport*>& ts, const std::function<void(size_t, Event&)>& sink,
                const std::function<bool()>& done, double timeout_s = 30) {
  auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (!done()) {
    if (Clock::now() > end) return false;
    for (size_t i = 0; i < ts.size(); ++i) {
      for (Event& e : ts[i]->poll(i == 0 ? 0.002 : 0)) sink(i, e);
    }
  }
  return true;
}

// A real peer connects to `b` and both directions carry a frame: the listener still works.
void expect_real_peer_exchanges_frames(Transport* b, const Options& opt = {}) {
  auto a = make(opt);
  ASSERT_TRUE(a);
  std::vector<uint8_t> ping(1000, 7), pong(3000, 9);
  ASSERT_TRUE(a->send(b->local_address(), ping, nullptr).is_ok());
  bool a_got = false, b_got = false;
  ASSERT_TRUE(pump_until({a.get(), b},
                         [&](size_t i, Event& e) {
                           if (e.kind != EventKind::kFrame) return;
                           if (i == 1) {
                             EXPECT_EQ(e.frame.bytes, ping);
                             EXPECT_EQ(e.peer, a->local_address());  // the proven identity
                             b_got = true;
                             EXPECT_TRUE(b->send(e.peer, pong, nullptr).is_ok());
                           } else {
                             EXPECT_EQ(e.frame.bytes, pong);
                             a_got = true;
                           }
                         },
                         [&] { return a_got && b_got; }))
      << "a real peer could not exchange frames after the attack";
}

std::string temp_path(const char* name) {
  return (std::filesystem::temp_directory_path() /
          (std::string("mycel-trust-") + std::to_string(::getpid()) + "-" + name))
      .string();
}

// ---- key files and the log limiter --------------------------------------------------------

TEST(TrustKeys, WriteReadRotateAndRefuseLooseModes) {
  const std::string p = temp_path("key");
  std::filesystem::remove(p);
  ASSERT_TRUE(write_key_file(p, 7).is_ok());
  struct stat st{};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(write_key_file(p, 8).is_ok()) << "an existing key file must not be overwritten";
  auto k = read_key_file(p);
  ASSERT_TRUE(k.is_ok()) << k.status().to_string();
  ASSERT_EQ(k.value().size(), 1u);
  EXPECT_EQ(k.value()[0].id, 7u);
  // Two fresh keys differ.
  const std::string p2 = temp_path("key2");
  std::filesystem::remove(p2);
  ASSERT_TRUE(write_key_file(p2, 7).is_ok());
  EXPECT_NE(read_key_file(p2).value()[0].key, k.value()[0].key);
  // Rotation: several keys, ids kept in order.
  {
    std::ofstream f(p2, std::ios::app);
    f << "9 " << std::string(64, 'a') << "  # the next key\n";
  }
  auto k2 = read_key_file(p2);
  ASSERT_TRUE(k2.is_ok());
  ASSERT_EQ(k2.value().size(), 2u);
  EXPECT_EQ(k2.value()[1].id, 9u);
  EXPECT_EQ(k2.value()[1].key[0], 0xaa);
  ::chmod(p2.c_str(), 0644);
  EXPECT_EQ(read_key_file(p2).status().code(), Code::kInvalidArgument);
  ::chmod(p2.c_str(), 0600);
  {
    std::ofstream f(p2, std::ios::app);
    f << "10 abc\n";
  }
  EXPECT_EQ(read_key_file(p2).status().code(), Code::kCorrupt);
  EXPECT_EQ(read_key_file(temp_path("missing")).status().code(), Code::kNotFound);
  std::filesystem::remove(p);
  std::filesystem::remove(p2);
}

TEST(TrustLogLimiter, AtMostFivePerIntervalThenCountsSuppressed) {
  LogLimiter lim(1.0, 5);
  uint64_t sup = 99;
  int allowed = 0;
  for (int i = 0; i < 100; ++i) allowed += lim.allow("x", 10.0, &sup);
  EXPECT_EQ(allowed, 5);
  EXPECT_TRUE(lim.allow("other cause", 10.0, &sup));  // causes are limited apart
  EXPECT_EQ(sup, 0u);
  EXPECT_FALSE(lim.allow("x", 10.9, &sup));
  ASSERT_TRUE(lim.allow("x", 11.0, &sup));
  EXPECT_EQ(sup, 96u);  // 95 in the first second, 1 at 10.9
}

// ---- the bootstrap under attack -----------------------------------------------------------

TEST(TrustBootstrap, SeventeenZeroBytesAreDroppedAndCountedNotFatal) {
  // The reproduction: create_connection + sendall(b'\0' * 17). UCX 1.13.1's
  // connection manager aborted on it (rc 134); the bootstrap drops it.
  auto b = make();
  ASSERT_TRUE(b);
  log::Capture cap;
  int fd = raw_connect(port_of(*b));
  ASSERT_GE(fd, 0);
  raw_send(fd, std::vector<uint8_t>(17, 0));
  spin(b.get(), nullptr, 0.3);
  ::close(fd);
  spin(b.get(), nullptr, 0.1);
  TrustStats t = trust(*b);
  EXPECT_EQ(t.accepted, 1u);
  EXPECT_EQ(t.bad_messages, 1u);
  EXPECT_EQ(t.pending_handshakes, 0u);
  EXPECT_TRUE(cap.contains("bad message length 0"));
  expect_real_peer_exchanges_frames(b.get());
  EXPECT_EQ(trust(*b).completed_in, 1u);
}

TEST(TrustBootstrap, UcxConnectionManagerBytesAndTruncatedHandshakesAreDropped) {
  auto b = make();
  ASSERT_TRUE(b);
  const uint16_t port = port_of(*b);
  // A valid-looking first message (length, magic, version, type) cut short, then closed.
  {
    int fd = raw_connect(port);
    raw_send(fd, {42, 0, 'M', 'Y', 'B', 'S', 1, 1, 0, 0});
    spin(b.get(), nullptr, 0.1);
    ::close(fd);
  }
  // A bad magic with a plausible length (e.g. a v1 UCX peer's connection-manager bytes).
  {
    int fd = raw_connect(port);
    std::vector<uint8_t> m = {38, 0, 'U', 'C', 'X', '!', 1, 1};
    m.resize(40, 0x55);
    raw_send(fd, m);
    spin(b.get(), nullptr, 0.1);
    ::close(fd);
  }
  // An oversized length.
  {
    int fd = raw_connect(port);
    raw_send(fd, {0xff, 0xff, 1, 2, 3});
    spin(b.get(), nullptr, 0.1);
    ::close(fd);
  }
  // An unknown key id (id 77; an unauthenticated peer holds only id 0).
  {
    int fd = raw_connect(port);
    std::vector<uint8_t> m = {42, 0, 'M', 'Y', 'B', 'S', 1, 1, 77, 0, 0, 0};
    m.resize(44, 0);
    raw_send(fd, m);
    spin(b.get(), nullptr, 0.1);
    ::close(fd);
  }
  // The right first message then garbage in place of the proof (M3): read M2, send junk.
  {
    int fd = raw_connect(port);
    std::vector<uint8_t> m = {42, 0, 'M', 'Y', 'B', 'S', 1, 1, 0, 0, 0, 0};
    m.resize(44, 1);
    raw_send(fd, m);
    spin(b.get(), nullptr, 0.1);
    uint8_t buf[256];
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    EXPECT_EQ(n, 2 + 6 + 32 + 32) << "the server's proof (M2)";
    std::vector<uint8_t> junk = {80, 0, 'M', 'Y', 'B', 'S', 1, 3, 20, 0};
    junk.resize(82, 0x33);
    raw_send(fd, junk);
    spin(b.get(), nullptr, 0.1);
    ::close(fd);
  }
  spin(b.get(), nullptr, 0.1);
  TrustStats t = trust(*b);
  EXPECT_EQ(t.accepted, 5u);
  EXPECT_EQ(t.truncated, 1u);
  EXPECT_EQ(t.bad_messages, 3u);  // bad magic, oversized length, the junk proof's layout
  EXPECT_EQ(t.unknown_keys, 1u);
  EXPECT_EQ(t.completed_in, 0u);
  EXPECT_EQ(t.pending_handshakes, 0u);
  expect_real_peer_exchanges_frames(b.get());
}

TEST(TrustBootstrap, WrongKeyIsRefusedOnBothSidesAndNoFramePasses) {
  const std::string ka = temp_path("ka"), kb = temp_path("kb");
  std::filesystem::remove(ka);
  std::filesystem::remove(kb);
  ASSERT_TRUE(write_key_file(ka, 1).is_ok());
  ASSERT_TRUE(write_key_file(kb, 1).is_ok());  // same id, another key
  Options oa, ob;
  oa.key_file = ka;
  ob.key_file = kb;
  oa.reconnect_backoff_min_s = 5;  // one attempt within the test
  auto a = make(oa), b = make(ob);
  ASSERT_TRUE(a && b);
  EXPECT_TRUE(trust(*a).authenticated);
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(100, 1), nullptr).is_ok());
  bool failed = false, frame = false;
  pump_until({a.get(), b.get()},
             [&](size_t i, Event& e) {
               if (i == 0 && e.kind == EventKind::kSendFailed) failed = true;
               if (i == 1 && e.kind == EventKind::kFrame) frame = true;
             },
             [&] { return failed; }, 10);
  EXPECT_TRUE(failed);
  EXPECT_FALSE(frame);
  spin(a.get(), b.get(), 0.2);
  EXPECT_EQ(trust(*a).failed_out, 1u);
  EXPECT_EQ(trust(*a).auth_failures, 1u) << "the client checks the server's proof first";
  EXPECT_EQ(trust(*b).completed_in, 0u);
  EXPECT_EQ(trust(*b).truncated, 1u) << "the client hung up after the failed proof";
  // An unauthenticated peer is refused by a keyed one too (its key id 0 is unknown there).
  auto c = make();
  ASSERT_TRUE(c->send(b->local_address(), std::vector<uint8_t>(10, 2), nullptr).is_ok());
  failed = false;
  pump_until({c.get(), b.get()},
             [&](size_t i, Event& e) {
               if (i == 0 && e.kind == EventKind::kSendFailed) failed = true;
               if (i == 1 && e.kind == EventKind::kFrame) frame = true;
             },
             [&] { return failed; }, 10);
  EXPECT_TRUE(failed);
  EXPECT_FALSE(frame);
  spin(c.get(), b.get(), 0.2);
  EXPECT_EQ(trust(*b).unknown_keys, 1u);
  // The right key works.
  Options ob2;
  ob2.key_file = kb;
  expect_real_peer_exchanges_frames(b.get(), ob2);
  std::filesystem::remove(ka);
  std::filesystem::remove(kb);
}

TEST(TrustBootstrap, IdleConnectionsAreCappedAndTimeOut) {
  Options o;
  o.handshake_timeout_s = 0.5;
  o.max_pending_handshakes = 16;
  o.max_handshakes_per_source = 8;
  auto b = make(o);
  ASSERT_TRUE(b);
  std::vector<int> fds;
  for (int i = 0; i < 200; ++i) {
    int fd = raw_connect(port_of(*b));
    ASSERT_GE(fd, 0);
    fds.push_back(fd);
    if (i % 20 == 0) b->poll(0);
  }
  spin(b.get(), nullptr, 0.2);
  TrustStats t = trust(*b);
  EXPECT_EQ(t.accepted, 200u);
  EXPECT_EQ(t.pending_handshakes, 8u) << "all from 127.0.0.1: the per-source cap";
  EXPECT_EQ(t.refused_source, 192u);
  spin(b.get(), nullptr, 0.6);
  t = trust(*b);
  EXPECT_EQ(t.pending_handshakes, 0u);
  EXPECT_EQ(t.timeouts, 8u);
  for (int fd : fds) ::close(fd);
  expect_real_peer_exchanges_frames(b.get());
}

TEST(TrustBootstrap, TenThousandConnectCloseLeaveThePeerWorking) {
  auto b = make();
  ASSERT_TRUE(b);
  const uint16_t port = port_of(*b);
  std::atomic<bool> stop{false};
  int made = 0;
  std::thread attacker([&] {
    for (int i = 0; i < 10000 && !stop; ++i) {
      int fd = raw_connect(port);
      if (fd < 0) continue;
      made++;
      linger l{1, 0};  // RST: no TIME_WAIT pile-up on loopback
      ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
      ::close(fd);
    }
  });
  auto t0 = Clock::now();
  while (made < 10000 && Clock::now() - t0 < std::chrono::seconds(60)) b->poll(0.001);
  stop = true;
  attacker.join();
  spin(b.get(), nullptr, 0.3);
  TrustStats t = trust(*b);
  EXPECT_GE(made, 9000);
  EXPECT_GE(t.accepted + 128, uint64_t(made)) << "at most a backlog unaccepted";
  EXPECT_EQ(t.pending_handshakes, 0u);
  EXPECT_EQ(t.completed_in, 0u);
  expect_real_peer_exchanges_frames(b.get());
}

// The child of FdLimitBacksOffWithoutSpinning: listens, lowers its descriptor limit, polls
// for 2 s while the parent floods it, reports CPU time and counters, then serves a real peer.
void fd_limit_child(int port_w, int res_w, int go_r) {
  int port_pipe[2] = {-1, port_w}, res[2] = {-1, res_w}, go[2] = {go_r, -1};
  auto r = make_ucx_transport("ucx://127.0.0.1:0", {});
  if (!r.is_ok()) _exit(2);
  auto b = std::move(r).value();
  uint16_t port = port_of(*b);
  // The lowest descriptor free now, plus a few: accept() soon hits the limit.
  int probe = ::dup(0);
  ::close(probe);
  rlimit lim{};
  ::getrlimit(RLIMIT_NOFILE, &lim);
  rlimit low = lim;
  low.rlim_cur = rlim_t(probe + 4);
  ::setrlimit(RLIMIT_NOFILE, &low);
  (void)!::write(port_pipe[1], &port, sizeof port);
  rusage u0{}, u1{};
  ::getrusage(RUSAGE_SELF, &u0);
  auto end = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < end) b->poll(0.05);
  ::getrusage(RUSAGE_SELF, &u1);
  double cpu = double(u1.ru_utime.tv_sec - u0.ru_utime.tv_sec + u1.ru_stime.tv_sec -
                      u0.ru_stime.tv_sec) +
               1e-6 * double(u1.ru_utime.tv_usec - u0.ru_utime.tv_usec + u1.ru_stime.tv_usec -
                             u0.ru_stime.tv_usec);
  ::setrlimit(RLIMIT_NOFILE, &lim);
  TrustStats t = ucx_trust_stats(*b).value();
  double out[3] = {cpu, double(t.accept_backoffs), double(t.accepted)};
  (void)!::write(res[1], out, sizeof out);
  // Then serve one real peer: a frame in, the same frame back.
  char c;
  (void)!::read(go[0], &c, 1);
  auto end2 = Clock::now() + std::chrono::seconds(20);
  while (Clock::now() < end2) {
    for (Event& e : b->poll(0.01)) {
      if (e.kind == EventKind::kFrame) (void)b->send(e.peer, e.frame.bytes, nullptr);
    }
  }
  _exit(0);
}

[[maybe_unused]] const bool kFdChildRan = [] {
  const char* e = std::getenv("MYCEL_TRUST_FD_CHILD");
  if (e == nullptr) return false;
  int a = -1, b = -1, c = -1;
  if (std::sscanf(e, "%d,%d,%d", &a, &b, &c) != 3) _exit(4);
  fd_limit_child(a, b, c);
  return true;
}();

// Out of descriptors: accept() fails with EMFILE; the listener backs off instead of spinning
// (issue 15: 100% CPU and 2.3 GB of UCX logs in 20 s). In a child process, whose descriptor
// limit is lowered; it reports its CPU time and counters through a pipe.
// Reads exactly n bytes from fd within `seconds`; false on a timeout or an end of file (the
// writer died), so that a child that crashed fails the test instead of hanging it.
bool read_within(int fd, void* buf, size_t n, double seconds) {
  auto end = Clock::now() + std::chrono::duration<double>(seconds);
  size_t got = 0;
  while (got < n) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    ssize_t r = ::read(fd, static_cast<char*>(buf) + got, n - got);
    if (r == 0) return false;
    if (r < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    got += static_cast<size_t>(r);
  }
  return true;
}

TEST(TrustBootstrap, FdLimitBacksOffWithoutSpinning) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // UBSan checks a vptr by probing memory through a pipe; at the descriptor limit that probe
  // fails and it reports a false "invalid vptr" (seen in fmt's buffer, exit of the child).
  GTEST_SKIP() << "sanitizer build: the sanitizers' own memory probes need free descriptors, "
                  "which this test takes away; it runs in the release build";
#endif
  int res[2], go[2];
  ASSERT_EQ(::pipe(res), 0);
  ASSERT_EQ(::pipe(go), 0);
  int port_pipe[2];
  ASSERT_EQ(::pipe(port_pipe), 0);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Re-executed (UCX is not fork-safe): the child runs fd_limit_child from a static
    // initialiser, before GoogleTest.
    std::string fds = std::to_string(port_pipe[1]) + "," + std::to_string(res[1]) + "," +
                      std::to_string(go[0]);
    setenv("MYCEL_TRUST_FD_CHILD", fds.c_str(), 1);
    execl("/proc/self/exe", "trust_fd_child", static_cast<char*>(nullptr));
    _exit(127);
  }
  // The parent keeps only its own ends: a child that dies closes the last writer (EOF here).
  ::close(port_pipe[1]);
  ::close(res[1]);
  ::close(go[0]);
  auto reap = [pid] {
    ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
  };
  uint16_t port = 0;
  if (!read_within(port_pipe[0], &port, sizeof port, 60)) {
    reap();
    FAIL() << "the child died or did not report its port within 60 s";
  }
  std::vector<int> fds;
  for (int i = 0; i < 40; ++i) {
    int fd = raw_connect(port);  // the kernel's backlog takes them; the child cannot accept
    if (fd >= 0) fds.push_back(fd);
  }
  double out[3] = {0, 0, 0};
  if (!read_within(res[0], out, sizeof out, 60)) {
    for (int fd : fds) ::close(fd);
    reap();
    FAIL() << "the child died or did not report within 60 s (at its descriptor limit)";
  }
  for (int fd : fds) ::close(fd);
  EXPECT_GT(out[1], 0) << "accept() never reported EMFILE";
  EXPECT_LT(out[1], 200) << "backoffs are spaced out, not one per wakeup";
  EXPECT_LT(out[0], 0.5) << "CPU seconds used in 2 s at the descriptor limit";
  std::printf("[ fd limit ] child CPU %.3f s in 2 s, %g accept backoffs, %g accepted\n", out[0],
              out[1], out[2]);
  (void)!::write(go[1], "g", 1);
  // The child serves a real peer once descriptors are back.
  auto a = make();
  std::vector<uint8_t> msg(500, 3);
  std::string addr = "ucx://127.0.0.1:" + std::to_string(port);
  ASSERT_TRUE(a->send(addr, msg, nullptr).is_ok());
  bool echoed = false;
  auto end = Clock::now() + std::chrono::seconds(15);
  // A connection attempt that lands among the flood's leftovers may be refused (the
  // per-source cap): a real peer tries again at its next send.
  while (!echoed && Clock::now() < end) {
    for (Event& e : a->poll(0.01)) {
      if (e.kind == EventKind::kFrame) echoed = e.frame.bytes == msg;
      if (e.kind == EventKind::kSendFailed) {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        (void)a->send(addr, msg, nullptr);
      }
    }
  }
  EXPECT_TRUE(echoed);
  reap();
}

// The reproduction against a real process: a peer (this binary re-executed with
// MYCEL_TRUST_ECHO_CHILD=<dir>: it listens, publishes its address, echoes every frame) is sent
// the 17 bytes by python3, exactly as in issue 15; it must stay alive and still echo frames.
[[maybe_unused]] const bool kEchoChildRan = [] {
  const char* dir = std::getenv("MYCEL_TRUST_ECHO_CHILD");
  if (dir == nullptr) return false;
  auto t = make_ucx_transport("ucx://127.0.0.1:0", {});
  if (!t.is_ok()) _exit(3);
  {
    std::ofstream f(std::string(dir) + "/addr.tmp");
    f << (*t)->local_address();
  }
  std::filesystem::rename(std::string(dir) + "/addr.tmp", std::string(dir) + "/addr");
  for (;;) {
    for (Event& e : (*t)->poll(0.1)) {
      if (e.kind == EventKind::kFrame) (void)(*t)->send(e.peer, e.frame.bytes, nullptr);
    }
  }
}();

TEST(TrustProcess, PythonSeventeenBytesDoNotKillAPeerProcess) {
  if (std::system("command -v python3 >/dev/null 2>&1") != 0) GTEST_SKIP() << "no python3";
  auto dir = std::filesystem::temp_directory_path() /
             ("mycel-trust-echo-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("MYCEL_TRUST_ECHO_CHILD", dir.c_str(), 1);
    execl("/proc/self/exe", "trust_echo_child", static_cast<char*>(nullptr));
    _exit(127);
  }
  auto end = Clock::now() + std::chrono::seconds(30);
  while (!std::filesystem::exists(dir / "addr") && Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(std::filesystem::exists(dir / "addr"));
  std::string addr;
  std::ifstream(dir / "addr") >> addr;
  std::string host;
  uint16_t port = 0;
  ASSERT_TRUE(parse_ucx_address(addr, &host, &port).is_ok());
  for (int round = 0; round < 3; ++round) {
    std::string cmd = "python3 -c \"import socket;s=socket.create_connection(('127.0.0.1'," +
                      std::to_string(port) + "));s.sendall(b'\\0'*17)\"";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  int st = 0;
  ASSERT_EQ(::waitpid(pid, &st, WNOHANG), 0) << "the peer process died: status " << st;
  auto a = make();
  std::vector<uint8_t> msg(2000, 5);
  ASSERT_TRUE(a->send(addr, msg, nullptr).is_ok());
  bool echoed = false;
  end = Clock::now() + std::chrono::seconds(20);
  while (!echoed && Clock::now() < end) {
    for (Event& e : a->poll(0.01)) {
      if (e.kind == EventKind::kFrame) echoed = e.frame.bytes == msg;
    }
  }
  EXPECT_TRUE(echoed);
  EXPECT_EQ(::waitpid(pid, &st, WNOHANG), 0);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &st, 0);
  std::filesystem::remove_all(dir);
}

// ---- after the handshake -------------------------------------------------------------------

TEST(TrustTransport, ReorderBufferIsBoundedAndCounted) {
  // A 4 MiB frame goes by rendezvous and is held while it arrives; a receiver that may hold
  // only 1 MiB out of order closes the connection and counts it (a peer that skips a sequence
  // number cannot make it hold more).
  Options small;
  small.max_reorder_bytes = 1 << 20;
  auto a = make(), b = make(small);
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(100, 1), nullptr).is_ok());
  bool got_small = false;
  ASSERT_TRUE(pump_until({a.get(), b.get()},
                         [&](size_t i, Event& e) {
                           if (i == 1 && e.kind == EventKind::kFrame) got_small = true;
                         },
                         [&] { return got_small; }));
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(4 << 20, 2), nullptr).is_ok());
  bool big = false, down = false;
  pump_until({a.get(), b.get()},
             [&](size_t i, Event& e) {
               if (i == 1 && e.kind == EventKind::kFrame) big = true;
               if (i == 1 && e.kind == EventKind::kPeerDown) down = true;
             },
             [&] { return down || big; }, 20);
  EXPECT_FALSE(big);
  EXPECT_TRUE(down);
  EXPECT_EQ(trust(*b).reorder_overflows, 1u);
  ASSERT_FALSE(b->stats().empty());
  EXPECT_EQ(b->stats()[0].reorder_overflows, 1u);
}

TEST(TrustTransport, UnknownSessionTagsAreDroppedAndCounted) {
  // Frames flow between authenticated peers; the receiver counts no stray messages. (A
  // message with a forged or stale tag is counted in unknown_tag; the UCX-level forgery itself
  // needs a raw UCP client, see docs/security.md.)
  auto b = make();
  expect_real_peer_exchanges_frames(b.get());
  EXPECT_EQ(trust(*b).unknown_tag, 0u);
  EXPECT_EQ(trust(*b).bad_headers, 0u);
  EXPECT_EQ(trust(*b).completed_in, 1u);
}

}  // namespace
}  // namespace mycel::transport

#endif  // MYCEL_HAVE_UCX
