// The peer engine: one peer's protocol behaviour, with no threads, clocks or sockets. It holds
// the sans-IO protocol core, the peer's model parameters (a pointer: the live peer's model, or
// a slice of the simulator's arena), the error-feedback residual and the codec state, and it is
// the one executor of the core's Actions. Two drivers use it: the live driver
// (runtime/driver/live_peer.cpp: event loop, compute thread, transport) and the simulator
// (runtime/sim/: virtual time, modelled links, thousands of peers per process). What is here
// is therefore what both do; what differs is only how bytes move and where compute runs.
//
// What the engine does, for both drivers:
//   - frames in: the fixed-membership filter (D-PSGD, FedAvg take frames from their listed
//     peers only, and a model frame's header sender id must be the index of the peer it came
//     from in that list), the partition/slice check of model frames and their payload header,
//     the trust bound on their values (trust.max_abs_param, before the core sees them), the
//     handles of held payloads until the core answers MergeModel or Drop;
//   - actions out: SendModel (codec chosen from the live parameters, the slice of a partitioned
//     model), SendView, MergeModel (fused decode+merge into the slice), Drop, Train (the
//     learning-rate schedule applied to the core's base rate and age; the training-skip policy),
//     SetTimer (the timer contract below);
//   - encode: residual handling (error feedback on lossy codecs, reset on a codec change), the
//     frame header, the payload written in place.
//
// Timer contract (tested in tests/runtime/engine_test.cpp): next_tick() is when the driver
// must call tick(). start() and tick() clear the timer before calling the core, so the timers
// they return replace the earlier ones; a SetTimer returned by any other input (message(),
// peer_up(), peer_down()) can only bring the timer earlier (the earliest wins). When start() or
// tick() return no timer, the next tick is one second later.
//
// Compute placement: Train, MergeModel and the encoding of SendModel are posted to the host's
// compute context (EngineHost::post) in the order the core asked for them; the live driver runs
// them on its compute thread, the simulator inline. Inputs are called from one thread (the
// driver's loop); posted tasks from one thread (the compute context).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/codec.h"
#include "kernels/device.h"
#include "models/optim.h"
#include "runtime/config/config.h"
#include "runtime/core/protocol.h"

namespace mycel::runtime {

// A peer's counters, the same in the live peer's CSV/JSON and in the simulator. Atomic: the live
// driver's compute thread adds to some of them while its loop adds to others.
struct PeerCounters {
  std::atomic<uint64_t> bytes_sent{0}, bytes_received{0}, frames_sent{0}, frames_received{0};
  std::atomic<uint64_t> model_bytes_sent{0}, fp32_bytes_equivalent{0}, models_sent{0};
  std::atomic<uint64_t> merges{0}, train_steps{0}, rejected_frames{0}, rejected_payloads{0};
  std::atomic<uint64_t> dropped_sends{0}, send_failures{0}, skipped_steps{0};
  std::atomic<uint64_t> unreached_sends{0};  // sends to peers never reached yet (not started)
  // Fixed membership: model frames whose header sender id is not the id of the (authenticated)
  // peer they came from; also counted in rejected_frames.
  std::atomic<uint64_t> sender_mismatches{0};

  // Every counter by name (checkpoints carry them, so a resumed peer's figures go on).
  template <typename F>
  void for_each(F&& f) {
    f("bytes_sent", bytes_sent), f("bytes_received", bytes_received), f("frames_sent", frames_sent);
    f("frames_received", frames_received), f("model_bytes_sent", model_bytes_sent);
    f("fp32_bytes_equivalent", fp32_bytes_equivalent), f("models_sent", models_sent), f("merges", merges);
    f("train_steps", train_steps), f("rejected_frames", rejected_frames), f("rejected_payloads", rejected_payloads);
    f("dropped_sends", dropped_sends), f("send_failures", send_failures), f("skipped_steps", skipped_steps);
    f("unreached_sends", unreached_sends), f("sender_mismatches", sender_mismatches);
  }
};

// A model to send, decided by the engine (codec, slice) and carried out by the driver: it finds
// room for frame_bytes, has encode_frame() write the frame there on its compute context, and
// sends it.
struct ModelSend {
  std::string to;
  MsgKind kind = MsgKind::kModel;
  uint64_t age = 0, version = 0;
  uint32_t partition = 0;
  std::string codec;     // the live parameter set's codec when the core asked
  CodecSpec spec;        // parsed
  size_t offset = 0, length = 0;  // the slice of the parameter vector
  size_t frame_bytes = 0;         // room that always suffices: frame header + max payload
  size_t fp32_frame_bytes = 0;    // what the same frame would weigh in fp32 (for the counters)
};

// A received frame's bytes, kept until the core merges or drops it.
using FrameBytes = std::shared_ptr<std::vector<uint8_t>>;

// What the engine needs from its driver.
class EngineHost {
 public:
  virtual ~EngineHost() = default;
  // I/O.
  virtual void send_model(const ModelSend& s) = 0;
  virtual void send_view(const std::string& to, MsgKind kind, const std::vector<Descriptor>& entries) = 0;
  // Compute: runs `task` after every task posted before it.
  virtual void post(std::function<void()> task) = 0;
  // Whether post() runs each task at once on the calling thread (the simulator): the engine then
  // calls the task itself rather than wrap it in a std::function (an allocation per merge and
  // per training step).
  virtual bool runs_inline() const { return false; }
  // Tasks posted and not yet finished (the training-skip policy looks at it).
  virtual size_t compute_backlog() const = 0;
  // Used from posted tasks only: `steps` SGD steps on this peer's model and data at rate lr.
  virtual Status train(int steps, float lr, uint64_t age) = 0;
  virtual CodecContext& decoder() = 0;
  virtual CodecContext& encoder() = 0;
  // A received frame the engine is done with (its memory may be reused); called from the loop
  // (Drop) and from posted tasks (after a merge).
  virtual void recycle(std::vector<uint8_t>&& bytes) { (void)bytes; }
};

// The protocol core's options for peer `id` from the experiment config: the one place both
// drivers build them. The addresses (self, seeds, peers) are the driver's to fill in.
ProtocolOptions protocol_options(const ExperimentConfig& cfg, int id, uint64_t local_samples);

struct EngineOptions {
  int id = 0;                 // sender id in frame headers
  std::string protocol;       // gossip | push-pull | dpsgd | fedavg
  size_t num_params = 0;
  int partitions = 1;         // gossip's partitioned subsampling (1 elsewhere)
  // Fixed-membership protocols: frames from anyone not listed are refused (shared, immutable).
  std::shared_ptr<const std::vector<std::string>> members;
  models::LrSchedule schedule;   // applied to the core's base rate and the model's age
  size_t max_backlog = 3;        // compute tasks behind which an asynchronous core skips training
};

class PeerEngine {
 public:
  // params: the peer's parameter vector (num_params floats on dev); residual: as many floats for
  // error feedback, or null (no error feedback). Both outlive the engine.
  static Result<std::unique_ptr<PeerEngine>> create(const EngineOptions& opt, std::unique_ptr<Protocol> core,
                                                    const ParamStore* params, Device& dev, float* model,
                                                    float* residual);

