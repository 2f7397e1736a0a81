#include "transport/link_estimator.h"

namespace mycel::transport {

double LinkEstimator::ewma(double old, double sample) {
  return old == 0 ? sample : (1 - kAlpha) * old + kAlpha * sample;
}

void LinkEstimator::started(size_t bytes, double t) {
  if (bytes >= kMinBytes && inflight_++ == 0) {
    t0_ = t;  // the link turns busy
    bytes_ = 0;
  }
}

void LinkEstimator::ended(size_t bytes) {
  if (bytes >= kMinBytes && inflight_ > 0) inflight_--;
}

double LinkEstimator::completed(size_t bytes, double now) {
  if (bytes < kMinBytes) return 0;
  // Bytes over time while the link was busy with large frames, sampled per window of
  // kWindowS or at the end of a busy period; idle time never counts.
  bytes_ += bytes;
  if (now > t0_ && (now - t0_ >= kWindowS || inflight_ == 0)) {
    double sample = double(bytes_) / (now - t0_);
    t0_ = now;
    bytes_ = 0;
    return sample;
  }
  return 0;
}

}  // namespace mycel::transport
