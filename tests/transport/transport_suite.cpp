// The transport contract (transport/transport.h), one suite run over every transport kind:
// "inproc" always, "ucx" where the build has UCX (skipped with a reason otherwise). Frames
// are real wire-format frames, checked by the decoder on arrival (CRC included).
//
// Each transport is driven by one thread at a time (UCX's worker is single-threaded): tests
// pump all transports round-robin from the test thread, or give each sender its own thread.
#include <gtest/gtest.h>

#include <time.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "transport/frame.h"
#include "transport/transport.h"

namespace mycel::transport {
namespace {

using Clock = std::chrono::steady_clock;

#if MYCEL_HAVE_UCX
constexpr bool kHaveUcx = true;
#else
constexpr bool kHaveUcx = false;
#endif

// Payload bytes derived from (sender, seq), so the receiver can check them in a streaming
// pass (no second buffer for 256 MiB frames).
class Pattern {
 public:
  Pattern(uint64_t sender, uint64_t seq)
      : x_(sender * 0x9E3779B97F4A7C15ull + seq * 0xBF58476D1CE4E5B9ull + 1), seq_(seq) {}
  uint64_t word() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 7;
    x_ ^= x_ << 17;
    return x_;
  }
  uint8_t tail(size_t i) const { return uint8_t(i * 31 + seq_); }

 private:
  uint64_t x_, seq_;
};

void fill(uint8_t* p, size_t n, uint64_t sender, uint64_t seq) {
  Pattern g(sender, seq);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w = g.word();
    std::memcpy(p + i, &w, 8);
  }
  for (; i < n; ++i) p[i] = g.tail(i);
}

bool matches(const uint8_t* p, size_t n, uint64_t sender, uint64_t seq) {
  Pattern g(sender, seq);
  size_t i = 0;
  uint64_t diff = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, p + i, 8);
    diff |= w ^ g.word();
  }
  for (; i < n; ++i) diff |= p[i] ^ g.tail(i);
  return diff == 0;
}

std::vector<uint8_t> make_frame(uint64_t sender, uint64_t seq, size_t payload) {
  auto buf = make_frame_buffer(payload);
  fill(buf.data() + kFrameHeaderBytes, payload, sender, seq);
  FrameHeader h;
  h.type = MessageType::kModel;
  h.sender_id = sender;
  h.seq = seq;
  h.param_count = payload / 4;
  EXPECT_TRUE(seal_frame(h, buf).is_ok());
  return buf;
}

// Decodes (CRC included) and checks the payload against fill(); returns the header.
::testing::AssertionResult check_frame(const std::vector<uint8_t>& bytes, FrameHeader* out) {
  FrameView v;
  FrameLimits lim{.max_payload_bytes = uint64_t(1) << 31, .max_params = uint64_t(1) << 32};
  FrameError e = decode_frame(bytes, lim, &v);
  if (e != FrameError::kOk) {
    return ::testing::AssertionFailure() << "frame rejected: " << frame_error_name(e);
  }
  if (!matches(v.payload.data(), v.payload.size(), v.header.sender_id, v.header.seq)) {
    return ::testing::AssertionFailure() << "payload differs (seq " << v.header.seq << ")";
  }
  *out = v.header;
  return ::testing::AssertionSuccess();
}

double thread_cpu_s() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

class TransportSuite : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "ucx" && !kHaveUcx) {
      GTEST_SKIP() << "built without UCX (libucx-dev not found at configure time)";
    }
  }

  std::unique_ptr<Transport> make(Options opt = {}) {
    opt.connect_timeout_s = 2;  // the unreachable-peer test should not wait long
    std::string listen = GetParam() == "ucx" ? "ucx://127.0.0.1:0" : "inproc://";
    auto r = make_transport(listen, opt);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? std::move(r).value() : nullptr;
  }

  // An address nobody listens at (port 1 is reserved for tcpmux and closed on test hosts).
  Address unreachable() const {
    return GetParam() == "ucx" ? "ucx://127.0.0.1:1" : "inproc://nobody-listens-here";
  }
};

