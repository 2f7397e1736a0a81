// One link's estimate of bandwidth and round-trip time, with one meaning on every transport
// (ucx and inproc both feed it; docs/transport.md, "Statistics").
//
// Bandwidth. Each completed send gives a sample (bytes, busy time), where the busy time runs
// from the moment the link started working on that send, max(its send call, the previous
// completion on the link), to its completion. Consecutive sends' busy times do not overlap, so
// their sum is the time the link was busy, idle time never counts. Samples are summed into a
// window, closed once it holds at least kMinBytes and either kWindowS of busy time or the end
// of a busy period (nothing left in flight) whose bytes no earlier window took; the window's
// bytes / busy time is one estimate, smoothed by an EWMA (kAlpha) across windows. So a lone
// frame of 200 KB is a valid sample, while completions that arrive in bursts (rendezvous) are
// averaged over at least kWindowS instead of reading 100x high one frame at a time. A
// window's tail that ends a busy period after an earlier window of the same period closed is
// carried into the next window. Failed sends give no sample.
//
// RTT: samples the transport measures (ucx: ping/pong; inproc: delivery latency), EWMA.
//
// Not thread-safe: the owner serialises calls (ucx: its one thread; inproc: its mutex).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>

#include "transport/transport.h"

namespace mycel::transport {

class LinkEstimator {
 public:
  static constexpr size_t kMinBytes = size_t(64) << 10;
  static constexpr double kWindowS = 0.01;
  static constexpr double kAlpha = 0.25;

  // A send (token, unique per link) of `bytes` was handed to the link at time t (seconds on
  // a steady clock).
  void started(uint64_t token, size_t bytes, double t);
  // That send ended at `now`: completed (ok) or failed. Returns its busy time (seconds from
  // the link starting on it to now), or -1 for a token not started.
  double ended(uint64_t token, double now, bool ok);
  // The link became ready at t (a connection made): sends queued before it start at t.
  void ready(double t);
  void rtt_sample(double seconds, double now);

  // Fills bandwidth_Bps, rtt_s, their ages and oldest_send_wait_s as of `now`.
  void report(PeerStats* st, double now) const;

  double bandwidth_Bps() const { return bw_; }
  double rtt_s() const { return rtt_; }

 private:
  struct Live {
    size_t bytes;
    double t;
  };
  std::map<uint64_t, Live> live_;  // in flight, by token (oldest first)
  double last_end_ = 0;            // the previous completion (or failure) on the link
  size_t win_bytes_ = 0;
  double win_busy_ = 0;
  bool period_sampled_ = false;    // a window closed during the current busy period
  double bw_ = 0, bw_at_ = -1, rtt_ = 0, rtt_at_ = -1;
};

}  // namespace mycel::transport
