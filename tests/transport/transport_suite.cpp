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
#include <cstdint>
#include <cstdlib>
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

// --- registered memory and device staging ----------------------------------------------------

// DeviceMemoryOps over ordinary host memory standing in for a GPU's: copies finish only after
// `polls` calls of copy_done (as an asynchronous DMA would), a chosen copy fails, and every
// pinned buffer is counted, so the staging path is tested where no GPU is.
struct FakeDevice {
  int polls = 3;
  uint64_t fail_ticket = 0;  // this copy's copy_done reports an error
  std::atomic<int> pinned_live{0}, pinned_allocs{0}, copies{0};
  std::map<uint64_t, int> pending;  // ticket -> polls left
  uint64_t next = 1;

  std::shared_ptr<const DeviceMemoryOps> ops() {
    auto o = std::make_shared<DeviceMemoryOps>();
    o->alloc_pinned = [this](size_t n) -> Result<void*> {
      pinned_live++;
      pinned_allocs++;
      return std::malloc(n);
    };
    o->free_pinned = [this](void* p) {
      pinned_live--;
      std::free(p);
    };
    o->copy_to_host = [this](void* dst, const void* src, size_t n) -> Result<uint64_t> {
      std::memcpy(dst, src, n);
      copies++;
      pending[next] = polls;
      return next++;
    };
    o->copy_done = [this](uint64_t t) -> Result<bool> {
      auto it = pending.find(t);
      if (it == pending.end()) return Error(Code::kNotFound, "unknown ticket");
      if (it->second-- > 0) return false;
      pending.erase(it);
      if (t == fail_ticket) return Error(Code::kInternal, "simulated copy failure");
      return true;
    };
    return o;
  }
};

// Frames laid end to end in one buffer, each at a 64-byte aligned offset.
struct FrameBlock {
  std::vector<uint8_t> buf;
  std::vector<std::pair<size_t, size_t>> at;  // (offset, bytes)
  FrameBlock(uint64_t sender, uint64_t first_seq, const std::vector<size_t>& payloads) {
    size_t total = 0;
    for (size_t n : payloads) total += (n + kFrameHeaderBytes + 63) / 64 * 64;
    buf.resize(total);
    size_t off = 0;
    uint64_t seq = first_seq;
    for (size_t n : payloads) {
      auto f = make_frame(sender, seq++, n);
      std::memcpy(buf.data() + off, f.data(), f.size());
      at.emplace_back(off, f.size());
      off += (f.size() + 63) / 64 * 64;
    }
  }
};

TEST_P(TransportSuite, RegionSendsArriveIntactAndInOrderWithOrdinarySends) {
  for (MemoryType type : {MemoryType::kHost, MemoryType::kCuda}) {
    SCOPED_TRACE(std::string(memory_type_name(type)));
    FakeDevice dev;
    Options opt;
    opt.device_ops = dev.ops();
    auto a = make(opt), b = make();
    ASSERT_TRUE(a && b);
    const std::vector<size_t> sizes = {0, 1, 4096, 1 << 20, 3 << 20};
    FrameBlock blk(3, 0, sizes);
    auto reg = a->register_memory(blk.buf.data(), blk.buf.size(), type);
    ASSERT_TRUE(reg.is_ok()) << reg.status().to_string();
    std::vector<FrameHeader> got;
    std::map<uint64_t, int> done;
    int failed = 0;
    auto sink = [&](size_t i, Event& e) {
      if (i == 1 && e.kind == EventKind::kFrame) {
        FrameHeader h;
        EXPECT_TRUE(check_frame(e.frame.bytes, &h));
        got.push_back(h);
      }
      if (i == 0 && e.kind == EventKind::kSendComplete) ++done[e.token];
      if (e.kind == EventKind::kSendFailed) ++failed;
    };
    // Alternate: region frame k (seq 2k), then an ordinary frame (seq 2k + 1).
    uint64_t seq = 0;
    std::vector<uint64_t> tokens;
    for (size_t k = 0; k < sizes.size(); ++k) {
      uint64_t tok = 0;
      FrameBlock one(3, seq, {sizes[k]});
      std::memcpy(blk.buf.data() + blk.at[k].first, one.buf.data(), one.at[0].second);
      ASSERT_TRUE(a->send_region(b->local_address(), *reg, blk.at[k].first, blk.at[k].second,
                                 &tok)
                      .is_ok());
      tokens.push_back(tok);
      ASSERT_TRUE(a->send(b->local_address(), make_frame(3, seq + 1, 100), &tok).is_ok());
      tokens.push_back(tok);
      seq += 2;
    }
    ASSERT_TRUE(pump({a.get(), b.get()}, sink,
                     [&] { return got.size() == seq && done.size() == seq; }))
        << "got " << got.size() << ", completed " << done.size();
    for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].seq, i) << "out of order";
    for (uint64_t t : tokens) EXPECT_EQ(done[t], 1);
    EXPECT_EQ(failed, 0);
    // Every send finished, so the region can go; then it is unknown.
    EXPECT_TRUE(a->deregister_memory(*reg).is_ok());
    EXPECT_EQ(a->deregister_memory(*reg).code(), Code::kNotFound);
    uint64_t tok = 0;
    EXPECT_EQ(a->send_region(b->local_address(), *reg, 0, 64, &tok).code(), Code::kNotFound);
    if (type == MemoryType::kCuda) {
      EXPECT_EQ(dev.copies.load(), int(sizes.size())) << "one staging copy per frame";
    }
    a.reset();
    EXPECT_EQ(dev.pinned_live.load(), 0) << "staging buffers outlive the transport";
  }
}

