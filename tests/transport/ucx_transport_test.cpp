// UCX-specific transport tests: sizes up to 256 MiB intact and in order, 16 senders to one
// receiver, back-pressure, an unreachable peer, a receiver process killed with SIGKILL
// mid-transfer, refused oversized frames, idle CPU. The parametrised suite shared with inproc
// is transport_suite.cpp. All ports are chosen by the OS (port 0); timeouts are generous so a
// loaded 2-core machine does not flake them.
#include <fmt/format.h>
#include <gtest/gtest.h>

#if MYCEL_HAVE_UCX

#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <thread>

#include "transport/ucx/ucx_transport.h"

namespace mycel::transport {
namespace {

using Clock = std::chrono::steady_clock;

// Bytes that differ by seed and position (a splitmix64 stream), so a lost, repeated or
// reordered frame or chunk shows.
std::vector<uint8_t> pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> v(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    std::memcpy(v.data() + i, &z, std::min<size_t>(8, n - i));
  }
  return v;
}

std::unique_ptr<Transport> make(const Options& opt = {}) {
  auto r = make_ucx_transport("ucx://127.0.0.1:0", opt);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

// Polls every transport until done() or the deadline; events go to sink(index, event).
bool pump(const std::vector<Transport*>& ts, const std::function<void(size_t, Event&)>& sink,
          const std::function<bool()>& done, double timeout_s = 60) {
  auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (!done()) {
    if (Clock::now() > end) return false;
    for (size_t i = 0; i < ts.size(); ++i) {
      for (Event& e : ts[i]->poll(ts.size() == 1 ? 0.01 : 0)) sink(i, e);
    }
  }
  return true;
}

uint16_t unused_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(UcxAddress, ParsesAndRejects) {
  std::string h;
  uint16_t p = 0;
  ASSERT_TRUE(parse_ucx_address("ucx://10.0.0.1:4000", &h, &p).is_ok());
  EXPECT_EQ(h, "10.0.0.1");
  EXPECT_EQ(p, 4000);
  ASSERT_TRUE(parse_ucx_address("ucx://[::1]:7", &h, &p).is_ok());
  EXPECT_EQ(h, "::1");
  for (const char* bad : {"tcp://a:1", "ucx://a", "ucx://:5", "ucx://a:", "ucx://a:70000",
                          "ucx://a:1x", "inproc://x"}) {
    EXPECT_EQ(parse_ucx_address(bad, &h, &p).code(), Code::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(make_ucx_transport("ucx://nohost.invalid.:0").is_ok());
}

TEST(UcxTransport, FramesOfEverySizeArriveIntactAndInOrder) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  EXPECT_NE(b->local_address(), "ucx://127.0.0.1:0");
  const std::vector<size_t> sizes = {0, 1, 4096, size_t(1) << 20, size_t(256) << 20, 3, 0, 4096};
  for (size_t i = 0; i < sizes.size(); ++i) {
    uint64_t tok = 0;
    ASSERT_TRUE(a->send(b->local_address(), pattern(sizes[i], uint32_t(i)), &tok).is_ok());
    EXPECT_GT(tok, 0u);
  }
  std::vector<std::vector<uint8_t>> got;
  size_t completes = 0, up_a = 0, up_b = 0;
  bool ok = pump(
      {a.get(), b.get()},
      [&](size_t who, Event& e) {
        if (e.kind == EventKind::kFrame) {
          EXPECT_EQ(who, 1u);
          EXPECT_EQ(e.frame.from, a->local_address());
          got.push_back(std::move(e.frame.bytes));
        } else if (e.kind == EventKind::kSendComplete) {
          completes++;
        } else if (e.kind == EventKind::kPeerUp) {
          (who == 0 ? up_a : up_b)++;
        } else {
          ADD_FAILURE() << "unexpected event " << int(e.kind) << " " << e.status.to_string();
        }
      },
      [&] { return got.size() == sizes.size() && completes == sizes.size(); }, 120);
  ASSERT_TRUE(ok) << "got " << got.size() << " frames, " << completes << " completions";
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_EQ(got[i].size(), sizes[i]) << "frame " << i;
    EXPECT_TRUE(got[i] == pattern(sizes[i], uint32_t(i))) << "frame " << i << " corrupted";
  }
  EXPECT_EQ(up_a, 1u);
  EXPECT_EQ(up_b, 1u);
  // The receiver answers on the endpoint the sender opened, and stats count both ways.
  ASSERT_TRUE(b->send(a->local_address(), pattern(100, 9), nullptr).is_ok());
  std::vector<uint8_t> back;
  ASSERT_TRUE(pump(
      {a.get(), b.get()},
      [&](size_t who, Event& e) {
        if (e.kind == EventKind::kFrame) back = std::move(e.frame.bytes);
      },
      [&] { return !back.empty(); }));
  EXPECT_TRUE(back == pattern(100, 9));
  auto sa = a->stats();
  ASSERT_EQ(sa.size(), 1u);
  EXPECT_EQ(sa[0].peer, b->local_address());
  EXPECT_EQ(sa[0].frames_sent, sizes.size());
  EXPECT_EQ(sa[0].frames_received, 1u);
  EXPECT_EQ(sa[0].inflight_bytes, 0u);
  EXPECT_GT(sa[0].bandwidth_Bps, 0.0);
  EXPECT_TRUE(sa[0].connected);
  size_t total = 0;
  for (size_t s : sizes) total += s;
  EXPECT_EQ(sa[0].bytes_sent, total);
  EXPECT_EQ(b->stats()[0].bytes_received, total);
}

// The bandwidth estimate the scheduler will steer by agrees with the throughput this test
// measures itself over a stream of 4 MiB frames, a few in flight (within 2x either way: the
// estimate is an EWMA over 10 ms windows, on a noisy shared machine). The estimator it
// replaced, one sample per completed frame, read 100x too high: completions come in bursts.
// On this shared 2-core machine one trial's measured throughput can be disturbed by whatever
// else runs (seen failing 1 run in 6 under a parallel ctest, on a correct estimator). So up to
// three trials, each on fresh transports: the estimate must land within 2x of the throughput the
// test itself measures in at least one. An estimator that is wrong (the per-frame sampler this
// replaced read 100x high) fails all three.
TEST(UcxTransport, BandwidthEstimateTracksTheMeasuredThroughput) {
  const size_t kFrame = size_t(4) << 20;
  const int kFrames = 24, kWindow = 4;
  auto trial = [&](double* est, double* measured) {
    auto a = make(), b = make();
    ASSERT_TRUE(a && b);
    // Made before the clock starts: the stream measured is the transport's, not pattern().
    std::vector<std::vector<uint8_t>> frames;
    for (int i = 0; i < kFrames; ++i) frames.push_back(pattern(kFrame, uint32_t(i)));
    int sent = 0, done = 0, got = 0;
    auto sink = [&](size_t, Event& e) {
      done += e.kind == EventKind::kSendComplete;
      got += e.kind == EventKind::kFrame;
      EXPECT_NE(e.kind, EventKind::kSendFailed) << e.status.to_string();
    };
    // One frame first: connection set-up stays out of the measured stream.
    ASSERT_TRUE(a->send(b->local_address(), pattern(kFrame, 0), nullptr).is_ok());
    ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return done == 1 && got == 1; }));
    done = got = 0;
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE(pump({a.get(), b.get()}, [&](size_t i, Event& e) {
      sink(i, e);
    }, [&] {
      while (sent < kFrames && sent - done < kWindow) {
        EXPECT_TRUE(a->send(b->local_address(), std::move(frames[size_t(sent)]), nullptr).is_ok());
        ++sent;
      }
      return done == kFrames && got == kFrames;
    }, 120));
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    *measured = double(kFrames) * double(kFrame) / secs;
    *est = a->stats()[0].bandwidth_Bps;
  };
  std::string seen;
  bool within = false;
  for (int t = 0; t < 3 && !within; ++t) {
    double est = 0, measured = 0;
    trial(&est, &measured);
    if (HasFatalFailure()) return;
    std::printf("trial %d: bandwidth estimate %.3g B/s, measured %.3g B/s\n", t, est, measured);
    seen += fmt::format(" [{:.3g} vs {:.3g}]", est, measured);
    within = est > measured / 2 && est < measured * 2;
  }
  EXPECT_TRUE(within) << "estimate vs measured, B/s, in each trial:" << seen;
}