// Polls every transport round-robin until done() or the deadline; events go to sink(i, ev).
bool pump(const std::vector<Transport*>& ts, const std::function<void(size_t, Event&)>& sink,
          const std::function<bool()>& done, double timeout_s = 30) {
  auto end = Clock::now() + std::chrono::duration<double>(timeout_s);
  while (!done()) {
    if (Clock::now() > end) return false;
    for (size_t i = 0; i < ts.size(); ++i) {
      for (Event& e : ts[i]->poll(0.002)) sink(i, e);
    }
  }
  return true;
}

// Sends, pumping both sides while the peer's budget is full.
Status send_retrying(Transport& from, Transport& to, std::vector<uint8_t> bytes,
                     uint64_t* token, const std::function<void(size_t, Event&)>& sink) {
  auto end = Clock::now() + std::chrono::seconds(30);
  for (;;) {
    std::vector<uint8_t> copy = bytes;  // send consumes its argument even when refused
    Status st = from.send(to.local_address(), std::move(copy), token);
    if (st.code() != Code::kNoResource || Clock::now() > end) return st;
    for (Event& e : from.poll(0.002)) sink(0, e);
    for (Event& e : to.poll(0.002)) sink(1, e);
  }
}

TEST_P(TransportSuite, FramesArriveInOrderAndIntactAtEverySize) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  const std::vector<size_t> sizes = {0, 1, 4096, 1 << 20};
  const int kPerSize = 3;
  std::vector<FrameHeader> got;
  std::map<uint64_t, int> completed;
  int failed = 0, a_up = 0, b_up = 0;
  auto sink = [&](size_t i, Event& e) {
    if (i == 1 && e.kind == EventKind::kFrame) {
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      EXPECT_EQ(e.frame.from, a->local_address());
      EXPECT_EQ(e.peer, a->local_address());
      got.push_back(h);
    }
    if (i == 0 && e.kind == EventKind::kSendComplete) ++completed[e.token];
    if (e.kind == EventKind::kSendFailed) ++failed;
    if (e.kind == EventKind::kPeerUp) ++(i == 0 ? a_up : b_up);
  };
  std::vector<uint64_t> tokens;
  uint64_t seq = 0;
  for (size_t n : sizes) {
    for (int k = 0; k < kPerSize; ++k) {
      uint64_t tok = 0;
      ASSERT_TRUE(send_retrying(*a, *b, make_frame(7, seq, n), &tok, sink).is_ok());
      tokens.push_back(tok);
      ++seq;
    }
  }
  const size_t total = sizes.size() * kPerSize;
  ASSERT_TRUE(pump({a.get(), b.get()}, sink,
                   [&] { return got.size() == total && completed.size() == total; }))
      << "received " << got.size() << " of " << total << ", completed " << completed.size();
  for (size_t i = 0; i < total; ++i) {
    EXPECT_EQ(got[i].seq, i) << "out of order";
    EXPECT_EQ(got[i].payload_bytes, sizes[i / kPerSize]);
  }
  for (uint64_t t : tokens) EXPECT_EQ(completed[t], 1) << "token " << t;
  EXPECT_EQ(failed, 0);
  EXPECT_EQ(a_up, 1);
  EXPECT_EQ(b_up, 1);

  size_t bytes = 0;
  for (size_t n : sizes) bytes += kPerSize * (n + kFrameHeaderBytes);
  bool found = false;
  for (const PeerStats& s : a->stats()) {
    if (s.peer != b->local_address()) continue;
    found = true;
    EXPECT_EQ(s.frames_sent, total);
    EXPECT_EQ(s.bytes_sent, bytes);
    EXPECT_EQ(s.inflight_bytes, 0u);
    EXPECT_TRUE(s.connected);
  }
  EXPECT_TRUE(found) << "no stats for the peer";
  found = false;
  for (const PeerStats& s : b->stats()) {
    if (s.peer != a->local_address()) continue;
    found = true;
    EXPECT_EQ(s.frames_received, total);
    EXPECT_EQ(s.bytes_received, bytes);
  }
  EXPECT_TRUE(found) << "no receiver stats for the sender";
}

