// The peer's logic as a state machine with no threads, clocks or sockets (sans-IO). Drivers
// (the live event loop; later the simulator) feed it inputs and carry out the actions it
// returns, in order. Same protocol code in both, so tests drive it with scripted events.
//
// Inputs:  start(now), tick(now), message(now, msg), peer_up(now, addr), peer_down(now, addr)
// Actions: SendModel   encode the current model with the current codec and send it
//          SendView    send peer-sampling entries (Cyclon shuffle / reply / probe)
//          MergeModel  decode+merge the payload of a received model message, with weight a
//          Drop        forget a received model message without merging it
//          Train       local SGD steps at a learning rate
//          SetTimer    call tick() again at this time
// Model messages carry a handle: the driver keeps their payload until the core has answered
// with MergeModel or Drop for that handle (possibly later, e.g. a D-PSGD model that arrived a
// round early). A core must answer every handle it is given.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"
#include "runtime/core/merge_rule.h"
#include "runtime/core/peer_sampling.h"
#include "runtime/core/state_io.h"

namespace mycel::runtime {

enum class MsgKind : uint8_t {
  kModel,         // a model pushed by its owner
  kModelReply,    // push-pull: the receiver's model sent back
  kShuffle,       // Cyclon shuffle request
  kShuffleReply,  // Cyclon shuffle reply
};

// A message as the core sees it: the driver has checked the frame and keeps the payload; the
// core never touches model bytes.
struct Message {
  MsgKind kind = MsgKind::kModel;
  std::string from;
  uint64_t age = 0;                 // model age (gossip) or round (D-PSGD, FedAvg)
  uint64_t version = 0;             // FedAvg: the client's sample count
  uint64_t handle = 0;              // model messages: the driver's key of the payload
  uint32_t partition = 0;           // partitioned subsampling: the slice the payload holds
  std::vector<Descriptor> entries;  // kShuffle, kShuffleReply
};

struct SendModel {
  std::string to;
  MsgKind kind = MsgKind::kModel;
  uint64_t age = 0;      // the age (or round) to put in the frame
  uint64_t version = 0;  // FedAvg: sample count
  uint32_t partition = 0;  // partitioned subsampling: which slice of the model (0 otherwise)
};
struct SendView {
  std::string to;
  MsgKind kind = MsgKind::kShuffle;
  std::vector<Descriptor> entries;
};
struct MergeModel {
  uint64_t handle = 0;
  float weight = 0;  // x = (1 - weight) x + weight * received
};
struct Drop {
  uint64_t handle = 0;
};
struct Train {
  int steps = 0;
  double lr = 0;     // base learning rate from the parameter set; the driver's schedule scales it
  uint64_t age = 0;  // the model's age before these steps (for age-based schedules)
};
struct SetTimer {
  double at = 0;
};
using Action = std::variant<SendModel, SendView, MergeModel, Drop, Train, SetTimer>;

// Counters every protocol keeps (the driver writes them to the peer's CSV).
struct ProtocolStats {
  uint64_t wakeups = 0;  // gossip periods elapsed
  uint64_t models_sent = 0, models_received = 0, merges = 0, train_steps = 0;
  uint64_t shuffles = 0;
  uint64_t peers_down = 0;         // peers that were up and were then lost (never: not yet up)
  uint64_t no_peer = 0;            // gossip wake-ups with nobody in the view to send to
  uint64_t rounds_timed_out = 0;   // D-PSGD / FedAvg rounds ended by their deadline
  uint64_t rounds_skipped = 0;     // D-PSGD rounds jumped over to catch up with neighbours
  uint64_t ages_clamped = 0;       // gossip: received ages cut to local + trust.max_age_lead
};

// The counters in a core's saved state (Protocol::save_state), in field order.
inline void save_stats(StateWriter& w, const ProtocolStats& s) {
  for (uint64_t v : {s.wakeups, s.models_sent, s.models_received, s.merges, s.train_steps, s.shuffles, s.peers_down,
                     s.no_peer, s.rounds_timed_out, s.rounds_skipped, s.ages_clamped})
    w.u64(v);
}
inline void restore_stats(StateReader& r, ProtocolStats& s) {
  for (uint64_t* v : {&s.wakeups, &s.models_sent, &s.models_received, &s.merges, &s.train_steps, &s.shuffles,
                      &s.peers_down, &s.no_peer, &s.rounds_timed_out, &s.rounds_skipped, &s.ages_clamped})
    *v = r.u64();
}

class Protocol {
 public:
  virtual ~Protocol() = default;
  virtual std::string_view name() const = 0;
  virtual void start(double now, std::vector<Action>& out) = 0;
  virtual void tick(double now, std::vector<Action>& out) = 0;
  virtual void message(double now, const Message& msg, std::vector<Action>& out) = 0;
  virtual void peer_up(double now, const std::string& addr, std::vector<Action>& out) = 0;
  virtual void peer_down(double now, const std::string& addr, std::vector<Action>& out) = 0;
  // The driver could not run `steps` of the training it was asked for (its compute was busy):
  // the core takes them out of the model's age.
  virtual void training_skipped(int steps) {}
  // Whether the driver may skip a Train it cannot afford now (its compute is behind) and report
  // it through training_skipped(). Asynchronous gossip may: a skipped step is made up by the
  // next exchange. Round-based protocols may not: a skipped step is lost to the round.
  virtual bool may_skip_training() const { return false; }
  virtual uint64_t age() const = 0;
  // Per-partition ages (one entry when the model is not partitioned).
  virtual std::vector<uint64_t> partition_ages() const { return {age()}; }
  virtual const ProtocolStats& stats() const = 0;
  virtual const PeerSampling* sampling() const { return nullptr; }
  // Checkpoints (runtime/engine/checkpoint.h): what a core needs to go on after a restart (its
  // age or round, its random generator, its counters), as bytes, taken between inputs. What is
  // rebuilt by start() (views, liveness, timers) is not in it. restore_state(), before
  // start(), refuses a blob of another protocol or shape, naming what differs.
  virtual std::vector<uint8_t> save_state() const { return {}; }
  virtual Status restore_state(std::span<const uint8_t> state) {
    if (state.empty()) return Ok();
    return Error(Code::kUnimplemented, "protocol " + std::string(name()) + " keeps no saved state");
  }
};

struct ProtocolOptions {
  std::string self;                 // this peer's address
  std::vector<std::string> seeds;   // bootstrap addresses
  uint64_t seed = 1;                // random choices (peer selection, jitter)
  int view_size = 8;
  // Fixed-membership protocols (D-PSGD, FedAvg): every peer's address, index = peer id.
  std::vector<std::string> peers;
  int id = 0;
  uint64_t experiment_seed = 1;     // shared by all peers (topology)
  std::string topology = "ring";
  int degree = 4;
  double round_timeout_s = 10;      // a neighbour that was up and then silent this long is down
  double startup_timeout_s = 30;    // round 0 waits this long for neighbours never heard from
  uint64_t max_rounds = 0;          // D-PSGD: no round at or past this one is begun (0: no limit)
  double client_fraction = 0.1;     // FedAvg
  int local_epochs = 1;             // FedAvg
  uint64_t local_samples = 0;       // this peer's training samples
  int batch = 32;
  // Gossip: partitioned subsampling (Hegedűs, Danner, Jelasity 2019). With P > 1 a message
  // carries one of P contiguous slices of the model, and each slice keeps its own age.
  int partitions = 1;
};

// gossip learning (push) or push-pull, chosen by name; parameters are read from `params` at
// every cycle, so a replacement takes effect at the next wake-up.
Result<std::unique_ptr<Protocol>> make_gossip_protocol(std::string_view name,
                                                       const ProtocolOptions& opt,
                                                       const ParamStore* params);
// D-PSGD on a fixed topology with Metropolis-Hastings weights.
Result<std::unique_ptr<Protocol>> make_dpsgd_protocol(const ProtocolOptions& opt,
                                                      const ParamStore* params);
// FedAvg: peer 0 is the server, peers 1..N-1 the clients.
Result<std::unique_ptr<Protocol>> make_fedavg_protocol(const ProtocolOptions& opt,
                                                       const ParamStore* params);
// Any of the above by name: gossip, push-pull, dpsgd, fedavg.
Result<std::unique_ptr<Protocol>> make_protocol(std::string_view name, const ProtocolOptions& opt,
                                                const ParamStore* params);

}  // namespace mycel::runtime