TEST(UcxTransport, RttEstimateFromPingPong) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->send(b->local_address(), pattern(10, 1), nullptr).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, [](size_t, Event&) {},
                   [&] { return a->stats()[0].rtt_s > 0; }, 30));
  EXPECT_LT(a->stats()[0].rtt_s, 5.0);
}

// One receiver and n senders; all lists the receiver first (for pump).
struct FanIn {
  std::unique_ptr<Transport> rx;
  std::vector<std::unique_ptr<Transport>> tx;
  std::vector<Transport*> all;
  bool ok = true;
};
FanIn fan_in(int n) {
  FanIn f;
  f.rx = make();
  f.ok = f.rx != nullptr;
  if (f.ok) f.all.push_back(f.rx.get());
  for (int i = 0; i < n && f.ok; ++i) {
    f.tx.push_back(make());
    f.ok = f.tx.back() != nullptr;
    if (f.ok) f.all.push_back(f.tx.back().get());
  }
  return f;
}

TEST(UcxTransport, SixteenSendersToOneReceiver) {
  FanIn f = fan_in(16);
  ASSERT_TRUE(f.ok);
  auto& rx = f.rx;
  auto& tx = f.tx;
  auto& all = f.all;
  constexpr int kFrames = 5;
  for (int k = 0; k < kFrames; ++k) {
    for (int i = 0; i < 16; ++i) {
      size_t n = k == 2 ? (size_t(1) << 20) : 1000 + i;  // one rendezvous-sized frame each
      ASSERT_TRUE(tx[i]->send(rx->local_address(), pattern(n, i * 100 + k), nullptr).is_ok());
    }
  }
  std::map<Address, int> next;
  int frames = 0;
  ASSERT_TRUE(pump(
      all,
      [&](size_t who, Event& e) {
        if (e.kind != EventKind::kFrame) return;
        ASSERT_EQ(who, 0u);
        int i = -1;
        for (int j = 0; j < 16; ++j) {
          if (tx[j]->local_address() == e.frame.from) i = j;
        }
        ASSERT_GE(i, 0) << e.frame.from;
        int k = next[e.frame.from]++;
        size_t n = k == 2 ? (size_t(1) << 20) : 1000 + i;
        EXPECT_TRUE(e.frame.bytes == pattern(n, i * 100 + k)) << "sender " << i << " frame " << k;
        frames++;
      },
      [&] { return frames == 16 * kFrames; }, 120));
  EXPECT_EQ(next.size(), 16u);
  EXPECT_EQ(rx->stats().size(), 16u);
}

