// The peer engine (runtime/engine/peer_engine.h): the one executor of the protocol cores'
// actions, shared by the live driver and the simulator. A scripted core says what to do; a
// recording host says what the engine did.
#include <gtest/gtest.h>

#include <cmath>
#include <deque>
#include <functional>
#include <limits>

#include "kernels/codec.h"
#include "kernels/device.h"
#include "runtime/engine/peer_engine.h"
#include "transport/frame.h"

namespace mycel::runtime {
namespace {

namespace tp = mycel::transport;

// A core that returns the actions the test queues for each input, and records what it saw.
class Scripted final : public Protocol {
 public:
  std::deque<std::vector<Action>> next;  // one list per input, in order
  std::vector<Message> seen;
  int skipped = 0;
  bool may_skip = true;
  std::string_view name() const override { return "scripted"; }
  void start(double, std::vector<Action>& out) override { pop(out); }
  void tick(double, std::vector<Action>& out) override { pop(out); }
  void message(double, const Message& m, std::vector<Action>& out) override {
    seen.push_back(m);
    pop(out);
  }
  void peer_up(double, const std::string&, std::vector<Action>& out) override { pop(out); }
  void peer_down(double, const std::string&, std::vector<Action>& out) override { pop(out); }
  void training_skipped(int steps) override { skipped += steps; }
  bool may_skip_training() const override { return may_skip; }
  uint64_t age() const override { return 0; }
  const ProtocolStats& stats() const override { return st_; }

 private:
  void pop(std::vector<Action>& out) {
    if (next.empty()) return;
    for (auto& a : next.front()) out.push_back(a);
    next.pop_front();
  }
  ProtocolStats st_;
};

class Host final : public EngineHost {
 public:
  explicit Host(Device& dev) : enc(dev), dec(dev) {}
  std::vector<ModelSend> models;
  std::vector<std::string> views;
  std::vector<std::function<void()>> queued;  // posted tasks, run when the test says
  std::vector<float> lrs;
  int recycled = 0;
  size_t backlog = 0;
  CodecContext enc, dec;
  void send_model(const ModelSend& s) override { models.push_back(s); }
  void send_view(const std::string& to, MsgKind, const std::vector<Descriptor>&) override { views.push_back(to); }
  void post(std::function<void()> t) override { queued.push_back(std::move(t)); }
  size_t compute_backlog() const override { return backlog; }
  Status train(int, float lr, uint64_t) override {
    lrs.push_back(lr);
    return Ok();
  }
  CodecContext& decoder() override { return dec; }
  CodecContext& encoder() override { return enc; }
  void recycle(std::vector<uint8_t>&&) override { ++recycled; }
  void run_all() {
    auto q = std::move(queued);
    queued.clear();
    for (auto& t : q) t();
  }
};

struct Fixture {
  std::shared_ptr<Device> dev = make_device("cpu", 1).value();
  ParamStore params{[] {
    RuntimeParams p;
    p.codec = "fp32";
    return p;
  }()};
  std::vector<float> model, residual;
  Scripted* core = nullptr;
  std::unique_ptr<PeerEngine> engine;
  Host host{*dev};

  explicit Fixture(size_t n = 10, int partitions = 1, std::string protocol = "gossip",
                   std::vector<std::string> members = {}) {
    model.assign(n, 1.f);
    residual.assign(n, 0.f);
    auto c = std::make_unique<Scripted>();
    core = c.get();
    EngineOptions eo;
    eo.id = 3;
    eo.protocol = protocol;
    eo.num_params = n;
    eo.partitions = partitions;
    eo.members = std::make_shared<const std::vector<std::string>>(std::move(members));
    eo.schedule = models::LrSchedule{};
    engine = PeerEngine::create(eo, std::move(c), &params, *dev, model.data(), residual.data()).value();
  }

