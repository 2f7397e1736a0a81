// Issue 15, forged models: a frame with a huge claimed age and huge values took over a 4-peer
// swarm (age 2^62, values 1e30) or turned a model NaN (3e38). Here the same frames go through
// the real path of a received model (the peer engine, the gossip core, the codec's
// decode+merge) in process: the values are refused before the core or the model see them
// (trust.max_abs_param), the age of a model within the bound is clamped (trust.max_age_lead),
// and both are counted. Each attack is also
// run with the guards off, to show that the test would see it.
#include <gtest/gtest.h>

#include <cmath>
#include <deque>
#include <functional>

#include "kernels/codec.h"
#include "kernels/device.h"
#include "runtime/engine/peer_engine.h"
#include "transport/frame.h"

namespace mycel::runtime {
namespace {

namespace tp = mycel::transport;
constexpr uint64_t kForgedAge = uint64_t{1} << 62;

std::string addr(int i) { return "inproc://n" + std::to_string(i); }

// A received model frame as a forger would write it: `len` parameters, all `value`.
FrameBytes forged_frame(CodecContext& enc, size_t len, float value, uint64_t age,
                        const std::string& codec = "fp32") {
  std::vector<float> x(len, value);
  auto spec = parse_codec(codec).value();
  std::vector<uint8_t> payload;
  EXPECT_TRUE(enc.encode(spec, x.data(), len, nullptr, 1, &payload).is_ok());
  tp::FrameHeader h;
  h.type = tp::MessageType::kModel;
  h.param_count = len;
  h.model_age = age;
  h.codec = static_cast<uint8_t>(spec.id);
  return std::make_shared<std::vector<uint8_t>>(tp::encode_frame(h, payload).value());
}

RuntimeParams params(bool guards) {
  RuntimeParams p;
  p.codec = "fp32";
  p.period_s = 0.1;
  p.local_steps = 1;
  if (!guards) {
    p.max_age_lead = uint64_t{1} << 63;
    p.max_abs_param = 0;
  }
  return p;
}

// An in-process swarm of gossip engines: frames are encoded by the sender's engine and handed
// to the receiver's on_model at the next step (one step of latency); compute runs inline, as in
// the simulator; training is a no-op, so honest models only average.
struct Swarm {
  struct Host final : EngineHost {
    Swarm* sw = nullptr;
    int self = 0;
    CodecContext enc, dec;
    explicit Host(Device& d) : enc(d), dec(d) {}
    void send_model(const ModelSend& s) override { sw->models_out.push_back({self, s}); }
    void send_view(const std::string& to, MsgKind k, const std::vector<Descriptor>& e) override {
      sw->views_out.push_back({self, to, k, e});
    }
    void post(std::function<void()> t) override { t(); }
    size_t compute_backlog() const override { return 0; }
    Status train(int, float, uint64_t) override { return Ok(); }
    CodecContext& decoder() override { return dec; }
    CodecContext& encoder() override { return enc; }
  };
  struct ModelOut {
    int from;
    ModelSend s;
  };
  struct ViewOut {
    int from;
    std::string to;
    MsgKind kind;
    std::vector<Descriptor> entries;
  };

  std::shared_ptr<Device> dev = make_device("cpu", 1).value();
  ParamStore store;
  size_t n_params;
  std::vector<std::vector<float>> models;
  std::vector<std::unique_ptr<Host>> hosts;
  std::vector<std::unique_ptr<PeerEngine>> engines;
  std::deque<ModelOut> models_out;
  std::deque<ViewOut> views_out;
  uint64_t seq = 0, encode_failures = 0;