TEST(UcxTransport, BackPressureReturnsNoResource) {
  Options opt;
  opt.max_inflight_bytes = size_t(1) << 20;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  const Address to = b->local_address();
  // Nothing completes before the connection is made, so the budget fills deterministically.
  ASSERT_TRUE(a->send(to, pattern(600 << 10, 1), nullptr).is_ok());
  Status s = a->send(to, pattern(600 << 10, 2), nullptr);
  EXPECT_EQ(s.code(), Code::kNoResource) << s.to_string();
  EXPECT_LE(a->stats()[0].inflight_bytes, opt.max_inflight_bytes);
  ASSERT_TRUE(a->send(to, pattern(400 << 10, 3), nullptr).is_ok());
  int got = 0;
  ASSERT_TRUE(pump({a.get(), b.get()},
                   [&](size_t, Event& e) { got += e.kind == EventKind::kFrame; },
                   [&] { return got == 2 && a->stats()[0].inflight_bytes == 0; }));
  // The budget is free again once the sends completed.
  EXPECT_TRUE(a->send(to, pattern(900 << 10, 4), nullptr).is_ok());
}

TEST(UcxTransport, OversizedFramesAreRefused) {
  Options small;
  small.max_frame_bytes = 64 << 10;
  auto a = make(), b = make(small);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(b->send(a->local_address(), pattern(100 << 10, 0), nullptr).code(),
            Code::kOutOfRange);
  ASSERT_TRUE(a->send(b->local_address(), pattern(2 << 20, 1), nullptr).is_ok());  // rndv
  ASSERT_TRUE(a->send(b->local_address(), pattern(65 << 10, 2), nullptr).is_ok());
  ASSERT_TRUE(a->send(b->local_address(), pattern(10, 3), nullptr).is_ok());
  std::vector<std::vector<uint8_t>> got;
  ASSERT_TRUE(pump({a.get(), b.get()},
                   [&](size_t, Event& e) {
                     if (e.kind == EventKind::kFrame) got.push_back(e.frame.bytes);
                   },
                   [&] { return !got.empty(); }));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_TRUE(got[0] == pattern(10, 3));
  EXPECT_EQ(b->stats()[0].rejected_frames, 2u);
}

