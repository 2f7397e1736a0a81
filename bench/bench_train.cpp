// `mycel bench train`: training throughput (samples/s) of the models at a given batch size on
// each device: gather the batch on the device, forward, backward, one SGD step with momentum,
// exactly the loop `mycel train` runs. Synthetic MNIST-shaped data by default (28x28x1, 10
// classes: speed does not depend on the values), or a real data set with --data. The peer this
// is held against is PyTorch on the same model and batch: bench/torch_train.py (driven by
// bench/compare_torch.py) runs it and reports the ratio.
// Each row checks its own output: the loss of the timed steps and the parameters afterwards must
// be finite ("wrong" otherwise).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "bench/harness.h"
#include "common/log.h"
#include "kernels/ops.h"
#include "models/data/dataset.h"
#include "models/data/rng.h"
#include "models/model.h"
#include "models/trainer.h"
#include "runtime/cli/commands.h"

namespace mycel::bench {
namespace {

struct TrainBenchFlags {
  std::string models = "logreg,2nn,cnn";
  int batch = 32;
  int steps = 0;  // timed steps per repetition (0: per model, about 0.3 s on 2 cores)
  int reps = 5;
  int warmup = 20;  // untimed steps first
  std::string data = "synthetic";
  std::string cpu_threads;  // e.g. "1,2": the CPU rows once per thread count
  float lr = 0.01f;
  float momentum = 0.9f;
  bool json = false;
  bool quick = false;
};

data::Dataset synthetic(size_t n, uint64_t seed) {
  data::Dataset d;
  d.name = "synthetic";
  d.n = n;
  d.dim = 784;
  d.channels = 1;
  d.height = d.width = 28;
  d.classes = 10;
  data::Rng rng(seed);
  d.x.resize(n * d.dim);
  for (auto& v : d.x) v = float(rng.uniform());
  d.y.resize(n);
  for (auto& y : d.y) y = int32_t(rng.below(10));
  return d;
}

int default_steps(const std::string& model) {
  if (model.rfind("cnn", 0) == 0) return 40;
  if (model == "logreg") return 3000;
  return 600;
}

std::vector<Column> columns() {
  return {
      {"device", "device", 7, 0, true}, {"threads", "thr", 3},
      {"model", "model", 16, 0, true},  {"batch", "batch", 5},
      {"params", "params", 9},          {"steps", "steps", 6},
      {"ms_per_step", "ms/step", 8, 3}, {"samples_per_s", "samples/s", 10, 0},
      {"loss", "loss", 7, 3},           {"wrong", "wrong", 5},
  };
}

void error_row(Report& rep, Device& dev, const std::string& model, int batch, const Status& s) {
  Record r;
  set_device_fields(r, dev);
  r.set("model", model).set("batch", batch).set("error", s.to_string()).set("wrong", 1);
  MYCEL_LOG_ERROR("bench", "train {} on {}: {}", model, dev.name(), s.to_string());
  rep.add(std::move(r));
}

Status bench_model(Report& rep, Device& dev, const std::string& model_spec,
                   const data::Dataset& train, const TrainBenchFlags& f) {
  MYCEL_ASSIGN_OR_RETURN(auto model,
                         models::make_model(dev, model_spec, models::input_shape(train), 1));
  models::TrainConfig cfg;
  cfg.batch = f.batch;
  cfg.momentum = f.momentum;
  cfg.schedule.base = f.lr;
  cfg.seed = 1;
  MYCEL_ASSIGN_OR_RETURN(auto trainer, models::Trainer::create(*model, train, cfg));
  const int steps = f.steps > 0 ? f.steps : (f.quick ? 3 : default_steps(model_spec));
  MYCEL_CHECK(trainer->train_steps(size_t(f.quick ? 2 : f.warmup), f.lr));
  MYCEL_CHECK(trainer->take_stats().status());  // syncs
  std::vector<double> secs;
  double loss_sum = 0;
  size_t loss_n = 0;
  for (int r = 0; r < (f.quick ? 1 : f.reps); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    MYCEL_CHECK(trainer->train_steps(size_t(steps), f.lr));
    MYCEL_ASSIGN_OR_RETURN(auto st, trainer->take_stats());  // syncs: the steps are done
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    loss_sum += st.loss * double(st.n);
    loss_n += st.n;
  }
  MYCEL_ASSIGN_OR_RETURN(uint64_t nonfinite,
                         count_nonfinite(dev, model->params().data(), model->num_params()));
  const double loss = loss_n ? loss_sum / double(loss_n) : NAN;
  const double t = median(secs);
  Record r;
  set_device_fields(r, dev);
  r.set("model", model_spec).set("batch", f.batch).set("params", model->num_params());
  r.set("steps", steps).set("reps", secs.size()).set("data", train.name);
  r.set("ms_per_step", t * 1e3 / steps);
  r.set("samples_per_s", t > 0 ? double(steps) * f.batch / t : 0.0);
  // Best repetition too: on a shared machine the fastest run is the least disturbed one.
  const double best = *std::min_element(secs.begin(), secs.end());
  r.set("samples_per_s_best", best > 0 ? double(steps) * f.batch / best : 0.0);
  r.set("loss", loss);
  r.set("wrong", (std::isfinite(loss) && nonfinite == 0) ? 0 : 1);
  rep.add(std::move(r));
  return Ok();
}

int run_train_bench(const TrainBenchFlags& f, cli::Common& common) {
  if (f.batch < 1) {
    MYCEL_LOG_ERROR("bench", "--batch must be >= 1");
    return 2;
  }
  data::Dataset train;
  if (f.data == "synthetic") {
    train = synthetic(4096, 7);
  } else {
    data::LoadOptions lo;
    auto s = data::load(f.data, lo);
    if (!s) {
      MYCEL_LOG_ERROR("bench", "{}", s.status().message());
      return 2;
    }
    train = std::move(s->train);
  }
  std::vector<int> thread_counts = {common.threads};
  if (!f.cpu_threads.empty()) {
    auto t = parse_ints(f.cpu_threads, 1, 1024);
    if (!t) {
      MYCEL_LOG_ERROR("bench", "--cpu-threads: {}", t.status().message());
      return 2;
    }
    thread_counts = *t;
  }
  std::vector<std::shared_ptr<Device>> devices;
  for (size_t i = 0; i < thread_counts.size(); ++i) {
    auto d = bench_devices(common.device, thread_counts[i]);
    if (!d) {
      MYCEL_LOG_ERROR("bench", "{}", d.status().to_string());
      return 2;
    }
    for (auto& dev : *d)
      // GPUs once (the thread count is a CPU matter).
      if (dev->kind() == DeviceKind::kCpu || i == 0) devices.push_back(dev);
  }
  Report rep(f.json, columns());
  for (auto& devp : devices) {
    Device& dev = *devp;
    rep.note("# " + dev.name());
    for (const auto& m : split(f.models, ',')) {
      Status s = bench_model(rep, dev, m, train, f);
      if (!s) error_row(rep, dev, m, f.batch, s);
    }
  }
  return rep.finish();
}

}  // namespace
}  // namespace mycel::bench

