#include "common/thread_pool.h"

#include <algorithm>
#include <cstdlib>

namespace mycel {

ThreadPool::ThreadPool(int threads) {
  if (threads <= 0) {
    if (const char* e = std::getenv("MYCEL_THREADS"); e && std::atoi(e) > 0) threads = std::atoi(e);
    else threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  }
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(0);
  return pool;
}

void ThreadPool::worker(int index) {
  unsigned long seen = 0;
  for (;;) {
    const std::function<void(size_t, size_t, int)>* job;
    size_t b, e;
    {
      std::unique_lock lk(mu_);
      cv_start_.wait(lk, [&] { return stop_ || epoch_ != seen; });
      if (stop_) return;
      seen = epoch_;
      if (index >= active_) continue;
      job = job_;
      b = std::min(n_, chunk_ * static_cast<size_t>(index));
      e = std::min(n_, b + chunk_);
    }
    if (b < e) (*job)(b, e, index);
    {
      std::lock_guard lk(mu_);
      if (--pending_ == 0) cv_done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(size_t n, size_t grain, size_t align,
                              const std::function<void(size_t, size_t, int)>& fn) {
  if (n == 0) return;
  if (align == 0) align = 1;
  int want = size();
  if (grain > 0) want = static_cast<int>(std::min<size_t>(want, std::max<size_t>(1, n / grain)));
  {
    std::unique_lock lk(mu_);
    if (busy_ || want <= 1) {
      lk.unlock();
      fn(0, n, 0);
      return;
    }
    busy_ = true;
    size_t chunk = (n + want - 1) / want;
    chunk = (chunk + align - 1) / align * align;
    job_ = &fn;
    n_ = n;
    chunk_ = chunk;
    active_ = want;
    pending_ = want - 1;
    ++epoch_;
  }
  cv_start_.notify_all();
  fn(0, std::min(n, chunk_), 0);
  std::unique_lock lk(mu_);
  cv_done_.wait(lk, [&] { return pending_ == 0; });
  job_ = nullptr;
  busy_ = false;
}

}  // namespace mycel