TEST(UcxTransport, UnreachablePeerFailsWithinConnectTimeoutThenBacksOff) {
  Options opt;
  opt.connect_timeout_s = 3;
  opt.reconnect_backoff_min_s = 0.5;
  auto a = make(opt);
  ASSERT_TRUE(a);
  const Address dead = "ucx://127.0.0.1:" + std::to_string(unused_port());
  uint64_t tok = 0;
  auto t0 = Clock::now();
  ASSERT_TRUE(a->send(dead, pattern(100, 0), &tok).is_ok());
  bool failed = false, down = false;
  ASSERT_TRUE(pump({a.get()},
                   [&](size_t, Event& e) {
                     if (e.kind == EventKind::kSendFailed) {
                       EXPECT_EQ(e.token, tok);
                       EXPECT_FALSE(e.status.is_ok());
                       failed = true;
                     }
                     if (e.kind == EventKind::kPeerDown) down = true;
                   },
                   [&] { return failed && down; }, 30));
  double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(took, opt.connect_timeout_s + 5);  // generous: error event or connect timeout
  // While backing off, sends fail fast and nothing is queued.
  Status s = a->send(dead, pattern(100, 1), nullptr);
  EXPECT_EQ(s.code(), Code::kUnavailable) << s.to_string();
  auto st = a->stats();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].send_failures, 1u);
  EXPECT_EQ(st[0].inflight_bytes, 0u);
  EXPECT_FALSE(st[0].connected);
  // After the backoff a send tries again (a reconnect), and fails again.
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  ASSERT_TRUE(a->send(dead, pattern(100, 2), nullptr).is_ok());
  failed = false;
  ASSERT_TRUE(pump({a.get()},
                   [&](size_t, Event& e) { failed |= e.kind == EventKind::kSendFailed; },
                   [&] { return failed; }, 30));
  EXPECT_EQ(a->stats()[0].reconnects, 1u);
}

TEST(UcxTransport, DisconnectGivesPeerDownAndReconnectsOnNextSend) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->send(b->local_address(), pattern(10, 0), nullptr).is_ok());
  int frames = 0;
  ASSERT_TRUE(pump({a.get(), b.get()},
                   [&](size_t, Event& e) { frames += e.kind == EventKind::kFrame; },
                   [&] { return frames == 1; }));
  a->disconnect(b->local_address());
  bool down_a = false, down_b = false;
  ASSERT_TRUE(pump({a.get(), b.get()},
                   [&](size_t who, Event& e) {
                     if (e.kind == EventKind::kPeerDown) (who == 0 ? down_a : down_b) = true;
                   },
                   [&] { return down_a && down_b; }, 30));
  ASSERT_TRUE(a->send(b->local_address(), pattern(10, 1), nullptr).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()},
                   [&](size_t, Event& e) { frames += e.kind == EventKind::kFrame; },
                   [&] { return frames == 2; }));
  EXPECT_EQ(a->stats()[0].reconnects, 1u);
}