namespace mycel::cli {

void add_bench_train(CLI::App& bench, Common& common) {
  auto f = std::make_shared<bench::TrainBenchFlags>();
  auto* cmd = bench.add_subcommand(
      "train",
      "training throughput (samples/s) of logreg, the 2NN MLP and the CNN at batch 32 "
      "on each device; compare with PyTorch by bench/compare_torch.py train");
  cmd->add_option("--models", f->models, "model specs, comma-separated (as mycel train --model)")
      ->capture_default_str();
  cmd->add_option("--batch", f->batch, "mini-batch size")->capture_default_str();
  cmd->add_option("--steps", f->steps, "timed steps per repetition (0: per model)")
      ->capture_default_str();
  cmd->add_option("--reps", f->reps, "timed repetitions (median reported)")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "untimed steps first")->capture_default_str();
  cmd->add_option("--data", f->data, "synthetic (28x28x1, 10 classes) or a data set name")
      ->capture_default_str();
  cmd->add_option("--cpu-threads", f->cpu_threads,
                  "CPU thread counts to run, comma-separated (default: the global --threads)");
  cmd->add_option("--lr", f->lr, "learning rate")->capture_default_str();
  cmd->add_option("--momentum", f->momentum, "SGD momentum")->capture_default_str();
  cmd->add_flag("--json", f->json, "print a JSON array of rows instead of the table");
  cmd->add_flag("--quick", f->quick, "smoke test: a few steps per model (seconds)");
  cmd->callback([f, &common] {
    int rc = bench::run_train_bench(*f, common);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace mycel::cli
