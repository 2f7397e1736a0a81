// The peer's logic as a state machine with no threads, clocks or sockets (sans-IO). Drivers
// (the live event loop; later the simulator) feed it inputs and carry out the actions it
// returns, in order. Same protocol code in both, so tests drive it with scripted events.
//
// Inputs:  start(now), tick(now), message(now, msg), peer_up(now, addr), peer_down(now, addr)
// Actions: SendModel   encode the current model with the current codec and send it
//          SendView    send peer-sampling entries (Cyclon shuffle / reply / probe)
//          MergeModel  decode+merge the payload of the message being handled, with weight a
//          Train       local SGD steps at a learning rate
//          SetTimer    call tick() again at this time
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/status.h"
#include "runtime/config/config.h"
#include "runtime/core/merge_rule.h"
#include "runtime/core/peer_sampling.h"

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
  uint64_t age = 0;                 // model age (kModel, kModelReply)
  std::vector<Descriptor> entries;  // kShuffle, kShuffleReply
};

struct SendModel {
  std::string to;
  MsgKind kind = MsgKind::kModel;
  uint64_t age = 0;  // the age to put in the frame
};
struct SendView {
  std::string to;
  MsgKind kind = MsgKind::kShuffle;
  std::vector<Descriptor> entries;
};
struct MergeModel {
  std::string from;
  float weight = 0;  // x = (1 - weight) x + weight * received
};
struct Train {
  int steps = 0;
  double lr = 0;     // base learning rate from the parameter set; the driver's schedule scales it
  uint64_t age = 0;  // the model's age before these steps (for age-based schedules)
};
struct SetTimer {
  double at = 0;
};
using Action = std::variant<SendModel, SendView, MergeModel, Train, SetTimer>;

// Counters every protocol keeps (the driver writes them to the peer's CSV).
struct ProtocolStats {
  uint64_t wakeups = 0;  // gossip periods elapsed
  uint64_t models_sent = 0, models_received = 0, merges = 0, train_steps = 0;
  uint64_t shuffles = 0, peers_down = 0, no_peer = 0;
};

class Protocol {
 public:
  virtual ~Protocol() = default;
  virtual std::string_view name() const = 0;
  virtual void start(double now, std::vector<Action>& out) = 0;
  virtual void tick(double now, std::vector<Action>& out) = 0;
  virtual void message(double now, const Message& msg, std::vector<Action>& out) = 0;
  virtual void peer_up(double now, const std::string& addr, std::vector<Action>& out) = 0;
  virtual void peer_down(double now, const std::string& addr, std::vector<Action>& out) = 0;
  virtual uint64_t age() const = 0;
  virtual const ProtocolStats& stats() const = 0;
  virtual const PeerSampling* sampling() const { return nullptr; }
};

struct ProtocolOptions {
  std::string self;                 // this peer's address
  std::vector<std::string> seeds;   // bootstrap addresses
  uint64_t seed = 1;                // random choices (peer selection, jitter)
  int view_size = 8;
};

// gossip learning (push) or push-pull, chosen by name; parameters are read from `params` at
// every cycle, so a replacement takes effect at the next wake-up.
Result<std::unique_ptr<Protocol>> make_gossip_protocol(std::string_view name,
                                                       const ProtocolOptions& opt,
                                                       const ParamStore* params);

}  // namespace mycel::runtime
