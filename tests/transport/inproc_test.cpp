// inproc-specific behaviour (the shared contract is in transport_suite.cpp): names, zero-copy,
// frames a closed receiver never polled, refused oversized frames, disconnect and reconnect,
// poll woken by another thread, concurrent senders, the factory's dispatch.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "transport/inproc.h"
#include "transport/transport.h"

namespace mycel::transport {
namespace {

using Clock = std::chrono::steady_clock;

std::unique_ptr<Transport> make(std::string_view listen = "inproc://", Options opt = {}) {
  auto r = make_inproc_transport(listen, opt);
  EXPECT_TRUE(r.is_ok()) << r.status().to_string();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

std::vector<Event> poll_all(Transport& t) { return t.poll(0, 1 << 20); }

int count(const std::vector<Event>& ev, EventKind k) {
  int n = 0;
  for (const Event& e : ev) n += e.kind == k;
  return n;
}

TEST(Inproc, NamesAreUniqueAndReusableAfterClose) {
  auto a = make("inproc://inproc-test-name");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->local_address(), "inproc://inproc-test-name");
  auto dup = make_inproc_transport("inproc://inproc-test-name");
  EXPECT_EQ(dup.status().code(), Code::kUnavailable);
  a->close();
  auto again = make_inproc_transport("inproc://inproc-test-name");
  EXPECT_TRUE(again.is_ok()) << again.status().to_string();
  auto x = make(), y = make();
  EXPECT_NE(x->local_address(), y->local_address());
  EXPECT_EQ(make_inproc_transport("ucx://x:1").status().code(), Code::kInvalidArgument);
}

TEST(Inproc, SendMovesTheBufferWithoutCopy) {
  auto a = make(), b = make();
  std::vector<uint8_t> bytes(1 << 20, 42);
  const uint8_t* data = bytes.data();
  uint64_t tok = 0;
  ASSERT_TRUE(a->send(b->local_address(), std::move(bytes), &tok).is_ok());
  auto ev = poll_all(*b);
  ASSERT_EQ(ev.size(), 2u);
  EXPECT_EQ(ev[0].kind, EventKind::kPeerUp);  // before the first frame
  ASSERT_EQ(ev[1].kind, EventKind::kFrame);
  EXPECT_EQ(ev[1].frame.bytes.data(), data);
  EXPECT_EQ(ev[1].frame.from, a->local_address());
  auto sev = poll_all(*a);
  ASSERT_EQ(sev.size(), 2u);
  EXPECT_EQ(sev[0].kind, EventKind::kPeerUp);
  EXPECT_EQ(sev[1].kind, EventKind::kSendComplete);
  EXPECT_EQ(sev[1].token, tok);
}

TEST(Inproc, BytesStayInFlightUntilTheReceiverPolls) {
  Options opt;
  opt.max_inflight_bytes = 1000;
  auto a = make("inproc://", opt), b = make();
  uint64_t tok;
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(600), &tok).is_ok());
  EXPECT_EQ(a->send(b->local_address(), std::vector<uint8_t>(600), &tok).code(),
            Code::kNoResource);
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(400), &tok).is_ok());
  EXPECT_EQ(a->stats().at(0).inflight_bytes, 1000u);
  EXPECT_EQ(count(poll_all(*a), EventKind::kSendComplete), 0);
  ASSERT_EQ(b->poll(0, 2).size(), 2u);  // peer up + the first frame
  EXPECT_EQ(a->stats().at(0).inflight_bytes, 400u);
  EXPECT_EQ(count(poll_all(*a), EventKind::kSendComplete), 1);
  // One frame above the whole budget still goes when nothing else is in flight.
  poll_all(*b);
  EXPECT_EQ(a->stats().at(0).inflight_bytes, 0u);
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(5000), &tok).is_ok());
  EXPECT_EQ(a->send(b->local_address(), std::vector<uint8_t>(1), &tok).code(), Code::kNoResource);
}

TEST(Inproc, UnpolledFramesFailBackWhenTheReceiverCloses) {
  auto a = make(), b = make();
  uint64_t t1, t2;
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(10), &t1).is_ok());
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(20), &t2).is_ok());
  b->close();
  auto ev = poll_all(*a);
  std::vector<uint64_t> failed;
  for (const Event& e : ev) {
    if (e.kind == EventKind::kSendFailed) {
      failed.push_back(e.token);
      EXPECT_EQ(e.status.code(), Code::kUnavailable);
    }
  }
  EXPECT_EQ(failed, (std::vector<uint64_t>{t1, t2}));
  EXPECT_EQ(count(ev, EventKind::kPeerDown), 1);
  EXPECT_EQ(a->stats().at(0).inflight_bytes, 0u);
  EXPECT_EQ(a->stats().at(0).send_failures, 2u);
  // The name is gone: a new send is refused at once.
  EXPECT_EQ(a->send(b->local_address(), std::vector<uint8_t>(1), &t1).code(),
            Code::kUnavailable);
}

TEST(Inproc, OversizedFramesAreRefusedByTheReceiver) {
  Options small;
  small.max_frame_bytes = 100;
  auto a = make(), b = make("inproc://", small);
  uint64_t tok;
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(101), &tok).is_ok());
  auto ev = poll_all(*a);
  ASSERT_EQ(count(ev, EventKind::kSendFailed), 1);
  EXPECT_EQ(ev.back().status.code(), Code::kOutOfRange);
  EXPECT_EQ(count(poll_all(*b), EventKind::kFrame), 0);
  EXPECT_EQ(b->stats().at(0).rejected_frames, 1u);
  EXPECT_EQ(a->stats().at(0).inflight_bytes, 0u);
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(100), &tok).is_ok());
  EXPECT_EQ(count(poll_all(*b), EventKind::kFrame), 1);
}