TEST_P(TransportSuite, BadRegionsAreErrors) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(a->register_memory(nullptr, 10).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(a->register_memory(buf.data(), 0).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(a->register_memory(buf.data(), buf.size(), MemoryType::kCuda).status().code(),
            Code::kUnavailable)
      << "device memory without DeviceMemoryOps";
  auto reg = a->register_memory(buf.data(), buf.size());
  ASSERT_TRUE(reg.is_ok());
  uint64_t tok = 0;
  const Address to = b->local_address();
  EXPECT_EQ(a->send_region(to, *reg, 4000, 200, &tok).code(), Code::kOutOfRange);
  EXPECT_EQ(a->send_region(to, *reg, 5000, 0, &tok).code(), Code::kOutOfRange);
  EXPECT_EQ(a->send_region(to, *reg, SIZE_MAX, 2, &tok).code(), Code::kOutOfRange);
  MemoryRegion forged = *reg;
  forged.bytes *= 2;
  EXPECT_EQ(a->send_region(to, forged, 0, 8000, &tok).code(), Code::kNotFound);
  forged = *reg;
  forged.id += 100;
  EXPECT_EQ(a->send_region(to, forged, 0, 64, &tok).code(), Code::kNotFound);
  EXPECT_EQ(b->deregister_memory(*reg).code(), Code::kNotFound) << "another transport's region";
  EXPECT_TRUE(a->deregister_memory(*reg).is_ok());
}

// --- link estimate (transport/link_estimator.h) ----------------------------------------------

PeerStats stats_of(Transport& t, const Address& peer) {
  for (const PeerStats& s : t.stats()) {
    if (s.peer == peer) return s;
  }
  return PeerStats{};
}

// The estimate has one meaning on every transport and needs no large frames: after 20 frames
// of 200 KB (a few in flight) it is nonzero and within 3x of the throughput measured here, and
// its age grows while the link is idle.
// The estimate's agreement with the throughput the test measures is checked over up to three
// trials on fresh transports: under a parallel ctest on 2 cores one trial's probe round trips
// can be inflated tenfold by the processes beside it (seen: 19 MB/s estimated against 275 MB/s
// measured, rtt 9 ms), which says nothing about the estimator. The counts, the wait and the
// age are checked in every trial.
TEST_P(TransportSuite, LinkEstimateFromTwentyFramesOf200KB) {
  std::string seen;
  bool within = false;
  for (int trial = 0; trial < 3 && !within; ++trial) {
    auto a = make(), b = make();
    ASSERT_TRUE(a && b);
    const Address to = b->local_address();
    EXPECT_LT(stats_of(*a, to).bandwidth_age_s, 0) << "no estimate before any send";
    const size_t kPayload = 200000 - kFrameHeaderBytes;
    const int kFrames = 20, kWindow = 4;
    std::vector<std::vector<uint8_t>> frames;
    for (int i = 0; i < kFrames; ++i) frames.push_back(make_frame(9, uint64_t(i), kPayload));
    // A small frame first: the connection is made before the stream is measured.
    int done = 0, got = 0, sent = 0;
    auto sink = [&](size_t i, Event& e) {
      done += i == 0 && e.kind == EventKind::kSendComplete;
      got += i == 1 && e.kind == EventKind::kFrame;
      EXPECT_NE(e.kind, EventKind::kSendFailed) << e.status.to_string();
    };
    ASSERT_TRUE(a->send(to, make_frame(9, 99, 10), nullptr).is_ok());
    ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return done == 1 && got == 1; }));
    done = got = 0;
    const auto t0 = Clock::now();
    ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] {
      while (sent < kFrames && sent - done < kWindow) {
        EXPECT_TRUE(a->send(to, std::move(frames[size_t(sent)]), nullptr).is_ok());
        ++sent;
      }
      return done == kFrames && got == kFrames;
    }));
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const double measured = double(kFrames) * 200000 / secs;
    // ucx: eager frames complete on a local copy; they count once the peer has answered a probe
    // sent after them (a round trip later), and until then they are still waiting.
    ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] {
      PeerStats p = stats_of(*a, to);
      return p.bandwidth_age_s >= 0 && p.oldest_send_wait_s == 0;
    }, 5)) << "no estimate, or a send still waits with nothing in flight";
    PeerStats s = stats_of(*a, to);
    std::printf("%s trial %d: bandwidth estimate %.3g B/s, measured %.3g B/s, rtt %.3g s\n",
                GetParam().c_str(), trial, s.bandwidth_Bps, measured, s.rtt_s);
    seen += " [" + std::to_string(s.bandwidth_Bps) + " vs " + std::to_string(measured) + "]";
    within = s.bandwidth_Bps > measured / 3 && s.bandwidth_Bps < measured * 3;
    EXPECT_EQ(s.bytes_sent, uint64_t(kFrames) * 200000 + make_frame(9, 99, 10).size());
    EXPECT_EQ(s.frames_sent, uint64_t(kFrames) + 1);
    ASSERT_GE(s.bandwidth_age_s, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    PeerStats later = stats_of(*a, to);
    EXPECT_GE(later.bandwidth_age_s, s.bandwidth_age_s + 0.09) << "the age grows while idle";
    EXPECT_EQ(later.bandwidth_Bps, s.bandwidth_Bps);
    if (later.rtt_age_s >= 0) {
      EXPECT_GE(later.rtt_age_s, 0.09);
    }
  }
  EXPECT_TRUE(within) << "estimate within 3x of the measured throughput in no trial (B/s):" << seen;
}

