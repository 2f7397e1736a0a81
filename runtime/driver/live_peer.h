// The live driver: one peer per process, as on a Jetson or a Grid'5000 node. A real clock, an
// event loop over the transport, the sans-IO protocol core, and a compute thread (Worker) for
// training, merging, encoding and evaluation. Writes the peer's CSV and final JSON.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"

namespace mycel::runtime {

struct PeerArgs {
  ExperimentConfig cfg;
  int id = 0;                       // peer index: its data shard and sender id
  std::string listen;               // "ucx://127.0.0.1:PORT" or "inproc://NAME"
  std::vector<std::string> seeds;   // bootstrap addresses
  std::vector<std::string> peers;   // every peer's address, index = id (D-PSGD, FedAvg)
  std::string out_dir;              // where peer-ID.csv and peer-ID.json go ("" = none)
  int threads = 0;                  // CPU threads (0: all cores)
  // A folder of checkpoints to go on from (the newest whole one of this peer; a damaged one is
  // skipped for the one before it); "" : start from the initial model.
  std::string resume_dir;
};

// Runs the peer until the config's duration or rounds, or until *stop becomes true. Errors
// (missing data set, bad address, unusable device) come back before the loop starts.
Status run_peer(const PeerArgs& args, const std::atomic<bool>* stop);

}  // namespace mycel::runtime
