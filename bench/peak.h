// The bandwidth peak every bench row is compared with, measured by the same binary in the same
// run, on the same device and thread count, at the same vector length:
//   copy    b = a              8 B/elem (read a, write b)
//   triad   a = b + s*c       12 B/elem
//   update  x = alpha*x + beta*y   12 B/elem (in place, like a merge)
//   memcpy  cudaMemcpyAsync device to device, 8 B/elem (GPU only)
// all counted as bytes read plus bytes written, the way the bench rows count theirs. On the CPU
// the loops run on the device's ThreadPool (the one its kernels use); on a GPU as plain
// grid-stride kernels. The peak is the best median of them.
//
// A row is then timed against the peak rep by rep (time_against_peak): each timed call of the
// kernel is paired with a call of the best peak kernel, and the row's peak_gbps comes from
// those paired calls. On a machine shared with other jobs the bandwidth drifts from second to
// second; pairing makes the ratio compare the kernel with the peak under the same conditions.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "common/status.h"
#include "kernels/device.h"

namespace mycel::bench {

struct Peak {
  double gbps = 0;           // best of the kernels below
  std::string best;          // which one
  std::vector<Record> rows;  // one per kernel: op "peak:copy", "peak:triad", ...
  int64_t wrong = 0;         // wrong results over all of them
  double best_bytes = 0;     // bytes per call of the best kernel
  std::function<Status()> run_best;  // one call of the best kernel (its buffers kept below)
  std::shared_ptr<void> buffers;
};

// Measures the peak of dev with arrays of n floats (three arrays: 12 n bytes of memory).
// use_min: rate each kernel by its fastest repetition instead of the median (--stat min).
Result<Peak> measure_peak(Device& dev, size_t n, int warmup, int reps, size_t check,
                          bool use_min = false);

// Times kernel against peak.run_best, alternating call by call after `warmup` untimed calls of
// each, and sets r's timing fields: bytes, mb, ms (median, or min when use_min), ms_median,
// ms_min, reps, stat, gbps, peak_gbps and peak_ms (of the paired peak calls, same statistic),
// peak_op, ratio, and peak_gbps_run (the peak measured before the rows).
Status time_against_peak(Record& r, Device& dev, const Peak& peak, double bytes, int warmup,
                         int reps, bool use_min, const std::function<Status()>& kernel);

}  // namespace mycel::bench