// Back-pressure figure: a send the receiver does not take waits, and the wait shows.
TEST_P(TransportSuite, OldestSendWaitGrowsWhileTheReceiverDoesNotTakeTheFrame) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  const Address to = b->local_address();
  int done = 0;
  auto sink = [&](size_t i, Event& e) { done += i == 0 && e.kind == EventKind::kSendComplete; };
  ASSERT_TRUE(a->send(to, make_frame(10, 0, 10), nullptr).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return done == 1; }));
  // Large enough that UCX needs the receiver (rendezvous); inproc always does.
  ASSERT_TRUE(a->send(to, make_frame(10, 1, 4 << 20), nullptr).is_ok());
  const auto until = Clock::now() + std::chrono::milliseconds(150);
  while (Clock::now() < until) a->poll(0.01);
  PeerStats s = stats_of(*a, to);
  EXPECT_GE(s.oldest_send_wait_s, 0.1);
  EXPECT_GT(s.inflight_bytes, size_t(4) << 20);
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return done == 2; }));
  EXPECT_EQ(stats_of(*a, to).oldest_send_wait_s, 0);
}

// --- counting at completion, traffic classes ---------------------------------------------------

TEST_P(TransportSuite, CompletionEventsCarryTrafficClassAndBytesAndCountOnlyThen) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  const Address to = b->local_address();
  const auto f0 = make_frame(11, 0, 100), f1 = make_frame(11, 1, 300000);
  uint64_t t0 = 0, t1 = 0;
  ASSERT_TRUE(a->send(to, f0, &t0).is_ok());  // tclass 0 by default
  ASSERT_TRUE(a->send(to, f1, &t1, /*tclass=*/1).is_ok());
  std::map<uint64_t, Event> ends;
  auto sink = [&](size_t i, Event& e) {
    if (i == 0 && (e.kind == EventKind::kSendComplete || e.kind == EventKind::kSendFailed)) {
      ends[e.token] = e;
    }
  };
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return ends.size() == 2; }));
  EXPECT_EQ(ends[t0].kind, EventKind::kSendComplete);
  EXPECT_EQ(ends[t0].tclass, 0);
  EXPECT_EQ(ends[t0].bytes, f0.size());
  EXPECT_EQ(ends[t1].tclass, 1);
  EXPECT_EQ(ends[t1].bytes, f1.size());
  PeerStats s = stats_of(*a, to);
  EXPECT_EQ(s.bytes_sent, f0.size() + f1.size());
  EXPECT_EQ(s.frames_sent, 2u);
  // A send that fails is not counted as sent; its event still carries its class.
  Options small;
  small.max_frame_bytes = 1000;  // the receiver refuses larger frames (inproc); ucx: see below
  auto c = make(small);
  ASSERT_TRUE(c);
  uint64_t t2 = 0;
  Status st = a->send(c->local_address(), make_frame(11, 2, 5000), &t2, 7);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  Event end;
  bool ended = false, got = false;
  ASSERT_TRUE(pump({a.get(), c.get()}, [&](size_t i, Event& e) {
    if (i == 0 && e.token == t2 &&
        (e.kind == EventKind::kSendComplete || e.kind == EventKind::kSendFailed)) {
      end = e;
      ended = true;
    }
    got |= i == 1 && e.kind == EventKind::kFrame;
  }, [&] { return ended; }));
  EXPECT_EQ(end.tclass, 7);
  EXPECT_FALSE(got) << "a refused frame is not delivered";
  PeerStats sc = stats_of(*a, c->local_address());
  if (end.kind == EventKind::kSendFailed) {
    EXPECT_EQ(sc.bytes_sent, 0u) << "a failed send is not counted as sent";
    EXPECT_EQ(sc.frames_sent, 0u);
  } else {
    // ucx: the receiver refuses the frame after the transfer, and the send completes.
    EXPECT_EQ(sc.bytes_sent, end.bytes);
  }
}

