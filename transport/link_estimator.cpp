#include "transport/link_estimator.h"

#include <algorithm>

namespace mycel::transport {
namespace {

double ewma(double old, double sample, double alpha) {
  return old == 0 ? sample : (1 - alpha) * old + alpha * sample;
}

}  // namespace

void LinkEstimator::started(uint64_t token, size_t bytes, double t) {
  live_[token] = Live{bytes, t};
}

void LinkEstimator::ready(double t) { last_end_ = std::max(last_end_, t); }

double LinkEstimator::ended(uint64_t token, double now, bool ok) {
  auto it = live_.find(token);
  if (it == live_.end()) return -1;
  const Live s = it->second;
  live_.erase(it);
  const double busy = std::max(0.0, now - std::max(s.t, last_end_));
  last_end_ = std::max(last_end_, now);
  if (ok) {
    win_bytes_ += s.bytes;
    win_busy_ += busy;
  }
  const bool idle = live_.empty();
  if (win_bytes_ >= kMinBytes && win_busy_ > 0 &&
      (win_busy_ >= kWindowS || (idle && !period_sampled_))) {
    bw_ = ewma(bw_, double(win_bytes_) / win_busy_, kAlpha);
    bw_at_ = now;
    win_bytes_ = 0;
    win_busy_ = 0;
    period_sampled_ = true;
  }
  if (idle) period_sampled_ = false;
  return busy;
}

void LinkEstimator::rtt_sample(double seconds, double now) {
  if (seconds < 0) return;
  rtt_ = ewma(rtt_, seconds, kAlpha);
  rtt_at_ = now;
}

void LinkEstimator::report(PeerStats* st, double now) const {
  st->bandwidth_Bps = bw_;
  st->rtt_s = rtt_;
  st->bandwidth_age_s = bw_at_ < 0 ? -1 : std::max(0.0, now - bw_at_);
  st->rtt_age_s = rtt_at_ < 0 ? -1 : std::max(0.0, now - rtt_at_);
  st->oldest_send_wait_s = live_.empty() ? 0 : std::max(0.0, now - live_.begin()->second.t);
}

}  // namespace mycel::transport
