// `mycel run`: a local swarm of N peer processes on loopback over UCX, supervised. It picks the
// ports, starts `mycel peer` N times, shows a live progress line (elapsed, mean/min/max peer
// accuracy, bytes sent, merges per second), reports a peer that crashes while the others go
// on, stops every peer cleanly on Ctrl-C, and ends with a summary table and summary.json.
// A peer killed by a signal, exiting non-zero, or leaving no readable peer-ID.json is named in
// SwarmSummary::failed (and summary.json's "failed"); `mycel run` then exits 1.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"

namespace mycel::runtime {

struct SwarmOptions {
  std::string config_path;               // passed to every peer
  std::vector<std::string> overrides;    // --set KEY=VALUE, passed on too
  ExperimentConfig cfg;                  // the resolved config
  std::string exe;                       // the mycel binary (default /proc/self/exe)
  int threads_per_peer = 0;              // 0: cores / peers, at least 1
  std::string log_level = "warn";        // peers' log level (their logs go to peer-ID.log)
  bool control = true;                   // control endpoints on (token + control-ID.json)
  // A run folder to restart (`mycel run --resume`): every peer goes on from its newest whole
  // checkpoint there (or in checkpoint.dir), on new ports, appending to its CSV and log.
  std::string resume_dir;
};

struct SwarmSummary {
  std::string run_dir;
  int peers = 0, finished = 0, crashed = 0;
  double seconds = 0;
  double acc_mean = 0, acc_min = 0, acc_max = 0;
  uint64_t bytes_sent = 0, model_bytes_sent = 0, fp32_bytes_equivalent = 0, merges = 0;
  double bytes_per_peer_per_s = 0;
  // Per peer process that exited (in exit order): peak RSS and CPU time (user + sys), from wait4.
  std::vector<uint64_t> peer_rss_bytes;
  std::vector<double> peer_cpu_s;
  uint64_t rounds = 0;  // run.rounds, for the CPU time per node-round
  // Every peer that failed: "peer 3 (killed by signal 9 (Killed), no peer-3.json)". Not empty:
  // `mycel run` exits non-zero naming them.
  std::vector<std::string> failed;
};

Result<SwarmSummary> run_swarm(const SwarmOptions& opt, const std::atomic<bool>* stop);

// The table printed at the end of a run.
std::string format_summary(const SwarmSummary& s);

}  // namespace mycel::runtime