// --- send buffers (acquire_send_buffer / send_buffer) and recycled frames -------------------

TEST_P(TransportSuite, SendBuffersArriveIntactAndReturnToThePool) {
  Options opt;
  opt.max_send_buffer_bytes = size_t(4) << 20;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  const Address to = b->local_address();
  const size_t kFrame = size_t(1) << 20;
  std::vector<SendBuffer> held;
  for (int i = 0; i < 4; ++i) {
    auto buf = a->acquire_send_buffer(kFrame);
    ASSERT_TRUE(buf.is_ok()) << buf.status().to_string();
    ASSERT_GE(buf->size(), kFrame);
    held.push_back(std::move(buf).value());
  }
  auto more = a->acquire_send_buffer(kFrame);
  ASSERT_FALSE(more.is_ok()) << "the pool is bounded";
  EXPECT_EQ(more.status().code(), Code::kNoResource);
  // One dropped unsent goes back at once.
  const uint8_t* dropped = held.back().data();
  held.pop_back();
  auto again = a->acquire_send_buffer(kFrame);
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  if (GetParam() == "ucx") {
    EXPECT_EQ(again->data(), dropped) << "the same memory is reused";
  }
  held.push_back(std::move(again).value());
  // Filled in place and sent: the frames arrive intact, in order with ordinary sends.
  std::vector<uint64_t> toks;
  std::map<uint64_t, Event> ends;
  std::vector<uint64_t> seqs;
  auto sink = [&](size_t i, Event& e) {
    if (i == 0 && (e.kind == EventKind::kSendComplete || e.kind == EventKind::kSendFailed)) {
      ends[e.token] = e;
    }
    if (i == 1 && e.kind == EventKind::kFrame) {
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      seqs.push_back(h.seq);
      b->recycle(std::move(e.frame.bytes));
    }
  };
  for (size_t k = 0; k < held.size(); ++k) {
    auto f = make_frame(12, k, kFrame - kFrameHeaderBytes - 100 * k);
    std::memcpy(held[k].data(), f.data(), f.size());
    uint64_t tok = 0;
    ASSERT_TRUE(a->send_buffer(to, std::move(held[k]), f.size(), 1, &tok).is_ok());
    EXPECT_FALSE(held[k]) << "send_buffer takes the buffer";
    toks.push_back(tok);
  }
  uint64_t last = 0;
  ASSERT_TRUE(a->send(to, make_frame(12, 4, 10), &last).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return ends.size() == 5 && seqs.size() == 5; }));
  EXPECT_EQ(seqs, (std::vector<uint64_t>{0, 1, 2, 3, 4}));
  for (size_t k = 0; k < toks.size(); ++k) {
    EXPECT_EQ(ends[toks[k]].kind, EventKind::kSendComplete);
    EXPECT_EQ(ends[toks[k]].tclass, 1);
    EXPECT_EQ(ends[toks[k]].bytes, kFrame - 100 * k);
  }
  // Completion gave every buffer back: the whole pool can be acquired again.
  for (int i = 0; i < 4; ++i) {
    auto buf = a->acquire_send_buffer(kFrame);
    ASSERT_TRUE(buf.is_ok()) << "after completion, buffer " << i << ": "
                             << buf.status().to_string();
    held[size_t(i)] = std::move(buf).value();
  }
  held.clear();
}

