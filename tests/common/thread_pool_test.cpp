// ThreadPool::parallel_for: every index once, aligned boundaries, nesting and concurrent callers.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "common/thread_pool.h"

namespace mycel {
namespace {

struct Range {
  size_t b, e;
  int t;
};

std::vector<Range> run(ThreadPool& pool, size_t n, size_t grain, size_t align,
                       std::vector<int>* hits) {
  std::mutex mu;
  std::vector<Range> ranges;
  hits->assign(n, 0);
  pool.parallel_for(n, grain, align, [&](size_t b, size_t e, int t) {
    for (size_t i = b; i < e; ++i) (*hits)[i]++;  // disjoint ranges: no race
    std::lock_guard lk(mu);
    ranges.push_back({b, e, t});
  });
  return ranges;
}

TEST(ThreadPoolTest, CoversEveryIndexOnceWithAlignedBoundaries) {
  for (int threads : {1, 2, 3, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(64), size_t(1000), size_t(100003)}) {
      for (size_t align : {size_t(0), size_t(1), size_t(16), size_t(7), size_t(1000)}) {
        std::vector<int> hits;
        auto ranges = run(pool, n, 1, align, &hits);
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(hits[i], 1) << "n=" << n << " i=" << i;
        std::vector<bool> seen_thread(threads, false);
        for (const auto& r : ranges) {
          ASSERT_LT(r.b, r.e);
          ASSERT_GE(r.t, 0);
          ASSERT_LT(r.t, threads);
          EXPECT_FALSE(seen_thread[r.t]) << "thread index used twice";
          seen_thread[r.t] = true;
          if (align > 1) {
            EXPECT_EQ(r.b % align, 0u) << "n=" << n << " align=" << align;
            EXPECT_TRUE(r.e == n || r.e % align == 0) << "n=" << n << " align=" << align;
          }
        }
        EXPECT_LE(ranges.size(), static_cast<size_t>(threads));
      }
    }
  }
}

TEST(ThreadPoolTest, GrainLimitsTheNumberOfThreads) {
  ThreadPool pool(4);
  std::vector<int> hits;
  EXPECT_EQ(run(pool, 100, 1000, 1, &hits).size(), 1u);  // below the grain: the caller alone
  EXPECT_LE(run(pool, 2000, 1000, 1, &hits).size(), 2u);
  EXPECT_EQ(run(pool, 100000, 1000, 1, &hits).size(), 4u);
}

TEST(ThreadPoolTest, NestedCallsRunSeriallyAndCoverEverything) {
  ThreadPool pool(3);
  const size_t outer = 30, inner = 1000;
  std::vector<std::atomic<int>> hits(outer * inner);
  pool.parallel_for(outer, 1, 1, [&](size_t b, size_t e, int) {
    for (size_t o = b; o < e; ++o)
      pool.parallel_for(inner, 1, 1, [&](size_t ib, size_t ie, int t) {
        EXPECT_EQ(t, 0);  // nested: the caller's thread runs the whole range
        for (size_t i = ib; i < ie; ++i) hits[o * inner + i]++;
      });
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
}

TEST(ThreadPoolTest, ConcurrentCallersAreSafe) {
  ThreadPool pool(3);
  std::vector<std::thread> callers;
  std::atomic<int> bad{0};
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) {
        std::vector<std::atomic<int>> hits(5000);
        pool.parallel_for(hits.size(), 1, 8, [&](size_t b, size_t e, int) {
          for (size_t i = b; i < e; ++i) hits[i]++;
        });
        for (auto& h : hits)
          if (h.load() != 1) bad++;
      }
    });
  for (auto& t : callers) t.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(ThreadPoolTest, GlobalPoolExists) {
  EXPECT_GE(ThreadPool::global().size(), 1);
  EXPECT_EQ(&ThreadPool::global(), &ThreadPool::global());
}

}  // namespace
}  // namespace mycel