  // A real frame from another peer: its model is `value` everywhere on `len` parameters.
  FrameBytes frame(size_t len, float value, const std::string& codec = "fp32") {
    std::vector<float> x(len, value);
    auto spec = parse_codec(codec).value();
    std::vector<uint8_t> payload;
    EXPECT_TRUE(host.enc.encode(spec, x.data(), len, nullptr, 1, &payload).is_ok());
    tp::FrameHeader h;
    h.type = tp::MessageType::kModel;
    h.param_count = len;
    h.codec = static_cast<uint8_t>(spec.id);
    return std::make_shared<std::vector<uint8_t>>(tp::encode_frame(h, payload).value());
  }
};

TEST(PeerEngine, TimerContractTickAndStartReplaceOtherInputsOnlyBringItEarlier) {
  Fixture f;
  EXPECT_FALSE(std::isfinite(f.engine->next_tick()));
  f.core->next.push_back({SetTimer{5.0}, SetTimer{7.0}});
  f.engine->start(0, f.host);
  EXPECT_DOUBLE_EQ(f.engine->next_tick(), 5.0) << "the earliest SetTimer of one input wins";
  f.core->next.push_back({SetTimer{9.0}});
  f.engine->peer_up(1, "b", f.host);
  EXPECT_DOUBLE_EQ(f.engine->next_tick(), 5.0) << "peer_up cannot postpone the timer";
  f.core->next.push_back({SetTimer{2.0}});
  f.engine->peer_down(1, "b", f.host);
  EXPECT_DOUBLE_EQ(f.engine->next_tick(), 2.0) << "peer_down can bring it earlier";
  f.core->next.push_back({SetTimer{8.0}});
  f.engine->tick(2, f.host);
  EXPECT_DOUBLE_EQ(f.engine->next_tick(), 8.0) << "tick's timers replace the earlier ones";
  f.core->next.push_back({});
  f.engine->tick(8, f.host);
  EXPECT_DOUBLE_EQ(f.engine->next_tick(), 9.0) << "no timer from tick: one second later";
}

TEST(PeerEngine, SendModelTakesTheLiveCodecAndThePartitionSlice) {
  Fixture f(10, 3);
  f.core->next.push_back({SendModel{"b", MsgKind::kModel, 4, 0, 2}});
  f.engine->tick(0, f.host);
  ASSERT_EQ(f.host.models.size(), 1u);
  const ModelSend& s = f.host.models[0];
  EXPECT_EQ(s.codec, "fp32");
  EXPECT_EQ(s.offset, 6u);  // slices of 10 over 3: [0,3) [3,6) [6,10)
  EXPECT_EQ(s.length, 4u);
  std::vector<uint8_t> room(s.frame_bytes);
  auto used = f.engine->encode_frame(s, 1, room, f.host.enc);
  ASSERT_TRUE(used.is_ok());
  EXPECT_EQ(*used, s.fp32_frame_bytes);
  tp::FrameLimits lim;
  tp::FrameView v;
  ASSERT_EQ(tp::decode_frame(std::span<const uint8_t>(room.data(), *used), lim, &v), tp::FrameError::kOk);
  EXPECT_EQ(v.header.model_version, 2u) << "the slice index travels in model_version";
  EXPECT_EQ(v.header.param_count, 4u);
  EXPECT_EQ(v.header.sender_id, 3u);
  // A codec replaced at run time is the one the next send uses.
  RuntimeParams p = *f.params.get();
  p.codec = "int8";
  ASSERT_TRUE(f.params.replace(p).is_ok());
  f.core->next.push_back({SendModel{"b", MsgKind::kModel, 4, 0, 0}});
  f.engine->tick(1, f.host);
  EXPECT_EQ(f.host.models.back().codec, "int8");
}

TEST(PeerEngine, ErrorFeedbackResidualIsResetWhenTheCodecChanges) {
  Fixture f(64);
  for (size_t i = 0; i < f.model.size(); ++i) f.model[i] = 0.001f * static_cast<float>(i * i % 97);
  RuntimeParams p = *f.params.get();
  p.codec = "int4";
  ASSERT_TRUE(f.params.replace(p).is_ok());
  f.core->next.push_back({SendModel{"b", MsgKind::kModel, 0, 0, 0}});
  f.engine->tick(0, f.host);
  std::vector<uint8_t> room(f.host.models.back().frame_bytes);
  auto first = f.engine->encode_frame(f.host.models.back(), 1, room, f.host.enc);
  ASSERT_TRUE(first.is_ok()) << first.status().message();
  double r = 0;
  for (float x : f.residual) r += std::fabs(x);
  EXPECT_GT(r, 0) << "int4 leaves a compression error in the residual";
  p.codec = "int8";
  ASSERT_TRUE(f.params.replace(p).is_ok());
  f.core->next.push_back({SendModel{"b", MsgKind::kModel, 0, 0, 0}});
  f.engine->tick(1, f.host);
  // Poison the residual: a reset must clear it before int8 adds its own error.
  for (float& x : f.residual) x = 1000.f;
  room.assign(f.host.models.back().frame_bytes, 0);
  ASSERT_TRUE(f.engine->encode_frame(f.host.models.back(), 2, room, f.host.enc).is_ok());
  for (float x : f.residual) ASSERT_LT(std::fabs(x), 1.f) << "the residual of the old codec was carried over";
}

// Whole models sent sparse: the residual would gain the whole value of every coordinate a send
// misses (top-k 1% of a model: values ~100x the model's after a hundred sends), so a sparse
// codec sends without error feedback even when codec.error_feedback is on.
TEST(PeerEngine, SparseCodecsOfWholeModelsKeepNoResidual) {
  Fixture f(64);
  for (size_t i = 0; i < f.model.size(); ++i) f.model[i] = 0.5f + 0.01f * static_cast<float>(i);
  RuntimeParams p = *f.params.get();
  p.error_feedback = true;
  for (const char* codec : {"topk:0.05", "randk:0.05"}) {
    p.codec = codec;
    ASSERT_TRUE(f.params.replace(p).is_ok());
    for (int k = 0; k < 50; ++k) {
      f.core->next.push_back({SendModel{"b", MsgKind::kModel, 0, 0, 0}});
      f.engine->tick(k, f.host);
      std::vector<uint8_t> room(f.host.models.back().frame_bytes);
      ASSERT_TRUE(f.engine->encode_frame(f.host.models.back(), uint64_t(k + 1), room, f.host.enc).is_ok()) << codec;
    }
    for (float x : f.residual) ASSERT_EQ(x, 0.f) << codec << ": a sparse send left a residual";
  }
  // A dense lossy codec still keeps its rounding error.
  p.codec = "int4";
  ASSERT_TRUE(f.params.replace(p).is_ok());
  f.core->next.push_back({SendModel{"b", MsgKind::kModel, 0, 0, 0}});
  f.engine->tick(100, f.host);
  std::vector<uint8_t> room(f.host.models.back().frame_bytes);
  ASSERT_TRUE(f.engine->encode_frame(f.host.models.back(), 100, room, f.host.enc).is_ok());
  double r = 0;
  for (float x : f.residual) r += std::fabs(x);
  EXPECT_GT(r, 0) << "int4 leaves its rounding error in the residual";
}

TEST(PeerEngine, ModelFramesAreCheckedThenMergedIntoTheirSlice) {
  Fixture f(10, 2);
  // A slice of the wrong length is refused before the core sees it.
  f.engine->on_model(0, "b", false, 1, 0, 4, f.frame(4, 3.f), tp::kFrameHeaderBytes, f.host);
  EXPECT_EQ(f.core->seen.size(), 0u);
  EXPECT_EQ(f.engine->counters().rejected_payloads.load(), 1u);
  // Slice 1 is [5, 10); the core asks for a merge with weight 0.5.
  f.core->next.push_back({MergeModel{1, 0.5f}});
  f.engine->on_model(0, "b", false, 1, 1, 5, f.frame(5, 3.f), tp::kFrameHeaderBytes, f.host);
  ASSERT_EQ(f.core->seen.size(), 1u);
  EXPECT_EQ(f.core->seen[0].partition, 1u);
  EXPECT_EQ(f.core->seen[0].handle, 1u);
  EXPECT_EQ(f.model[7], 1.f) << "merges run on the compute context, not inline";
  f.host.run_all();
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(f.model[i], 1.f);
  for (size_t i = 5; i < 10; ++i) EXPECT_FLOAT_EQ(f.model[i], 2.f);
  EXPECT_EQ(f.engine->counters().merges.load(), 1u);
  EXPECT_EQ(f.host.recycled, 1) << "the frame's memory goes back after the merge";
  EXPECT_EQ(f.engine->held(), 0u);
  // A held frame the core drops is released too.
  f.core->next.push_back({});
  f.engine->on_model(0, "b", false, 1, 0, 5, f.frame(5, 3.f), tp::kFrameHeaderBytes, f.host);
  EXPECT_EQ(f.engine->held(), 1u);
  f.core->next.push_back({Drop{2}});
  f.engine->tick(1, f.host);
  EXPECT_EQ(f.engine->held(), 0u);
  EXPECT_EQ(f.host.recycled, 2);
}

TEST(PeerEngine, TrainingIsSkippedOnlyByAsynchronousCoresWhenComputeIsBehind) {
  Fixture f;
  f.host.backlog = 10;
  f.core->next.push_back({Train{2, 0.1, 0}});
  f.engine->tick(0, f.host);
  EXPECT_EQ(f.core->skipped, 2);
  EXPECT_EQ(f.engine->counters().skipped_steps.load(), 2u);
  EXPECT_TRUE(f.host.queued.empty());
  f.core->may_skip = false;  // a round-based core: never skipped
  f.core->next.push_back({Train{2, 0.1, 0}});
  f.engine->tick(1, f.host);
  ASSERT_EQ(f.host.queued.size(), 1u);
  f.host.run_all();
  ASSERT_EQ(f.host.lrs.size(), 1u);
  EXPECT_FLOAT_EQ(f.host.lrs[0], 0.1f);
  EXPECT_EQ(f.engine->counters().train_steps.load(), 2u);
}

TEST(PeerEngine, FixedMembershipRefusesStrangers) {
  Fixture f(10, 1, "dpsgd", {"a", "b"});
  EXPECT_TRUE(f.engine->accepts("a"));
  EXPECT_FALSE(f.engine->accepts("mallory"));
  EXPECT_EQ(f.engine->counters().rejected_frames.load(), 1u);
  Fixture g(10, 1, "gossip", {"a"});
  EXPECT_TRUE(g.engine->accepts("anyone")) << "gossip has an open membership";
}

TEST(PeerEngine, FixedMembershipRefusesAModelFrameClaimingAnotherPeersId) {
  Fixture f(10, 1, "dpsgd", {"a", "b"});
  auto frame = [&](uint64_t sender) {
    FrameBytes b = f.frame(10, 3.f);
    tp::FrameHeader h;
    h.type = tp::MessageType::kModel;
    h.param_count = 10;
    h.sender_id = sender;
    EXPECT_TRUE(tp::seal_frame(h, *b).is_ok());
    return b;
  };
  f.core->next.push_back({Drop{1}});
  f.engine->on_model(0, "a", false, 1, 0, 10, frame(0), tp::kFrameHeaderBytes, f.host);
  EXPECT_EQ(f.core->seen.size(), 1u) << "a's frame with a's id (0) reaches the core";
  f.engine->on_model(0, "a", false, 1, 0, 10, frame(1), tp::kFrameHeaderBytes, f.host);
  f.engine->on_model(0, "a", false, 1, 0, 10, frame(7), tp::kFrameHeaderBytes, f.host);
  EXPECT_EQ(f.core->seen.size(), 1u) << "a claiming b's id (1), or an id of nobody, is dropped";
  EXPECT_EQ(f.engine->counters().sender_mismatches.load(), 2u);
  EXPECT_EQ(f.engine->counters().rejected_frames.load(), 2u);
  Fixture g(10, 1, "gossip", {"a", "b"});
  g.core->next.push_back({Drop{1}});
  g.engine->on_model(0, "a", false, 1, 0, 10, g.frame(10, 3.f), tp::kFrameHeaderBytes, g.host);
  EXPECT_EQ(g.core->seen.size(), 1u) << "gossip's open membership has no id to check against";
}

TEST(PeerEngine, PartitionsBeyondTheModelAreRefused) {
  auto dev = make_device("cpu", 1).value();
  ParamStore ps{RuntimeParams{}};
  std::vector<float> m(4);
  EngineOptions eo;
  eo.num_params = 4;
  eo.partitions = 5;
  auto r = PeerEngine::create(eo, std::make_unique<Scripted>(), &ps, *dev, m.data(), nullptr);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("protocol.partitions"), std::string::npos);
}

}  // namespace
}  // namespace mycel::runtime
