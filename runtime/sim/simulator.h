// mycel sim: an experiment config run with thousands of simulated peers in virtual time, each
// one the live peer's engine (runtime/engine/peer_engine.h: the same protocol cores, the same
// execution of their actions, the same codecs and merge kernels, real SGD steps on the peer's
// shard), over modelled links and churn (runtime/sim/network.h).
//
// What is shared, so that memory per peer stays small: the training and test sets (loaded
// once), one parameter arena (every peer's model, contiguous, allocated once; residuals and
// momentum likewise when used), the shard index (each peer's sample indices, one array), the
// network and churn model, and one compute context per worker thread (a model of the
// experiment's shape that training borrows: the peer's parameters are copied in, the steps
// taken, the parameters copied back).
//
// Parallelism: peers are split over worker threads in contiguous blocks; virtual time advances
// in windows no longer than the smallest delay a message can have (the lookahead), so every
// message sent inside a window is delivered after it and the threads need to meet only at
// window ends (a conservative synchronous scheme). Events are ordered by (time, sender, the
// sender's event counter), which depends on nothing but the seed: a run gives the same result
// for a seed at any thread count.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"

namespace mycel::runtime::sim {

struct SimOptions {
  std::string out_dir;  // run folder ("" = nothing written)
  int threads = 0;      // 0: the config's sim.threads (0 there: every core)
  bool progress = false;  // a progress line on stderr
  size_t memory_budget_bytes = 0;  // 0: physical memory; the run is refused when it would not fit
};

struct CurvePoint {
  double time_s = 0;
  size_t online = 0, evaluated = 0;
  double mean_accuracy = 0, mean_error = 0, mean_loss = 0;
  uint64_t bytes_sent = 0, model_bytes_sent = 0, messages = 0;
};

struct SimResult {
  size_t peers = 0;
  int threads = 1;
  double sim_time_s = 0, wall_s = 0, setup_s = 0, eval_wall_s = 0, train_wall_s = 0;
  // CPU time (user + sys) of the whole process during the run (setup excluded): on a shared
  // machine the wall time says how busy the cores were, this says what the run cost.
  double cpu_s = 0;
  uint64_t events = 0, node_rounds = 0, models_sent = 0, merges = 0, train_steps = 0;
  uint64_t bytes_sent = 0, model_bytes_sent = 0;
  uint64_t lost_loss = 0, lost_sender_offline = 0, lost_receiver_offline = 0;
  double lookahead_s = 0;
  size_t windows = 0;
  size_t bytes_per_peer = 0;        // measured: resident memory of the peers beyond the arena
  size_t arena_bytes_per_peer = 0;  // model (+ residual, momentum) + shard index
  double mean_online_fraction = 1;
  std::vector<CurvePoint> curve;
  double final_accuracy() const { return curve.empty() ? 0 : curve.back().mean_accuracy; }
};

// Runs the experiment. Config errors (network, churn, sizes) come back before anything runs;
// so does a run that would not fit in memory, with the largest peer count that would.
Result<SimResult> run_simulation(const ExperimentConfig& cfg, const SimOptions& opt);

}  // namespace mycel::runtime::sim