TEST_P(TransportSuite, FailedAndRefusedSendBuffersReturnToThePool) {
  Options opt;
  opt.max_send_buffer_bytes = size_t(2) << 20;
  auto a = make(opt);
  ASSERT_TRUE(a);
  const size_t kFrame = size_t(1) << 20;
  // Refused before anything is queued (bad address): back at once, no event.
  for (int i = 0; i < 3; ++i) {
    auto buf = a->acquire_send_buffer(kFrame);
    ASSERT_TRUE(buf.is_ok()) << "try " << i << ": " << buf.status().to_string();
    EXPECT_FALSE(a->send_buffer("nonsense://x", std::move(buf).value(), kFrame).is_ok());
  }
  // Failed later (nobody listens): back at the kSendFailed (or at once if refused now).
  for (int i = 0; i < 3; ++i) {
    auto buf = a->acquire_send_buffer(kFrame);
    ASSERT_TRUE(buf.is_ok()) << "try " << i << ": " << buf.status().to_string();
    auto f = make_frame(13, uint64_t(i), 1000);
    std::memcpy(buf->data(), f.data(), f.size());
    uint64_t tok = 0;
    Status st = a->send_buffer(unreachable(), std::move(buf).value(), f.size(), 2, &tok);
    if (!st.is_ok()) continue;
    bool failed = false;
    ASSERT_TRUE(pump({a.get()}, [&](size_t, Event& e) {
      if (e.kind == EventKind::kSendFailed && e.token == tok) {
        failed = true;
        EXPECT_EQ(e.tclass, 2);
      }
    }, [&] { return failed; }, 20));
    // Wait out the reconnection backoff before the next try.
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  auto x = a->acquire_send_buffer(kFrame), y = a->acquire_send_buffer(kFrame);
  EXPECT_TRUE(x.is_ok() && y.is_ok()) << "every buffer came back";
}

TEST_P(TransportSuite, APeerDyingWithSendBuffersInFlightGivesThemBack) {
  Options opt;
  opt.max_send_buffer_bytes = size_t(16) << 20;
  opt.send_timeout_s = 5;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  const Address to = b->local_address();
  bool up = false;
  ASSERT_TRUE(a->send(to, make_frame(14, 0, 10), nullptr).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, [&](size_t i, Event& e) {
    up |= i == 0 && e.kind == EventKind::kSendComplete;
  }, [&] { return up; }));
  const size_t kFrame = size_t(4) << 20;
  int queued = 0;
  for (int k = 0; k < 4; ++k) {
    auto buf = a->acquire_send_buffer(kFrame);
    ASSERT_TRUE(buf.is_ok()) << buf.status().to_string();
    auto f = make_frame(14, uint64_t(k + 1), kFrame - kFrameHeaderBytes);
    std::memcpy(buf->data(), f.data(), f.size());
    ASSERT_TRUE(a->send_buffer(to, std::move(buf).value(), f.size(), 1, nullptr).is_ok());
    ++queued;
  }
  EXPECT_FALSE(a->acquire_send_buffer(kFrame).is_ok()) << "all four are in flight";
  b.reset();  // gone with the frames unread
  int ended = 0;
  ASSERT_TRUE(pump({a.get()}, [&](size_t, Event& e) {
    ended += e.kind == EventKind::kSendFailed || e.kind == EventKind::kSendComplete;
  }, [&] { return ended == queued; }, 20));
  std::vector<SendBuffer> all;
  for (int k = 0; k < 4; ++k) {
    auto buf = a->acquire_send_buffer(kFrame);
    ASSERT_TRUE(buf.is_ok()) << "buffer " << k << " did not come back: "
                             << buf.status().to_string();
    all.push_back(std::move(buf).value());
  }
}