TEST(Inproc, DisconnectGivesPeerDownOnBothSidesAndTheNextSendReconnects) {
  auto a = make(), b = make();
  uint64_t tok;
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(1), &tok).is_ok());
  poll_all(*b);
  poll_all(*a);
  a->disconnect(b->local_address());
  auto ea = poll_all(*a), eb = poll_all(*b);
  ASSERT_EQ(count(ea, EventKind::kPeerDown), 1);
  EXPECT_EQ(ea[0].status.code(), Code::kCancelled);
  ASSERT_EQ(count(eb, EventKind::kPeerDown), 1);
  EXPECT_EQ(eb[0].peer, a->local_address());
  EXPECT_FALSE(a->stats().at(0).connected);
  a->disconnect(b->local_address());  // twice: nothing more
  EXPECT_TRUE(poll_all(*a).empty());
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(1), &tok).is_ok());
  EXPECT_EQ(count(poll_all(*a), EventKind::kPeerUp), 1);
  EXPECT_EQ(count(poll_all(*b), EventKind::kPeerUp), 1);
  EXPECT_EQ(a->stats().at(0).reconnects, 1u);
  EXPECT_TRUE(a->stats().at(0).connected);
}

TEST(Inproc, SendsNotTakenInTimeFailAndAreWithdrawn) {
  Options opt;
  opt.send_timeout_s = 0.05;
  auto a = make("inproc://", opt), b = make();
  uint64_t t1, t2;
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(10), &t1).is_ok());
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(20), &t2).is_ok());
  std::vector<uint64_t> failed;
  auto t0 = Clock::now();
  while (failed.size() < 2 && Clock::now() - t0 < std::chrono::seconds(10)) {
    for (Event& e : a->poll(5.0)) {  // wakes at the deadline, not after 5 s
      if (e.kind != EventKind::kSendFailed) continue;
      EXPECT_EQ(e.status.code(), Code::kTimeout);
      failed.push_back(e.token);
    }
  }
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 2.0);
  EXPECT_EQ(failed, (std::vector<uint64_t>{t1, t2}));
  EXPECT_EQ(count(poll_all(*b), EventKind::kFrame), 0);  // withdrawn, never delivered late
  PeerStats s = a->stats().at(0);
  EXPECT_EQ(s.timeouts, 2u);
  EXPECT_EQ(s.inflight_bytes, 0u);
  // A frame taken in time completes normally.
  ASSERT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(5), &t1).is_ok());
  EXPECT_EQ(count(poll_all(*b), EventKind::kFrame), 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto ev = poll_all(*a);
  EXPECT_EQ(count(ev, EventKind::kSendComplete), 1);
  EXPECT_EQ(count(ev, EventKind::kSendFailed), 0);
}

TEST(Inproc, PollWakesWhenAFrameArrivesFromAnotherThread) {
  auto a = make(), b = make();
  auto t0 = Clock::now();
  std::thread sender([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    uint64_t tok;
    EXPECT_TRUE(a->send(b->local_address(), std::vector<uint8_t>(3), &tok).is_ok());
  });
  std::vector<Event> ev;
  while (count(ev, EventKind::kFrame) == 0 &&
         Clock::now() - t0 < std::chrono::seconds(10)) {
    for (Event& e : b->poll(10.0)) ev.push_back(std::move(e));
  }
  double waited = std::chrono::duration<double>(Clock::now() - t0).count();
  sender.join();
  EXPECT_EQ(count(ev, EventKind::kFrame), 1);
  EXPECT_LT(waited, 5.0) << "poll did not wake on arrival";
}

TEST(Inproc, ConcurrentSendersAndPollersAreSafe) {
  // Many threads on one transport each (sending) and one receiver polled by two threads.
  auto rx = make();
  const int kThreads = 8, kFrames = 200;
  std::vector<std::unique_ptr<Transport>> tx;
  for (int i = 0; i < kThreads; ++i) tx.push_back(make());
  std::atomic<int> received{0};
  std::atomic<bool> stop{false};
  auto poller = [&] {
    while (!stop) {
      for (Event& e : rx->poll(0.01)) received += e.kind == EventKind::kFrame;
    }
  };
  std::thread p1(poller), p2(poller);
  std::vector<std::thread> senders;
  for (int i = 0; i < kThreads; ++i) {
    senders.emplace_back([&, i] {
      for (int k = 0; k < kFrames; ++k) {
        uint64_t tok;
        while (tx[i]->send(rx->local_address(), std::vector<uint8_t>(64), &tok).code() ==
               Code::kNoResource) {
          tx[i]->poll(0.001);
        }
        tx[i]->poll(0);
      }
    });
  }
  for (auto& s : senders) s.join();
  auto end = Clock::now() + std::chrono::seconds(20);
  while (received < kThreads * kFrames && Clock::now() < end) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  stop = true;
  p1.join();
  p2.join();
  EXPECT_EQ(received.load(), kThreads * kFrames);
}

TEST(Factory, DispatchesByScheme) {
  auto t = make_transport("inproc://");
  ASSERT_TRUE(t.is_ok());
  EXPECT_TRUE(t.value()->local_address().starts_with("inproc://"));
  EXPECT_EQ(make_transport("tcp://1.2.3.4:5").status().code(), Code::kInvalidArgument);
#if !MYCEL_HAVE_UCX
  EXPECT_EQ(make_transport("ucx://127.0.0.1:0").status().code(), Code::kUnavailable);
#else
  auto u = make_transport("ucx://127.0.0.1:0");
  ASSERT_TRUE(u.is_ok()) << u.status().to_string();
  EXPECT_TRUE(u.value()->local_address().starts_with("ucx://"));
#endif
}

}  // namespace
}  // namespace mycel::transport