TEST_P(TransportSuite, A256MiBFrameArrivesIntact) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  const size_t n = size_t(256) << 20;
  bool got = false, done = false;
  auto sink = [&](size_t i, Event& e) {
    if (i == 1 && e.kind == EventKind::kFrame) {
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      EXPECT_EQ(h.payload_bytes, n);
      got = true;
      e.frame.bytes = {};  // free it now
    }
    if (i == 0 && e.kind == EventKind::kSendComplete) done = true;
    EXPECT_NE(e.kind, EventKind::kSendFailed) << e.status.to_string();
  };
  uint64_t tok = 0;
  ASSERT_TRUE(a->send(b->local_address(), make_frame(1, 0, n), &tok).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return got && done; }, 120));
}

TEST_P(TransportSuite, SixteenSendersToOneReceiver) {
  const int kSenders = 16, kFrames = 40;
  auto rx = make();
  ASSERT_TRUE(rx);
  std::vector<std::unique_ptr<Transport>> tx;
  for (int i = 0; i < kSenders; ++i) {
    tx.push_back(make());
    ASSERT_TRUE(tx.back());
  }
  std::atomic<bool> receiver_done{false};
  std::atomic<int> sender_errors{0};
  std::vector<std::thread> threads;
  const Address dest = rx->local_address();
  for (int i = 0; i < kSenders; ++i) {
    threads.emplace_back([&, i] {
      Transport& t = *tx[i];
      int completed = 0;
      auto drain = [&](double timeout) {
        for (Event& e : t.poll(timeout)) {
          if (e.kind == EventKind::kSendComplete) ++completed;
          if (e.kind == EventKind::kSendFailed) ++sender_errors;
        }
      };
      for (int k = 0; k < kFrames; ++k) {
        auto frame = make_frame(uint64_t(i), uint64_t(k), 512 + 97 * size_t(k));
        for (;;) {
          uint64_t tok;
          Status st = t.send(dest, frame, &tok);
          if (st.is_ok()) break;
          if (st.code() != Code::kNoResource) {
            ++sender_errors;
            return;
          }
          drain(0.002);
        }
        drain(0);
      }
      // Stay up (and keep progressing) until the receiver has everything.
      auto end = Clock::now() + std::chrono::seconds(60);
      while ((!receiver_done || completed < kFrames) && Clock::now() < end) drain(0.005);
      if (completed != kFrames) ++sender_errors;
    });
  }
  std::map<uint64_t, std::vector<uint64_t>> seqs;
  size_t frames = 0;
  auto end = Clock::now() + std::chrono::seconds(60);
  while (frames < size_t(kSenders * kFrames) && Clock::now() < end) {
    for (Event& e : rx->poll(0.01)) {
      if (e.kind != EventKind::kFrame) continue;
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      seqs[h.sender_id].push_back(h.seq);
      ++frames;
    }
  }
  // Keep polling briefly so that the last completions reach the senders, then release them.
  receiver_done = true;
  auto tail = Clock::now() + std::chrono::milliseconds(200);
  while (Clock::now() < tail) rx->poll(0.01);
  for (auto& th : threads) th.join();
  EXPECT_EQ(frames, size_t(kSenders * kFrames));
  EXPECT_EQ(sender_errors.load(), 0);
  ASSERT_EQ(seqs.size(), size_t(kSenders));
  for (auto& [sender, s] : seqs) {
    ASSERT_EQ(s.size(), size_t(kFrames)) << "sender " << sender;
    for (int k = 0; k < kFrames; ++k) EXPECT_EQ(s[k], uint64_t(k)) << "sender " << sender;
  }
}