// What only ucx does with regions: it reads them in place (so a region is busy until its
// sends complete) and stages device memory without blocking (bounded pinned memory, copies
// polled, a failed copy skipped on the wire).
class UcxRegions : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kHaveUcx) GTEST_SKIP() << "built without UCX (libucx-dev not found at configure time)";
  }
  static std::unique_ptr<Transport> make(Options opt = {}) {
    auto r = make_transport("ucx://127.0.0.1:0", opt);
    EXPECT_TRUE(r.is_ok()) << r.status().to_string();
    return r.is_ok() ? std::move(r).value() : nullptr;
  }
};

TEST_F(UcxRegions, ARegionIsNotDeregisteredUnderASend) {
  auto a = make(), b = make();
  ASSERT_TRUE(a && b);
  FrameBlock blk(4, 0, {16 << 20});  // rendezvous: completes only when b has pulled it
  auto reg = a->register_memory(blk.buf.data(), blk.buf.size());
  ASSERT_TRUE(reg.is_ok()) << reg.status().to_string();
  uint64_t tok = 0;
  ASSERT_TRUE(a->send_region(b->local_address(), *reg, 0, blk.at[0].second, &tok).is_ok());
  for (int i = 0; i < 5; ++i) a->poll(0.002);
  EXPECT_EQ(a->deregister_memory(*reg).code(), Code::kNoResource);
  bool got = false, done = false;
  auto sink = [&](size_t i, Event& e) {
    if (i == 1 && e.kind == EventKind::kFrame) {
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      got = true;
    }
    if (i == 0 && e.kind == EventKind::kSendComplete && e.token == tok) done = true;
    EXPECT_NE(e.kind, EventKind::kSendFailed) << e.status.to_string();
  };
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return got && done; }));
  EXPECT_TRUE(a->deregister_memory(*reg).is_ok());
}

TEST_F(UcxRegions, StagingMemoryIsBoundedAndReused) {
  FakeDevice dev;
  dev.polls = 1 << 30;  // copies hang until released below
  Options opt;
  opt.device_ops = dev.ops();
  opt.max_staging_bytes = size_t(8) << 20;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  const size_t payload = (size_t(3) << 20) + 1000;  // one 4 MiB staging buffer each
  FrameBlock blk(5, 0, {payload, payload, payload});
  auto reg = a->register_memory(blk.buf.data(), blk.buf.size(), MemoryType::kCuda);
  ASSERT_TRUE(reg.is_ok()) << reg.status().to_string();
  const Address to = b->local_address();
  uint64_t tok = 0;
  ASSERT_TRUE(a->send_region(to, *reg, blk.at[0].first, blk.at[0].second, &tok).is_ok());
  ASSERT_TRUE(a->send_region(to, *reg, blk.at[1].first, blk.at[1].second, &tok).is_ok());
  Status full = a->send_region(to, *reg, blk.at[2].first, blk.at[2].second, &tok);
  EXPECT_EQ(full.code(), Code::kNoResource) << full.to_string();
  EXPECT_EQ(dev.pinned_allocs.load(), 2);
  for (int i = 0; i < 20; ++i) a->poll(0.001);  // copies unfinished: nothing may go out
  for (auto& [t, left] : dev.pending) left = 0;
  std::vector<uint64_t> seqs;
  int completed = 0;
  auto sink = [&](size_t i, Event& e) {
    if (i == 1 && e.kind == EventKind::kFrame) {
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      seqs.push_back(h.seq);
    }
    completed += i == 0 && e.kind == EventKind::kSendComplete;
    EXPECT_NE(e.kind, EventKind::kSendFailed) << e.status.to_string();
  };
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return completed == 2 && seqs.size() == 2; }));
  dev.polls = 0;
  ASSERT_TRUE(a->send_region(to, *reg, blk.at[2].first, blk.at[2].second, &tok).is_ok());
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return completed == 3 && seqs.size() == 3; }));
  EXPECT_EQ(seqs, (std::vector<uint64_t>{0, 1, 2}));
  EXPECT_EQ(dev.pinned_allocs.load(), 2) << "a free staging buffer is reused";
  EXPECT_TRUE(a->deregister_memory(*reg).is_ok());
  a.reset();
  EXPECT_EQ(dev.pinned_live.load(), 0);
}