TEST(UcxTransport, SendTimeoutFailsTheSendAndResetsTheConnection) {
  Options opt;
  opt.send_timeout_s = 1;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(a->send(b->local_address(), pattern(10, 0), nullptr).is_ok());
  int frames = 0;
  ASSERT_TRUE(pump({a.get(), b.get()},
                   [&](size_t, Event& e) { frames += e.kind == EventKind::kFrame; },
                   [&] { return frames == 1; }));
  // b stops polling: a rendezvous-sized frame cannot complete.
  uint64_t tok = 0;
  ASSERT_TRUE(a->send(b->local_address(), pattern(size_t(8) << 20, 1), &tok).is_ok());
  Status why;
  bool down = false;
  auto t0 = Clock::now();
  ASSERT_TRUE(pump({a.get()},
                   [&](size_t, Event& e) {
                     if (e.kind == EventKind::kSendFailed && e.token == tok) why = e.status;
                     down |= e.kind == EventKind::kPeerDown;
                   },
                   [&] { return !why.is_ok() && down; }, 30));
  EXPECT_EQ(why.code(), Code::kTimeout) << why.to_string();
  EXPECT_GE(std::chrono::duration<double>(Clock::now() - t0).count(), 0.9);
  auto st = a->stats()[0];
  EXPECT_EQ(st.timeouts, 1u);
  EXPECT_EQ(st.send_failures, 1u);
  EXPECT_EQ(st.inflight_bytes, 0u);
}

// --- a receiver process killed mid-transfer ---------------------------------------------------

// The helper process: this test binary re-executed with MYCEL_UCX_TEST_CHILD=<dir>. It listens,
// publishes its address, receives one frame, then stalls (no more progress: the slowest of
// receivers), so the large frames sent next are mid-transfer when it is killed. It runs from a
// static initialiser, before GoogleTest, so it never shows up as a test.
[[maybe_unused]] const bool kChildRan = [] {
  const char* dir = std::getenv("MYCEL_UCX_TEST_CHILD");
  if (dir == nullptr) return false;
  auto t = make_ucx_transport("ucx://127.0.0.1:0", {});
  if (!t.is_ok()) _exit(3);
  {
    std::ofstream f(std::string(dir) + "/addr.tmp");
    f << (*t)->local_address();
  }
  std::filesystem::rename(std::string(dir) + "/addr.tmp", std::string(dir) + "/addr");
  for (bool got = false; !got;) {
    for (Event& e : (*t)->poll(0.1)) {
      if (e.kind == EventKind::kFrame) got = true;
    }
  }
  std::ofstream(std::string(dir) + "/got");
  for (;;) pause();
}();

