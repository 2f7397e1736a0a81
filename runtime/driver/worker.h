// One compute thread with a FIFO of tasks: the live peer's training, merges, encodes and
// evaluations run here, in order, so the model is touched by one thread while the event loop
// keeps receiving.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

namespace mycel::runtime {

class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void post(std::function<void()> task) {
    {
      std::lock_guard lk(mu_);
      q_.push_back(std::move(task));
    }
    cv_.notify_all();
  }
  // Tasks queued or running.
  size_t pending() const {
    std::lock_guard lk(mu_);
    return q_.size() + (running_ ? 1 : 0);
  }
  void drain() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return q_.empty() && !running_; });
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lk(mu_);
        cv_.wait(lk, [&] { return stop_ || !q_.empty(); });
        if (q_.empty()) return;  // stop requested and nothing left
        task = std::move(q_.front());
        q_.pop_front();
        running_ = true;
      }
      task();
      {
        std::lock_guard lk(mu_);
        running_ = false;
      }
      idle_.notify_all();
    }
  }

  mutable std::mutex mu_;
  std::condition_variable cv_, idle_;
  std::deque<std::function<void()>> q_;
  bool running_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace mycel::runtime