TEST_F(UcxRegions, AFailedStagingCopyFailsItsSendOnlyAndLaterFramesStillArrive) {
  FakeDevice dev;
  Options opt;
  opt.device_ops = dev.ops();
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  FrameBlock blk(6, 0, {1000, 1000, 1000});
  auto reg = a->register_memory(blk.buf.data(), blk.buf.size(), MemoryType::kCuda);
  ASSERT_TRUE(reg.is_ok());
  const Address to = b->local_address();
  std::vector<uint64_t> toks(3);
  dev.fail_ticket = 2;  // the second frame's copy
  for (int k = 0; k < 3; ++k) {
    ASSERT_TRUE(a->send_region(to, *reg, blk.at[k].first, blk.at[k].second, &toks[k]).is_ok());
  }
  // And an ordinary frame after them, on the same connection.
  ASSERT_TRUE(a->send(to, make_frame(6, 3, 10), nullptr).is_ok());
  std::vector<uint64_t> seqs;
  int completed = 0, failed = 0, down = 0;
  auto sink = [&](size_t i, Event& e) {
    if (i == 1 && e.kind == EventKind::kFrame) {
      FrameHeader h;
      EXPECT_TRUE(check_frame(e.frame.bytes, &h));
      seqs.push_back(h.seq);
    }
    completed += i == 0 && e.kind == EventKind::kSendComplete;
    if (e.kind == EventKind::kSendFailed) {
      ++failed;
      EXPECT_EQ(e.token, toks[1]);
      EXPECT_EQ(e.status.code(), Code::kInternal) << e.status.to_string();
    }
    down += e.kind == EventKind::kPeerDown;
  };
  ASSERT_TRUE(pump({a.get(), b.get()}, sink, [&] { return completed == 3 && seqs.size() == 3; }))
      << "completed " << completed << ", received " << seqs.size();
  for (int i = 0; i < 10; ++i) {
    a->poll(0.001);
    b->poll(0.001);
  }
  EXPECT_EQ(seqs, (std::vector<uint64_t>{0, 2, 3}));
  EXPECT_EQ(failed, 1);
  EXPECT_EQ(down, 0) << "a local copy failure is not the link's";
}

TEST_F(UcxRegions, AReceiverDyingWhileFramesAreStagedFailsThemAndFreesTheBuffers) {
  FakeDevice dev;
  dev.polls = 50;
  Options opt;
  opt.device_ops = dev.ops();
  opt.send_timeout_s = 5;
  auto a = make(opt), b = make();
  ASSERT_TRUE(a && b);
  const Address to = b->local_address();
  ASSERT_TRUE(a->send(to, make_frame(7, 0, 10), nullptr).is_ok());
  bool up = false;
  ASSERT_TRUE(pump({a.get(), b.get()}, [&](size_t i, Event& e) {
    up |= i == 0 && e.kind == EventKind::kPeerUp;
  }, [&] { return up; }));
  FrameBlock blk(7, 1, {1 << 20, 1 << 20});
  auto reg = a->register_memory(blk.buf.data(), blk.buf.size(), MemoryType::kCuda);
  ASSERT_TRUE(reg.is_ok());
  for (int k = 0; k < 2; ++k) {
    ASSERT_TRUE(a->send_region(to, *reg, blk.at[k].first, blk.at[k].second, nullptr).is_ok());
  }
  b.reset();  // gone before the copies finish
  int failed = 0;
  ASSERT_TRUE(pump({a.get()}, [&](size_t, Event& e) { failed += e.kind == EventKind::kSendFailed; },
                   [&] { return failed == 2; }, 20));
  EXPECT_TRUE(a->deregister_memory(*reg).is_ok());
  a.reset();
  EXPECT_EQ(dev.pinned_live.load(), 0);
}

INSTANTIATE_TEST_SUITE_P(Kinds, TransportSuite, ::testing::Values("inproc", "ucx"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace mycel::transport