TEST(UcxFailure, ReceiverKilledMidTransferGivesErrorsAndSenderGoesOn) {
  auto dir = std::filesystem::temp_directory_path() /
             ("mycel-ucx-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    setenv("MYCEL_UCX_TEST_CHILD", dir.c_str(), 1);
    execl("/proc/self/exe", "ucx_child", static_cast<char*>(nullptr));
    _exit(127);
  }
  auto wait_file = [&](const char* name, double s) {
    auto end = Clock::now() + std::chrono::duration<double>(s);
    while (!std::filesystem::exists(dir / name) && Clock::now() < end) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return std::filesystem::exists(dir / name);
  };
  Options opt;
  opt.send_timeout_s = 60;  // the failure must come from the peer's death, not a timeout
  auto a = make(opt), other = make();
  ASSERT_TRUE(a && other);
  if (!wait_file("addr", 60)) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    FAIL() << "helper process did not start";
  }
  std::string child_addr;
  std::ifstream(dir / "addr") >> child_addr;
  // A small frame first (the child receives it and stalls), then large frames (rendezvous:
  // they need the receiver) that are in flight when it dies.
  ASSERT_TRUE(a->send(child_addr, pattern(100, 0), nullptr).is_ok());
  auto end = Clock::now() + std::chrono::seconds(60);
  while (!std::filesystem::exists(dir / "got") && Clock::now() < end) a->poll(0.01);
  ASSERT_TRUE(std::filesystem::exists(dir / "got"));
  for (int i = 1; i < 4; ++i) {
    ASSERT_TRUE(a->send(child_addr, pattern(size_t(32) << 20, i), nullptr).is_ok());
  }
  for (int i = 0; i < 20; ++i) a->poll(0.01);
  ASSERT_GT(a->stats()[0].inflight_bytes, 0u) << "the frames completed before the kill";
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  std::filesystem::remove_all(dir);

  int failed = 0;
  bool down = false;
  ASSERT_TRUE(pump({a.get()},
                   [&](size_t, Event& e) {
                     if (e.kind == EventKind::kSendFailed) failed++;
                     if (e.kind == EventKind::kPeerDown) {
                       EXPECT_EQ(e.peer, child_addr);
                       down = true;
                     }
                   },
                   [&] { return down && a->stats()[0].inflight_bytes == 0; }, 60))
      << "no peer-down event after the receiver died";
  EXPECT_EQ(failed, 3);
  PeerStats dead;
  for (auto& s : a->stats()) {
    if (s.peer == child_addr) dead = s;
  }
  EXPECT_EQ(dead.inflight_bytes, 0u);  // its buffers were released
  EXPECT_EQ(dead.send_failures, 3u);
  EXPECT_FALSE(dead.connected);

  // The sender goes on with another peer.
  ASSERT_TRUE(a->send(other->local_address(), pattern(size_t(4) << 20, 7), nullptr).is_ok());
  std::vector<uint8_t> got;
  ASSERT_TRUE(pump({a.get(), other.get()},
                   [&](size_t, Event& e) {
                     if (e.kind == EventKind::kFrame) got = std::move(e.frame.bytes);
                   },
                   [&] { return !got.empty(); }));
  EXPECT_TRUE(got == pattern(size_t(4) << 20, 7));
}

// --- idle CPU ---------------------------------------------------------------------------------

double cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
         1e-6 * (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

// A receiver with 16 connections waits in poll() without spinning. The whole process (17
// transports, UCX's threads) is measured. The 1%-of-a-core target is checked by
// `mycel bench transport` (idle row); this test only catches busy polling, with a margin that
// a loaded machine cannot break.
TEST(UcxTransport, IdlePeerWithSixteenConnectionsDoesNotSpin) {
  FanIn f = fan_in(16);
  ASSERT_TRUE(f.ok);
  auto& rx = f.rx;
  auto& all = f.all;
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(f.tx[size_t(i)]->send(rx->local_address(), pattern(10, i), nullptr).is_ok());
  }
  int frames = 0;
  ASSERT_TRUE(pump(all, [&](size_t, Event& e) { frames += e.kind == EventKind::kFrame; },
                   [&] { return frames == 16; }));
  const double c0 = cpu_seconds();
  const auto t0 = Clock::now();
  while (Clock::now() - t0 < std::chrono::seconds(2)) {
    for (Event& e : rx->poll(0.5)) ADD_FAILURE() << "unexpected event " << int(e.kind);
  }
  const double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  const double share = (cpu_seconds() - c0) / wall;
  RecordProperty("idle_cpu_share", std::to_string(share));
  EXPECT_LT(share, 0.10) << "an idle receiver used " << share * 100 << "% of a core";
}

}  // namespace
}  // namespace mycel::transport

#else

TEST(UcxTransport, Unavailable) { GTEST_SKIP() << "built without UCX (libucx-dev not found)"; }

#endif
