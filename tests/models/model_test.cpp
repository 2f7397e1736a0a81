// Models over one flat vector: spec parsing, parameter layout and counts, PyTorch-style init,
// gradient checks by finite differences for every model (and so every layer type: linear,
// linear+ReLU, conv+ReLU, max pooling, the NCHW->NHWC input path, softmax cross-entropy),
// determinism, and the loss falling on synthetic and (when present) real data.
#include "models/model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/train_ops.h"
#include "models/data/dataset.h"
#include "tests/models/data_test_util.h"
#include "models/optim.h"
#include "models/trainer.h"

namespace mycel::models {
namespace {

std::shared_ptr<Device> cpu() {
  auto d = make_device("cpu");
  EXPECT_TRUE(d.is_ok());
  return *d;
}

InputShape tabular(size_t dim, int classes) {
  InputShape s;
  s.dim = dim;
  s.classes = classes;
  return s;
}

InputShape image(int c, int h, int w, int classes) {
  InputShape s;
  s.dim = size_t(c) * h * w;
  s.channels = c;
  s.height = h;
  s.width = w;
  s.classes = classes;
  return s;
}

TEST(ModelSpec, ParsesAndRejects) {
  auto a = parse_model_spec("mlp:200,100");
  ASSERT_TRUE(a.is_ok());
  EXPECT_EQ(a->hidden, (std::vector<int>{200, 100}));
  EXPECT_EQ(a->text(), "mlp:200,100");
  auto b = parse_model_spec("cnn:8,16,32");
  ASSERT_TRUE(b.is_ok());
  EXPECT_EQ(b->conv1, 8);
  EXPECT_EQ(b->fc, 32);
  EXPECT_EQ(parse_model_spec("2nn")->hidden, (std::vector<int>{200, 200}));
  EXPECT_EQ(parse_model_spec("mlp")->hidden, (std::vector<int>{200, 200}));
  EXPECT_TRUE(parse_model_spec("logreg").is_ok());
  for (const char* bad : {"", "resnet", "mlp:", "mlp:10,,3", "mlp:-3", "mlp:1x", "cnn:1,2",
                          "logreg:5", "cnn:1,2,3,4"}) {
    auto r = parse_model_spec(bad);
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument) << bad;
  }
}

// The parameter counts of McMahan et al. 2017 (FedAvg): 2NN 199,210; CNN 1,663,370.
TEST(Model, FedAvgParameterCountsAndFlatLayout) {
  auto dev = cpu();
  auto nn2 = make_model(*dev, "2nn", image(1, 28, 28, 10), 1);
  ASSERT_TRUE(nn2.is_ok()) << nn2.status().to_string();
  EXPECT_EQ((*nn2)->num_params(), 199210u);
  auto cnn = make_model(*dev, "cnn", image(1, 28, 28, 10), 1);
  ASSERT_TRUE(cnn.is_ok()) << cnn.status().to_string();
  EXPECT_EQ((*cnn)->num_params(), 1663370u);
  auto lr = make_model(*dev, "logreg", tabular(57, 2), 1);
  ASSERT_TRUE(lr.is_ok());
  EXPECT_EQ((*lr)->num_params(), 57u * 2 + 2);
  // Views tile the flat vector with no gap or overlap, in order.
  for (auto* m : {nn2->get(), cnn->get(), lr->get()}) {
    size_t off = 0;
    for (const auto& v : m->param_views()) {
      EXPECT_EQ(v.offset, off) << v.name;
      off += v.count;
    }
    EXPECT_EQ(off, m->num_params());
    EXPECT_EQ(m->grads().size(), m->num_params());
  }
  // The cnn refuses tabular input; a model refuses fewer than 2 classes.
  EXPECT_EQ(make_model(*dev, "cnn", tabular(57, 2), 1).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(make_model(*dev, "logreg", tabular(5, 1), 1).status().code(), Code::kInvalidArgument);
}

TEST(Model, InitIsPyTorchUniformAndSeeded) {
  auto dev = cpu();
  auto a = make_model(*dev, "mlp:50", tabular(100, 10), 42);
  auto b = make_model(*dev, "mlp:50", tabular(100, 10), 42);
  auto c = make_model(*dev, "mlp:50", tabular(100, 10), 43);
  ASSERT_TRUE(a.is_ok() && b.is_ok() && c.is_ok());
  auto pa = *(*a)->download_params(), pb = *(*b)->download_params(), pc = *(*c)->download_params();
  EXPECT_EQ(pa, pb);
  EXPECT_NE(pa, pc);
  for (const auto& v : (*a)->param_views()) {
    const double bound = 1.0 / std::sqrt(double(v.fan_in));
    double mx = 0, sum = 0;
    for (size_t i = 0; i < v.count; ++i) {
      mx = std::max(mx, double(std::abs(pa[v.offset + i])));
      sum += pa[v.offset + i];
    }
    EXPECT_LE(mx, bound) << v.name;
    if (v.count >= 50) {
      EXPECT_GT(mx, 0.8 * bound) << v.name;  // fills the interval
    }
    EXPECT_LT(std::abs(sum / v.count), 0.3 * bound) << v.name;
  }
}

// Mean cross-entropy of the model on a batch, computed in double from the float logits.
double loss_of(Model& m, const std::vector<float>& x, const std::vector<int32_t>& y, int batch) {
  EXPECT_TRUE(m.forward(x.data(), batch).is_ok());
  const int k = m.input().classes;
  const float* z = m.logits();  // host memory on the CPU device
  double loss = 0;
  for (int r = 0; r < batch; ++r) {
    double mx = -1e300;
    for (int j = 0; j < k; ++j) mx = std::max(mx, double(z[r * k + j]));
    double s = 0;
    for (int j = 0; j < k; ++j) s += std::exp(double(z[r * k + j]) - mx);
    loss += mx + std::log(s) - z[r * k + y[r]];
  }
  return loss / batch;
}

// Central differences over every parameter, h = 1e-3, against the analytic gradient:
// |numeric - analytic| <= 5e-4 + 2e-2 * |analytic|. The loss is summed in double from the float
// logits, which carry ~1e-7 error; the division by 2h turns that into ~1e-4, hence the absolute
// term. A coordinate where the loss is not differentiable within h (a ReLU kink, or a max-pool
// window of tied ReLU zeros switching) shows as one-sided slopes that disagree by more than the
// tolerance; it is skipped, and at most 5% may be (the CNNs skip 0.6% and 3.2% at these seeds).
void grad_check(const char* spec, const InputShape& in, int batch, uint64_t seed) {
  SCOPED_TRACE(spec);
  auto dev = cpu();
  auto mr = make_model(*dev, spec, in, seed);
  ASSERT_TRUE(mr.is_ok()) << mr.status().to_string();
  Model& m = **mr;
  std::mt19937_64 g(seed + 100);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(size_t(batch) * in.dim);
  for (auto& v : x) v = nd(g);
  std::vector<int32_t> y(batch);
  for (int i = 0; i < batch; ++i) y[i] = int32_t(g() % in.classes);
  float acc[2] = {0, 0};
  ASSERT_TRUE(m.forward_backward(x.data(), y.data(), batch, acc).is_ok());
  EXPECT_NEAR(acc[0] / batch, loss_of(m, x, y, batch), 1e-4);
  std::vector<float> grad(m.grads().data(), m.grads().data() + m.num_params());
  float* p = m.params().data();
  size_t skipped = 0, checked = 0;
  double max_abs_grad = 0;
  const double l0 = loss_of(m, x, y, batch);
  for (size_t i = 0; i < m.num_params(); ++i) {
    const float p0 = p[i];
    auto loss_at = [&](float h) {
      p[i] = p0 + h;
      const double l = loss_of(m, x, y, batch);
      p[i] = p0;
      return l;
    };
    const float h = 1e-3f;
    // The steps actually taken in float.
    const double hp = double(p0 + h) - double(p0), hm = double(p0) - double(p0 - h);
    const double lp = loss_at(h), lm = loss_at(-h);
    const double central = (lp - lm) / (hp + hm);
    const double right = (lp - l0) / hp, left = (l0 - lm) / hm;
    const double a = grad[i];
    max_abs_grad = std::max(max_abs_grad, std::abs(a));
    const double tol = 5e-4 + 2e-2 * std::abs(a);
    if (std::abs(right - left) > tol) {
      ++skipped;  // the slope changes within h (a kink): finite differences do not apply
      continue;
    }
    ++checked;
    ASSERT_NEAR(central, a, tol) << "parameter " << i << " of " << m.num_params();
  }
  EXPECT_LE(skipped, m.num_params() / 20) << "too many non-smooth coordinates";
  EXPECT_GE(checked, m.num_params() - m.num_params() / 20);
  EXPECT_GT(max_abs_grad, 1e-2);  // the check is not vacuous
  // Backward leaves the forward state usable: the same batch gives the same gradient.
  ASSERT_TRUE(m.forward_backward(x.data(), y.data(), batch, nullptr).is_ok());
  for (size_t i = 0; i < m.num_params(); ++i) ASSERT_EQ(m.grads().data()[i], grad[i]);
}

TEST(GradCheck, LogReg) { grad_check("logreg", tabular(7, 3), 5, 1); }
TEST(GradCheck, MlpLinearRelu) { grad_check("mlp:6,5", tabular(7, 4), 5, 2); }
TEST(GradCheck, CnnConvPoolOneChannel) { grad_check("cnn:3,4,6", image(1, 8, 8, 3), 3, 3); }
// Two channels, non-square, odd width (pooling drops a column): the NCHW->NHWC input path.
TEST(GradCheck, CnnTwoChannelsOddShape) { grad_check("cnn:2,3,5", image(2, 8, 7, 3), 2, 4); }

// Gaussian blobs, one per class, far apart: linearly separable with margin.
data::Dataset blobs(size_t n, size_t dim, int classes, uint64_t seed) {
  data::Dataset d;
  d.name = "blobs";
  d.n = n;
  d.dim = dim;
  d.classes = classes;
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<std::vector<float>> centers(classes, std::vector<float>(dim));
  for (auto& c : centers)
    for (auto& v : c) v = 3.f * nd(g);
  for (size_t i = 0; i < n; ++i) {
    int32_t y = int32_t(i % classes);
    d.y.push_back(y);
    for (size_t j = 0; j < dim; ++j) d.x.push_back(centers[y][j] + nd(g));
  }
  return d;
}

// 8x8 one-channel images whose class is which quadrant is bright (plus noise).
data::Dataset quadrants(size_t n, uint64_t seed) {
  data::Dataset d;
  d.name = "quadrants";
  d.n = n;
  d.dim = 64;
  d.channels = 1;
  d.height = d.width = 8;
  d.classes = 4;
  std::mt19937_64 g(seed);
  std::normal_distribution<float> nd(0.f, 0.3f);
  for (size_t i = 0; i < n; ++i) {
    int32_t y = int32_t(g() % 4);
    d.y.push_back(y);
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) {
        int q = (r >= 4) * 2 + (c >= 4);
        d.x.push_back((q == y ? 1.f : 0.f) + nd(g));
      }
  }
  return d;
}

struct TrainRun {
  std::vector<double> losses;
  std::vector<float> params;
  double test_accuracy = 0;
};

TrainRun train(const char* spec, const data::Dataset& tr, const data::Dataset& te, int epochs,
               float lr, float momentum, uint64_t seed) {
  TrainRun out;
  auto dev = cpu();
  auto m = make_model(*dev, spec, input_shape(tr), seed);
  EXPECT_TRUE(m.is_ok()) << m.status().to_string();
  if (!m.is_ok()) return out;
  TrainConfig cfg;
  cfg.batch = 16;
  cfg.momentum = momentum;
  cfg.seed = seed;
  cfg.schedule = *parse_schedule("constant", lr, epochs, 0.f);
  auto t = Trainer::create(**m, tr, cfg);
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  if (!t.is_ok()) return out;
  for (int e = 0; e < epochs; ++e) {
    auto st = (*t)->run_epoch();
    EXPECT_TRUE(st.is_ok());
    if (!st.is_ok()) return out;
    EXPECT_EQ(st->samples, tr.n);
    out.losses.push_back(st->train_loss);
  }
  out.params = *(*m)->download_params();
  auto ev = (*t)->evaluate(te);
  EXPECT_TRUE(ev.is_ok());
  if (ev.is_ok()) out.test_accuracy = ev->accuracy;
  return out;
}

TEST(Training, SameSeedSameLossesAndParameters) {
  auto tr = blobs(200, 10, 3, 1), te = blobs(60, 10, 3, 2);
  TrainRun a = train("mlp:16", tr, te, 2, 0.05f, 0.9f, 7);
  TrainRun b = train("mlp:16", tr, te, 2, 0.05f, 0.9f, 7);
  TrainRun c = train("mlp:16", tr, te, 2, 0.05f, 0.9f, 8);
  ASSERT_EQ(a.losses.size(), 2u);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_EQ(a.params, b.params);
  EXPECT_NE(a.params, c.params);
}

TEST(Training, LossFallsOnSeparableSyntheticData) {
  // Blobs generated from one seed, so train and test share the class centers.
  auto all = blobs(600, 20, 4, 3);
  data::Dataset tr = all, te = all;
  tr.n = 400;
  tr.x.resize(400 * 20);
  tr.y.resize(400);
  te.n = 200;
  te.x.assign(all.x.begin() + 400 * 20, all.x.end());
  te.y.assign(all.y.begin() + 400, all.y.end());
  for (const char* spec : {"logreg", "mlp:32,16"}) {
    SCOPED_TRACE(spec);
    TrainRun r = train(spec, tr, te, 4, 0.05f, 0.9f, 1);
    ASSERT_EQ(r.losses.size(), 4u);
    EXPECT_LT(r.losses.back(), 0.25 * r.losses.front());
    EXPECT_GE(r.test_accuracy, 0.97);
  }
  auto q = quadrants(600, 5), qt = quadrants(200, 6);
  TrainRun r = train("cnn:4,8,16", q, qt, 4, 0.05f, 0.9f, 1);
  ASSERT_EQ(r.losses.size(), 4u);
  EXPECT_LT(r.losses.back(), 0.5 * r.losses.front());
  EXPECT_GE(r.test_accuracy, 0.95);
}

// A small real subset when the data set is present (scripts/fetch-data.sh puts it in data/).
TEST(Training, LossFallsOnRealPendigitsSubset) {
  data::LoadOptions opt;
  opt.dir = data::testing_util::real_data_dir();  // ctest runs in the build folder, not the source tree
  opt.max_train = 1000;
  opt.max_test = 500;
  auto split = data::load("pendigits", opt);
  if (!split.is_ok()) GTEST_SKIP() << "pendigits not available: " << split.status().to_string();
  TrainRun r = train("mlp:64", split->train, split->test, 3, 0.05f, 0.9f, 1);
  ASSERT_EQ(r.losses.size(), 3u);
  EXPECT_LT(r.losses.back(), 0.5 * r.losses.front());
  EXPECT_GE(r.test_accuracy, 0.85);
}

TEST(Training, TrainStepsForTheRuntime) {
  auto dev = cpu();
  auto tr = blobs(100, 5, 2, 9);
  auto m = make_model(*dev, "logreg", input_shape(tr), 1);
  ASSERT_TRUE(m.is_ok());
  TrainConfig cfg;
  cfg.batch = 8;
  cfg.schedule = *parse_schedule("age", 0.5f, 1, 0.f);
  auto t = Trainer::create(**m, tr, cfg);
  ASSERT_TRUE(t.is_ok());
  ASSERT_TRUE((*t)->train_steps(30, -1.f, 4).is_ok());  // crosses two orders of 12 full batches
  EXPECT_EQ((*t)->optimizer().steps(), 30u);
  EXPECT_FLOAT_EQ((*t)->optimizer().last_lr(), 0.125f);  // 0.5 / age 4
  auto st = (*t)->take_stats();
  ASSERT_TRUE(st.is_ok());
  EXPECT_EQ(st->n, 240u);
  ASSERT_TRUE((*t)->train_steps(1, 0.01f).is_ok());
  EXPECT_FLOAT_EQ((*t)->optimizer().last_lr(), 0.01f);
  // A data set that does not fit the model is refused.
  auto other = blobs(10, 6, 2, 1);
  EXPECT_EQ(Trainer::create(**m, other, cfg).status().code(), Code::kInvalidArgument);
  other = blobs(10, 5, 2, 1);
  other.y[3] = 2;
  EXPECT_EQ(Trainer::create(**m, other, cfg).status().code(), Code::kInvalidArgument);
}

TEST(Schedule, Values) {
  ScheduleClock c;
  auto constant = *parse_schedule("constant", 0.1f, 10, 0.f);
  c.epoch = 7;
  EXPECT_FLOAT_EQ(constant.lr(c), 0.1f);
  auto step = *parse_schedule("step:3,0.5", 0.1f, 10, 0.f);
  c.epoch = 2;
  EXPECT_FLOAT_EQ(step.lr(c), 0.1f);
  c.epoch = 3;
  EXPECT_FLOAT_EQ(step.lr(c), 0.05f);
  c.epoch = 7;
  EXPECT_FLOAT_EQ(step.lr(c), 0.025f);
  EXPECT_FLOAT_EQ(parse_schedule("step:2", 1.f, 10, 0.f)->lr(c), 0.001f);  // gamma 0.1, 3 decays
  auto cosine = *parse_schedule("cosine:0.01", 0.1f, 10, 0.f);
  c.epoch = 0;
  EXPECT_FLOAT_EQ(cosine.lr(c), 0.1f);
  c.epoch = 5;
  EXPECT_NEAR(cosine.lr(c), 0.055f, 1e-6);
  c.epoch = 10;
  EXPECT_NEAR(cosine.lr(c), 0.01f, 1e-7);
  auto age = *parse_schedule("age", 2.f, 10, 0.f);
  c.age = 8;
  EXPECT_FLOAT_EQ(age.lr(c), 0.25f);
  c.age = 0;  // treated as 1
  EXPECT_FLOAT_EQ(age.lr(c), 2.f);
  auto peg = *parse_schedule("pegasos", 0.f, 10, 0.01f);
  c.age = 50;
  EXPECT_FLOAT_EQ(peg.lr(c), 2.f);  // 1 / (0.01 * 50)
  for (const char* bad :
       {"linear", "step", "step:0", "step:2,0", "step:2,1.5", "cosine:1", "constant:3", "age:2"})
    EXPECT_EQ(parse_schedule(bad, 0.1f, 10, 0.f).status().code(), Code::kInvalidArgument) << bad;
  EXPECT_EQ(parse_schedule("pegasos", 0.1f, 10, 0.f).status().code(), Code::kInvalidArgument);
}

TEST(Sgd, StepFollowsScheduleAndReset) {
  auto dev = cpu();
  auto m = make_model(*dev, "logreg", tabular(3, 2), 1);
  ASSERT_TRUE(m.is_ok());
  auto sched = *parse_schedule("age", 1.f, 1, 0.f);
  auto sgd = Sgd::create(**m, 0.5f, 0.f, sched);
  ASSERT_TRUE(sgd.is_ok());
  // Gradient of all ones: with momentum 0.5 the velocity goes 1, 1.5; lr 1/age.
  for (size_t i = 0; i < (*m)->num_params(); ++i) (*m)->grads().data()[i] = 1.f;
  auto p0 = *(*m)->download_params();
  ScheduleClock c;
  c.age = 2;
  ASSERT_TRUE(sgd->step(c).is_ok());
  c.age = 4;
  ASSERT_TRUE(sgd->step(c).is_ok());
  auto p1 = *(*m)->download_params();
  for (size_t i = 0; i < p0.size(); ++i)
    EXPECT_NEAR(p1[i], p0[i] - 0.5f * 1.f - 0.25f * 1.5f, 1e-6);
  EXPECT_EQ(sgd->steps(), 2u);
  ASSERT_TRUE(sgd->reset().is_ok());
  EXPECT_EQ(sgd->steps(), 0u);
  EXPECT_EQ(sgd->velocity().data()[0], 0.f);
  EXPECT_FALSE(Sgd::create(**m, 1.f, 0.f, sched).is_ok());
  EXPECT_FALSE(sgd->step_lr(-1.f).is_ok());
}

}  // namespace
}  // namespace mycel::models