  Swarm(int n, size_t P, RuntimeParams p) : store(p), n_params(P) {
    for (int i = 0; i < n; ++i) {
      models.emplace_back(P, static_cast<float>(i));  // models 0, 1, 2, 3: the mean is 1.5
      ProtocolOptions po;
      po.self = addr(i);
      for (int j = 0; j < n; ++j)
        if (j != i) po.seeds.push_back(addr(j));
      po.seed = 100 + static_cast<uint64_t>(i);
      po.view_size = 4;
      auto core = make_protocol("gossip", po, &store).value();
      EngineOptions eo;
      eo.id = i;
      eo.protocol = "gossip";
      eo.num_params = P;
      engines.push_back(PeerEngine::create(eo, std::move(core), &store, *dev, models.back().data(), nullptr).value());
      hosts.push_back(std::make_unique<Host>(*dev));
      hosts.back()->sw = this;
      hosts.back()->self = i;
    }
    for (int i = 0; i < n; ++i) engines[i]->start(0, *hosts[i]);
  }
  int index(const std::string& a) { return std::stoi(a.substr(10)); }

  void step(double now) {
    for (size_t i = 0; i < engines.size(); ++i)
      if (engines[i]->next_tick() <= now) engines[i]->tick(now, *hosts[i]);
    auto ms = std::move(models_out);
    models_out.clear();
    for (auto& m : ms) {
      std::vector<uint8_t> room(m.s.frame_bytes);
      int to = index(m.s.to);
      if (to >= static_cast<int>(engines.size())) continue;  // the forger answers nothing
      auto used = engines[m.from]->encode_frame(m.s, ++seq, room, hosts[m.from]->enc);
      if (!used) {  // a model that became non-finite (guards off) is not sent
        ++encode_failures;
        continue;
      }
      room.resize(*used);
      engines[to]->on_model(now, addr(m.from), m.s.kind == MsgKind::kModelReply, m.s.age, m.s.version,
                            m.s.length, std::make_shared<std::vector<uint8_t>>(std::move(room)),
                            tp::kFrameHeaderBytes, *hosts[to]);
    }
    auto vs = std::move(views_out);
    views_out.clear();
    for (auto& v : vs) {
      int to = index(v.to);
      if (to >= static_cast<int>(engines.size())) continue;
      engines[to]->on_view(now, addr(v.from), v.kind == MsgKind::kShuffleReply, v.entries, *hosts[to]);
    }
  }
  // The forger (not one of the peers' engines: a raw sender) hits peer `to`.
  void forge(double now, int to, float value, uint64_t age, const std::string& codec = "fp32") {
    engines[to]->on_model(now, "inproc://n9", false, age, 0, n_params,
                          forged_frame(hosts[to]->enc, n_params, value, age, codec), tp::kFrameHeaderBytes,
                          *hosts[to]);
  }
  float max_abs() const {
    float m = 0;
    for (const auto& x : models)
      for (float v : x) m = std::isfinite(v) ? std::max(m, std::fabs(v)) : INFINITY;
    return m;
  }
  uint64_t max_age() const {
    uint64_t a = 0;
    for (const auto& e : engines) a = std::max(a, e->core().age());
    return a;
  }
  uint64_t sum(uint64_t (*get)(const PeerEngine&)) const {
    uint64_t s = 0;
    for (const auto& e : engines) s += get(*e);
    return s;
  }
};

uint64_t rejected(const PeerEngine& e) { return e.counters().rejected_payloads.load(); }
uint64_t clamped(const PeerEngine& e) { return e.core().stats().ages_clamped; }
uint64_t merges(const PeerEngine& e) { return e.counters().merges.load(); }

// The attack: 5 forged frames (age 2^62, values 1e30) into a 4-peer gossip swarm; then
// 3e38. With the guards, every forged frame is refused and counted, the honest models stay
// where honest averaging puts them (in [0, 3], every value finite) and the ages stay near the
// honest ones. Without them, the same frames take the swarm over (the control).
TEST(TrustMerge, ForgedAgeAndHugeValuesDoNotTakeOverAFourPeerSwarm) {
  for (bool guards : {true, false}) {
    SCOPED_TRACE(guards ? "guards on" : "guards off");
    Swarm sw(4, 64, params(guards));
    double t = 0;
    for (; t < 3; t += 0.05) sw.step(t);  // honest warm-up: the peers find each other and merge
    const uint64_t honest_merges = sw.sum(merges);
    ASSERT_GT(honest_merges, 20u) << "the honest swarm exchanges models";
    const uint64_t honest_age = sw.max_age();
    for (int k = 0; k < 5; ++k) sw.forge(t, k % 4, 1e30f, kForgedAge);
    sw.forge(t, 0, 3e38f, kForgedAge);
    // A zstd body is judged after decompression, on the compute context: the core has taken
    // its (clamped) age by then, but the model is refused all the same.
    sw.forge(t, 1, 1e30f, kForgedAge, "fp32+zstd");
    for (double end = t + 10; t < end; t += 0.05) sw.step(t);
    if (guards) {
      EXPECT_EQ(sw.sum(rejected), 7u) << "each forged payload refused, nothing else";
      EXPECT_GE(sw.sum(clamped), 1u) << "the zstd frame's age was clamped";
      EXPECT_EQ(sw.encode_failures, 0u);
      EXPECT_LE(sw.max_abs(), 3.f) << "honest models stay convex combinations of 0..3";
      EXPECT_LT(sw.max_age(), honest_age + 1000 + 1000)
          << "ages grow by honest training and at most one lead (the zstd frame)";
      EXPECT_GT(sw.sum(merges), honest_merges + 100) << "learning (averaging) goes on";
      for (const auto& x : sw.models)
        for (float v : x) ASSERT_NEAR(v, sw.models[0][0], 0.5f) << "the honest peers still agree";
    } else {
      EXPECT_EQ(sw.sum(rejected), 0u);
      EXPECT_GT(sw.max_abs(), 1e20f) << "without the guards the forged values spread";
      EXPECT_GT(sw.max_age(), kForgedAge / 2) << "without the clamp the forged age spreads";
    }
  }
}

// The clamp on its own, with values inside the bound (a forged but bounded model): the weight
// the forged age buys is (A + lead) / (2A + lead), not ~1, and the local age grows by the lead.
TEST(TrustMerge, AForgedAgeBuysNoWeightNearOne) {
  auto dev = make_device("cpu", 1).value();
  for (bool guards : {true, false}) {
    SCOPED_TRACE(guards ? "guards on" : "guards off");
    RuntimeParams p = params(guards);
    p.max_age_lead = guards ? 1000 : uint64_t{1} << 63;
    ParamStore store(p);
    std::vector<float> model(16, 1.f);
    ProtocolOptions po;
    po.self = addr(0);
    auto core = make_protocol("gossip", po, &store).value();
    EngineOptions eo;
    eo.protocol = "gossip";
    eo.num_params = model.size();
    auto engine = PeerEngine::create(eo, std::move(core), &store, *dev, model.data(), nullptr).value();
    Swarm::Host host(*dev);
    Swarm dummy(1, 1, p);  // only as the host's sink for sends
    host.sw = &dummy;
    engine->start(0, host);
    // Honest history: 4 frames of the same model at the local age + 1000 raise the age.
    for (int k = 0; k < 4; ++k)
      engine->on_model(0, addr(1), false, engine->core().age() + 1000, 0, model.size(),
                       forged_frame(host.enc, model.size(), 1.f, engine->core().age() + 1000),
                       tp::kFrameHeaderBytes, host);
    const uint64_t A = engine->core().age();
    ASSERT_GE(A, 4000u);
    engine->on_model(0, addr(1), false, kForgedAge, 0, model.size(),
                     forged_frame(host.enc, model.size(), 5.f, kForgedAge), tp::kFrameHeaderBytes, host);
    if (guards) {
      const double w = double(A + 1000) / double(2 * A + 1000);
      for (float v : model) EXPECT_NEAR(v, 1.0 + 4.0 * w, 1e-4);
      EXPECT_EQ(engine->core().age(), A + 1000 + 1) << "age = local + lead, then one local step";
      EXPECT_EQ(engine->core().stats().ages_clamped, 1u);
    } else {
      for (float v : model) EXPECT_NEAR(v, 5.0, 1e-4) << "weight ~1 from the claimed age";
      EXPECT_EQ(engine->core().stats().ages_clamped, 0u);
    }
  }
}

}  // namespace
}  // namespace mycel::runtime
