// The estimate of one link's bandwidth and round-trip time, from the sends it completes
// (see docs/transport.md, "Statistics").
#pragma once

#include <cstddef>
#include <cstdint>

namespace mycel::transport {

// Bandwidth: bytes of sends of at least kMinBytes completed while the link was busy with such
// sends, over that time, sampled every kWindowS of busy link or at the end of a busy period;
// the caller keeps the EWMA (kAlpha, ewma()) across samples.
class LinkEstimator {
 public:
  static constexpr size_t kMinBytes = size_t(256) << 10;
  static constexpr double kWindowS = 0.01;
  static constexpr double kAlpha = 0.25;

  // A send of `bytes` was handed to the link at time t (seconds, steady clock).
  void started(size_t bytes, double t);
  // That send left the link (completed or failed).
  void ended(size_t bytes);
  // It completed at `now` (after ended()); returns a bandwidth sample in B/s, or 0 for none.
  double completed(size_t bytes, double now);

  static double ewma(double old, double sample);

 private:
  size_t inflight_ = 0, bytes_ = 0;
  double t0_ = 0;
};

}  // namespace mycel::transport