  // Inputs, from the driver's loop.
  void start(double now, EngineHost& host);
  void tick(double now, EngineHost& host);
  void peer_up(double now, const std::string& addr, EngineHost& host);
  void peer_down(double now, const std::string& addr, EngineHost& host);
  // The fixed-membership filter: false (counted as a rejected frame, logged once per sender)
  // for a sender outside the membership of a D-PSGD or FedAvg experiment.
  bool accepts(const std::string& from);
  void on_view(double now, const std::string& from, bool reply, std::vector<Descriptor> entries, EngineHost& host);
  // The same, lending the entries: `entries` comes back with its contents and its capacity (the
  // simulator reuses a message's buffer rather than free it and allocate the next).
  void on_view_lent(double now, const std::string& from, bool reply, std::vector<Descriptor>& entries,
                    EngineHost& host);
  // A model frame: its header fields and its bytes, the payload starting at payload_offset.
  // With partitions, `version` is the slice index (as the live wire carries it).
  void on_model(double now, const std::string& from, bool reply, uint64_t age, uint64_t version,
                uint64_t param_count, FrameBytes bytes, size_t payload_offset, EngineHost& host);
  // When tick() is due (the timer contract above); infinity before start().
  double next_tick() const { return next_tick_; }

  // Compute (on the host's compute context): writes the whole frame for `s` into room (at least
  // s.frame_bytes) with sequence number seq; returns the bytes used.
  Result<size_t> encode_frame(const ModelSend& s, uint64_t seq, std::span<uint8_t> room, CodecContext& enc);

  Protocol& core() { return *core_; }
  const Protocol& core() const { return *core_; }
  PeerCounters& counters() { return c_; }
  const PeerCounters& counters() const { return c_; }
  float* model() { return model_; }
  size_t num_params() const { return opt_.num_params; }
  int id() const { return opt_.id; }
  size_t slice_begin(uint32_t p) const {
    return opt_.num_params * p / static_cast<size_t>(opt_.partitions);
  }
  size_t held() const { return held_.size(); }
  // Checkpoints: the codec the error-feedback residual belongs to ("" : none yet); compute
  // context only, as the residual itself.
  const std::string& residual_codec() const { return residual_codec_; }
  void set_residual_codec(std::string codec) { residual_codec_ = std::move(codec); }

 private:
  PeerEngine(const EngineOptions& opt, std::unique_ptr<Protocol> core, const ParamStore* params, Device& dev,
             float* model, float* residual);
  void handle(EngineHost& host);
  template <class F>
  void run(EngineHost& host, F&& task) {
    if (host.runs_inline()) task();
    else host.post(std::function<void()>(std::forward<F>(task)));
  }
  void merge(EngineHost& host, FrameBytes bytes, size_t payload_offset, size_t off, size_t len, float w,
             bool checked);
  void rejected_model(const std::string& from, const Status& s);  // counts; logs at a bounded rate

  EngineOptions opt_;
  std::unique_ptr<Protocol> core_;
  const ParamStore* params_;
  Device& dev_;
  float* model_;
  float* residual_;
  std::string residual_codec_;  // the codec the residual belongs to (compute context only)
  std::string codec_text_;      // the last parsed codec (loop only)
  CodecSpec codec_spec_;
  struct Held {
    uint64_t handle = 0;
    FrameBytes bytes;
    size_t payload_offset = 0;
    uint32_t partition = 0;
    bool checked = false;  // the magnitude bound was checked on arrival (raw bodies)
  };
  // Payloads the core has not answered yet: a few at most (gossip answers at once; D-PSGD holds
  // a round ahead), so a vector searched from the front, not a tree node per message.
  std::vector<Held> held_;
  bool take_held(uint64_t handle, Held* out);  // found: moved out and removed
  uint64_t next_handle_ = 0;
  std::vector<Action> acts_;
  double next_tick_ = std::numeric_limits<double>::infinity();
  std::set<std::string> unknown_senders_;  // logged once each
  bool fixed_membership_ = false;
  int mismatch_logged_ = 0;  // sender-id mismatches logged (the first 16)
  PeerCounters c_;
};

}  // namespace mycel::runtime