TEST_P(TransportSuite, BackPressureBoundsInFlightBytesWhileReceiverIsSlow) {
  Options opt;
  const size_t kPayload = 256 << 10;  // large enough for UCX to need the receiver (rendezvous)
  const size_t kFrame = kPayload + kFrameHeaderBytes;
  opt.max_inflight_bytes = 4 * kFrame;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  auto inflight = [&] {
    size_t n = 0;
    for (const PeerStats& s : a->stats()) n += s.inflight_bytes;
    return n;
  };

  // 1. The receiver does nothing: the sender is refused once its budget is full.
  int accepted = 0;
  Status refused;
  for (int i = 0; i < 1000; ++i) {
    uint64_t tok;
    Status st = a->send(b->local_address(), make_frame(2, uint64_t(i), kPayload), &tok);
    if (!st.is_ok()) {
      refused = st;
      break;
    }
    ++accepted;
  }
  EXPECT_EQ(refused.code(), Code::kNoResource) << refused.to_string();
  EXPECT_GE(accepted, 1);
  EXPECT_LE(size_t(accepted) * kFrame, opt.max_inflight_bytes);
  EXPECT_LE(inflight(), opt.max_inflight_bytes);

  // 2. A slow receiver (one event per turn): everything arrives, in order, and the sender's
  // in-flight bytes never exceed the budget.
  const int kTotal = 32;
  int next = accepted;
  std::vector<uint64_t> got;
  size_t peak = inflight();
  int failed = 0;
  auto end = Clock::now() + std::chrono::seconds(60);
  while (got.size() < size_t(kTotal) && Clock::now() < end) {
    if (next < kTotal) {
      uint64_t tok;
      Status st = a->send(b->local_address(), make_frame(2, uint64_t(next), kPayload), &tok);
      if (st.is_ok()) {
        ++next;
      } else {
        ASSERT_EQ(st.code(), Code::kNoResource) << st.to_string();
      }
    }
    peak = std::max(peak, inflight());
    for (Event& e : b->poll(0.001, 1)) {
      if (e.kind != EventKind::kFrame) continue;
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      got.push_back(h.seq);
    }
    for (Event& e : a->poll(0)) failed += e.kind == EventKind::kSendFailed;
  }
  ASSERT_EQ(got.size(), size_t(kTotal));
  for (int i = 0; i < kTotal; ++i) EXPECT_EQ(got[i], uint64_t(i));
  EXPECT_EQ(failed, 0);
  EXPECT_LE(peak, opt.max_inflight_bytes);
  EXPECT_GT(peak, 0u);
}

TEST_P(TransportSuite, PeerDownWhenTheOtherSideCloses) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  const Address b_addr = b->local_address();
  bool got = false, a_down = false;
  auto sink = [&](size_t i, Event& e) {
    if (i == 1 && e.kind == EventKind::kFrame) got = true;
    if (i == 0 && e.kind == EventKind::kPeerDown && e.peer == b_addr) a_down = true;
  };
  uint64_t tok;
  ASSERT_TRUE(a->send(b_addr, make_frame(3, 0, 100), &tok).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return got; }));
  // close() alone (the object stays alive, and is not polled again) must let the peer see
  // the connection go: a closed transport keeps no endpoint or socket open.
  b->close();
  ASSERT_TRUE(pump({a.get()}, sink, [&] { return a_down; }, 20))
      << "no kPeerDown at the peer after close() (for ucx: close() must complete the endpoint "
         "closes, e.g. progress the worker until they finish, not wait for the destructor)";
  bool connected = true;
  for (const PeerStats& s : a->stats()) {
    if (s.peer == b_addr) connected = s.connected;
  }
  EXPECT_FALSE(connected);
  b.reset();
  // Sending to the closed peer fails (now or by event), without hanging.
  bool failed = false;
  Status st = a->send(b_addr, make_frame(3, 1, 100), &tok);
  if (st.is_ok()) {
    auto fail_sink = [&](size_t, Event& e) {
      failed |= (e.kind == EventKind::kSendFailed && e.token == tok) ||
                (e.kind == EventKind::kPeerDown && e.peer == b_addr);
    };
    EXPECT_TRUE(pump({a.get()}, fail_sink, [&] { return failed; }, 20));
  } else {
    EXPECT_NE(st.code(), Code::kNoResource);
  }
}

