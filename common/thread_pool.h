// A fork-join pool sized to the cores: parallel_for splits [0, n) into one contiguous range per
// thread (the calling thread takes the first), so each thread streams through its own part of a
// large vector. Kernels pass a grain below which the work runs on the caller alone.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mycel {

class ThreadPool {
 public:
  explicit ThreadPool(int threads);  // threads <= 0: hardware concurrency (MYCEL_THREADS overrides)
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // fn(begin, end, thread_index) for disjoint ranges covering [0, n). Range boundaries are
  // multiples of `align` (elements), so vector loops and blocks never straddle two threads.
  // Blocks until every range has run. Not reentrant: a nested call runs serially.
  void parallel_for(size_t n, size_t grain, size_t align,
                    const std::function<void(size_t, size_t, int)>& fn);

  // The process-wide pool used by the CPU device.
  static ThreadPool& global();

 private:
  void worker(int index);

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(size_t, size_t, int)>* job_ = nullptr;
  size_t n_ = 0, chunk_ = 0;
  int active_ = 0;          // threads taking part in the current job
  int pending_ = 0;         // workers still running the current job
  unsigned long epoch_ = 0;
  bool stop_ = false;
  bool busy_ = false;
};

}  // namespace mycel