TEST_P(TransportSuite, UnreachablePeerFailsWithoutHangingAndOthersGoOn) {
  auto a = make(), c = make();
  ASSERT_TRUE(a && c);
  const Address bad = unreachable();
  uint64_t tok = 0;
  auto t0 = Clock::now();
  Status st = a->send(bad, make_frame(4, 0, 10), &tok);
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5.0) << "send blocked";
  if (st.is_ok()) {
    bool failed = false;
    auto sink = [&](size_t, Event& e) {
      failed |= (e.kind == EventKind::kSendFailed && e.token == tok) ||
                (e.kind == EventKind::kPeerDown && e.peer == bad);
    };
    EXPECT_TRUE(pump({a.get()}, sink, [&] { return failed; }, 20)) << "no failure event";
  } else {
    EXPECT_NE(st.code(), Code::kNoResource) << st.to_string();
  }
  // The sender still works with a live peer.
  bool got = false;
  ASSERT_TRUE(a->send(c->local_address(), make_frame(4, 1, 10), &tok).is_ok());
  auto sink = [&](size_t i, Event& e) { got |= (i == 1 && e.kind == EventKind::kFrame); };
  EXPECT_TRUE(pump({a.get(), c.get()}, sink, [&] { return got; }));
}

TEST_P(TransportSuite, SendNotCompletedInTimeFails) {
  Options opt;
  opt.send_timeout_s = 0.3;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  // The receiver is never polled; a frame this large needs it (UCX: rendezvous).
  uint64_t tok = 0;
  ASSERT_TRUE(a->send(b->local_address(), make_frame(8, 0, 4 << 20), &tok).is_ok());
  Status why;
  bool failed = false;
  auto sink = [&](size_t, Event& e) {
    if (e.kind == EventKind::kSendFailed && e.token == tok) {
      failed = true;
      why = e.status;
    }
  };
  EXPECT_TRUE(pump({a.get()}, sink, [&] { return failed; }, 20)) << "send never timed out";
  EXPECT_EQ(why.code(), Code::kTimeout) << why.to_string();
  uint64_t timeouts = 0;
  for (const PeerStats& s : a->stats()) timeouts += s.timeouts;
  EXPECT_GE(timeouts, 1u);
}

TEST_P(TransportSuite, IdlePollWaitsWithoutSpinning) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  // Connected first, so that an idle connection is what is measured.
  bool got = false;
  uint64_t tok;
  ASSERT_TRUE(a->send(b->local_address(), make_frame(5, 0, 10), &tok).is_ok());
  auto sink = [&](size_t i, Event& e) { got |= (i == 1 && e.kind == EventKind::kFrame); };
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return got; }));
  pump({a.get(), b.get()}, [](size_t, Event&) {}, [] { return false; }, 0.05);  // drain
  double cpu0 = thread_cpu_s();
  auto t0 = Clock::now();
  auto ev = b->poll(0.3);
  double wall = std::chrono::duration<double>(Clock::now() - t0).count();
  double cpu = thread_cpu_s() - cpu0;
  EXPECT_TRUE(ev.empty());
  EXPECT_GE(wall, 0.25) << "poll returned early without events";
  EXPECT_LT(cpu, 0.1 * wall) << "poll burned " << cpu << " s of CPU in " << wall << " s";
}

TEST_P(TransportSuite, BadAddressesAreErrors) {
  auto a = make();
  ASSERT_TRUE(a);
  uint64_t tok;
  EXPECT_FALSE(a->send("", make_frame(6, 0, 1), &tok).is_ok());
  EXPECT_FALSE(a->send("carrier-pigeon://x", make_frame(6, 0, 1), &tok).is_ok());
  EXPECT_EQ(make_transport("carrier-pigeon://x").status().code(), Code::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Kinds, TransportSuite, ::testing::Values("inproc", "ucx"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace mycel::transport
