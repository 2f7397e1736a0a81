// `mycel train`: centralised training of one model on one data set, the baseline every
// decentralised result is held against.
//   mycel train --dataset spambase --model logreg --epochs 20 --lr 0.05
//   mycel train --config examples/train-fashion-cnn.yaml --epochs 2
// Progress on stderr (a bar when stderr is a terminal, one line per epoch otherwise), one JSON
// line on stdout at the end. Flags given on the command line override the config file.
// Exit status: 0 done, 2 bad arguments or a missing data set (data::load names the command that
// fetches it), 1 a failure while training (a non-finite loss included).
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include "common/log.h"
#include "kernels/device.h"
#include "models/data/dataset.h"
#include "models/model.h"
#include "models/optim.h"
#include "models/trainer.h"
#include "runtime/cli/commands.h"

namespace mycel::cli {
namespace {

struct TrainFlags {
  std::string config;
  std::string dataset;
  std::string model = "mlp";
  int epochs = 5;
  int batch = 32;
  int eval_batch = 0;
  float lr = 0.01f;
  float momentum = 0.f;
  float weight_decay = 0.f;
  std::string schedule = "constant";
  uint64_t seed = 1;
  std::string device;  // empty: the global --device
  int threads = -1;    // < 0: the global --threads
  size_t max_train = 0, max_test = 0;
  std::string data_dir;
  bool normalize = false;
  // The user's own data (csv:, npy:): data.header / data.label / data.test / data.test_fraction.
  std::string header = "auto", label, test;
  double test_fraction = 0.2;
  bool quiet = false;
};

[[noreturn]] void fail(int code, const std::string& msg) {
  std::fprintf(stderr, "mycel train: %s\n", msg.c_str());
  throw CLI::RuntimeError(code);
}

std::string json_str(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
      continue;
    }
    o += c;
  }
  return o + "\"";
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// Keys of the YAML config; each sets the flag unless the command line gave it.
void apply_config(TrainFlags& f, CLI::App& cmd) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(f.config);
  } catch (const YAML::BadFile&) {
    fail(2, "cannot read config file '" + f.config + "'");
  } catch (const YAML::Exception& e) {
    fail(2, "config file '" + f.config + "': " + e.what());
  }
  if (!root.IsMap()) fail(2, "config file '" + f.config + "' is not a mapping of keys");
  // The training keys may sit at the top level or under `train:`.
  YAML::Node node = root["train"] ? root["train"] : root;
  auto given = [&](const char* flag) { return cmd.get_option(flag)->count() > 0; };
  try {
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      const YAML::Node v = it->second;
      if (key == "dataset") {
        if (!given("--dataset")) f.dataset = v.as<std::string>();
      } else if (key == "model") {
        if (!given("--model")) f.model = v.as<std::string>();
      } else if (key == "epochs") {
        if (!given("--epochs")) f.epochs = v.as<int>();
      } else if (key == "batch") {
        if (!given("--batch")) f.batch = v.as<int>();
      } else if (key == "eval_batch") {
        if (!given("--eval-batch")) f.eval_batch = v.as<int>();
      } else if (key == "lr") {
        if (!given("--lr")) f.lr = v.as<float>();
      } else if (key == "momentum") {
        if (!given("--momentum")) f.momentum = v.as<float>();
      } else if (key == "weight_decay") {
        if (!given("--weight-decay")) f.weight_decay = v.as<float>();
      } else if (key == "schedule") {
        if (!given("--schedule")) f.schedule = v.as<std::string>();
      } else if (key == "seed") {
        if (!given("--seed")) f.seed = v.as<uint64_t>();
      } else if (key == "device") {
        if (!given("--device")) f.device = v.as<std::string>();
      } else if (key == "threads") {
        if (!given("--threads")) f.threads = v.as<int>();
      } else if (key == "max_train") {
        if (!given("--max-train")) f.max_train = v.as<size_t>();
      } else if (key == "max_test") {
        if (!given("--max-test")) f.max_test = v.as<size_t>();
      } else if (key == "data_dir") {
        if (!given("--data-dir")) f.data_dir = v.as<std::string>();
      } else if (key == "normalize") {
        if (!given("--normalize")) f.normalize = v.as<bool>();
      } else if (key == "header") {
        if (!given("--header")) f.header = v.as<std::string>();
      } else if (key == "label") {
        if (!given("--label")) f.label = v.as<std::string>();
      } else if (key == "test") {
        if (!given("--test")) f.test = v.as<std::string>();
      } else if (key == "test_fraction") {
        if (!given("--test-fraction")) f.test_fraction = v.as<double>();
      } else if (node == root && key != "train") {
        // Unknown top-level keys belong to other sections of an experiment file; inside
        // `train:` an unknown key is a typo worth stopping for.
        continue;
      } else {
        fail(2, "config file '" + f.config + "': unknown key 'train." + key + "'");
      }
    }
  } catch (const YAML::Exception& e) {
    fail(2, "config file '" + f.config + "': " + e.what());
  }
}

class Progress {
 public:
  Progress(bool tty, int epoch, int epochs, size_t batch)
      : tty_(tty),
        epoch_(epoch),
        epochs_(epochs),
        batch_(batch),
        t0_(std::chrono::steady_clock::now()),
        last_(t0_) {}
  void update(size_t done, size_t total) {
    if (!tty_) return;
    auto now = std::chrono::steady_clock::now();
    if (done != total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - t0_).count();
    const int width = 30;
    const int fill = int(double(width) * double(done) / double(total));
    std::string bar(size_t(fill), '=');
    if (fill < width) bar += '>' + std::string(size_t(width - fill - 1), ' ');
    std::fprintf(stderr, "\r\033[Kepoch %d/%d [%s] %3d%% %zu/%zu steps %.0f samples/s", epoch_ + 1,
                 epochs_, bar.c_str(), int(100.0 * double(done) / double(total)), done, total,
                 secs > 0 ? double(done * batch_) / secs : 0.0);
  }
  void clear() {
    if (tty_) std::fprintf(stderr, "\r\033[K");
  }

 private:
  bool tty_;
  int epoch_, epochs_;
  size_t batch_;
  std::chrono::steady_clock::time_point t0_, last_;
};

void run(TrainFlags f, CLI::App& cmd, Common& common) {
  if (!f.config.empty()) apply_config(f, cmd);
  if (f.dataset.empty()) fail(2, "no data set: give --dataset NAME or a config with 'dataset:'");
  if (f.epochs < 1) fail(2, "--epochs must be >= 1");
  if (f.batch < 1) fail(2, "--batch must be >= 1");
  if (f.eval_batch < 0) fail(2, "--eval-batch must be >= 0");
  if (!std::isfinite(f.lr) || f.lr < 0) fail(2, "--lr must be finite and >= 0");

  const std::string device_spec = f.device.empty() ? common.device : f.device;
  const int threads = f.threads >= 0 ? f.threads : common.threads;
  auto dev_r = make_device(device_spec, threads);
  if (!dev_r) fail(2, dev_r.status().message());
  std::shared_ptr<Device> dev = *dev_r;

  auto spec = models::parse_model_spec(f.model);
  if (!spec) fail(2, spec.status().message());
  auto sched = models::parse_schedule(f.schedule, f.lr, f.epochs, f.weight_decay);
  if (!sched) fail(2, sched.status().message());

  data::LoadOptions lo;
  lo.dir = f.data_dir;
  lo.seed = f.seed;
  lo.max_train = f.max_train;
  lo.max_test = f.max_test;
  lo.normalize_images = f.normalize;
  lo.label = f.label;
  lo.test = f.test;
  lo.test_fraction = f.test_fraction;
  auto header = data::parse_header_mode(f.header);
  if (!header) fail(2, "--header: " + header.status().message());
  lo.header = *header;
  auto split_r = data::load(f.dataset, lo);
  if (!split_r) fail(2, split_r.status().message());
  data::Split split = std::move(split_r).value();

  auto model_r = models::Model::create(*dev, *spec, models::input_shape(split.train));
  if (!model_r) fail(2, model_r.status().message());
  auto& model = **model_r;
  if (auto s = model.init(f.seed); !s) fail(1, s.to_string());

  models::TrainConfig cfg;
  cfg.batch = f.batch;
  cfg.lr = f.lr;
  cfg.momentum = f.momentum;
  cfg.weight_decay = f.weight_decay;
  cfg.schedule = *sched;
  cfg.seed = f.seed;
  auto trainer_r = models::Trainer::create(model, split.train, cfg);
  if (!trainer_r) fail(2, trainer_r.status().message());
  auto& trainer = **trainer_r;
  auto test_r = models::DeviceData::upload(*dev, split.test);
  if (!test_r) fail(1, test_r.status().to_string());
  const models::DeviceData test = std::move(test_r).value();
  const int eval_batch = f.eval_batch > 0 ? f.eval_batch : f.batch;

  if (!f.quiet) {
    std::fprintf(stderr, "train %s (%zu train, %zu test, %zu features, %d classes) on %s\n",
                 f.dataset.c_str(), split.train.n, split.test.n, split.train.dim,
                 split.train.classes, dev->name().c_str());
    std::fprintf(stderr, "model %s\n%s\n", spec->text().c_str(), model.summary().c_str());
    std::fprintf(stderr, "sgd lr %g momentum %g weight decay %g schedule %s, batch %d, %d epochs\n",
                 double(f.lr), double(f.momentum), double(f.weight_decay), sched->text().c_str(),
                 f.batch, f.epochs);
  }
  const bool tty = !f.quiet && isatty(STDERR_FILENO);
  const auto t0 = std::chrono::steady_clock::now();
  double train_secs = 0, train_loss = 0;
  size_t samples = 0;
  models::EvalStats ev;
  for (int e = 0; e < f.epochs; ++e) {
    Progress bar(tty, e, f.epochs, size_t(f.batch));
    auto st = trainer.run_epoch([&](size_t d, size_t t) { bar.update(d, t); });
    bar.clear();
    if (!st) fail(1, st.status().to_string());
    auto ev_r = trainer.evaluate(test, eval_batch);
    if (!ev_r) fail(1, ev_r.status().to_string());
    ev = *ev_r;
    train_secs += st->seconds;
    samples += st->samples;
    train_loss = st->train_loss;
    if (!std::isfinite(st->train_loss))
      fail(1, "training diverged: the train loss is not finite at epoch " + std::to_string(e + 1) +
                  " (lower the learning rate)");
    if (!f.quiet)
      std::fprintf(stderr,
                   "epoch %d/%d  train loss %.4f  train acc %.4f  test loss %.4f  test acc %.4f  "
                   "lr %.4g  %.0f samples/s  %.1f s\n",
                   e + 1, f.epochs, st->train_loss, st->train_accuracy, ev.loss, ev.accuracy,
                   double(st->lr), st->samples_per_s, st->seconds);
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "{\"dataset\": %s, \"model\": %s, \"params\": %zu, \"epochs\": %d, \"batch\": %d, "
      "\"lr\": %s, \"momentum\": %s, \"weight_decay\": %s, \"schedule\": %s, \"seed\": %llu, "
      "\"train_samples\": %zu, \"test_samples\": %zu, \"train_loss\": %s, \"test_loss\": %s, "
      "\"test_accuracy\": %s, \"samples_per_s\": %s, \"seconds\": %s, \"device\": %s, "
      "\"threads\": %d}\n",
      json_str(f.dataset).c_str(), json_str(spec->text()).c_str(), model.num_params(), f.epochs,
      f.batch, num(f.lr).c_str(), num(f.momentum).c_str(), num(f.weight_decay).c_str(),
      json_str(sched->text()).c_str(), static_cast<unsigned long long>(f.seed), split.train.n,
      split.test.n, num(train_loss).c_str(), num(ev.loss).c_str(), num(ev.accuracy).c_str(),
      num(train_secs > 0 ? double(samples) / train_secs : 0).c_str(), num(secs).c_str(),
      json_str(dev->name()).c_str(), dev->threads());
  std::fflush(stdout);
}

}  // namespace

void add_train_command(CLI::App& app, Common& common) {
  auto f = std::make_shared<TrainFlags>();
  auto* cmd = app.add_subcommand(
      "train",
      "centralised training of one model on one data set (the baseline): per-epoch "
      "loss and test accuracy on stderr, one JSON line on stdout");
  cmd->add_option("--config", f->config,
                  "YAML file with keys dataset, model, epochs, batch, lr, momentum, weight_decay, "
                  "schedule, seed, device, threads, max_train, max_test, data_dir, normalize, "
                  "header, label, test, test_fraction "
                  "(top level or under 'train:'); flags override it");
  cmd->add_option("--dataset", f->dataset,
                  "mnist fashion-mnist spambase pendigits letter, or csv:PATH idx:DIR "
                  "npy:X.npy,Y.npy (docs/data.md)");
  cmd->add_option("--model", f->model, "logreg | mlp[:H1,H2,...] | 2nn | cnn[:C1,C2,FC]")
      ->capture_default_str();
  cmd->add_option("--epochs", f->epochs, "passes over the training set")->capture_default_str();
  cmd->add_option("--batch", f->batch, "mini-batch size")->capture_default_str();
  cmd->add_option("--eval-batch", f->eval_batch, "batch for test evaluation (0: --batch)");
  cmd->add_option("--lr", f->lr, "base learning rate")->capture_default_str();
  cmd->add_option("--momentum", f->momentum, "SGD momentum in [0, 1)")->capture_default_str();
  cmd->add_option("--weight-decay", f->weight_decay, "L2 weight decay (pegasos: lambda)")
      ->capture_default_str();
  cmd->add_option("--schedule", f->schedule,
                  "constant | step:EVERY[,GAMMA] | cosine[:MIN] | age | pegasos")
      ->capture_default_str();
  cmd->add_option("--seed", f->seed,
                  "seed of the initialisation, the batch order and the "
                  "spambase split")
      ->capture_default_str();
  cmd->add_option("--device", f->device,
                  "auto | cpu | cuda | cuda:N (default: the global --device)");
  cmd->add_option("--threads", f->threads, "CPU threads (default: the global --threads)");
  cmd->add_option("--max-train", f->max_train, "use only the first N training samples (0: all)");
  cmd->add_option("--max-test", f->max_test, "use only the first N test samples (0: all)");
  cmd->add_option("--data-dir", f->data_dir, "data folder (default: $MYCEL_DATA or data)");
  cmd->add_flag("--normalize", f->normalize,
                "images: (pixel - mean) / std with the training split's statistics");
  cmd->add_option("--header", f->header, "csv: header row auto | yes | no")->capture_default_str();
  cmd->add_option("--label", f->label, "csv: label column by name or 0-based index (default: last)");
  cmd->add_option("--test", f->test,
                  "csv/npy: test split files (a CSV; X.npy,Y.npy) instead of --test-fraction");
  cmd->add_option("--test-fraction", f->test_fraction,
                  "fraction drawn as the stratified test split (spambase, csv, npy)")
      ->check(CLI::Range(0.001, 0.999))
      ->capture_default_str();
  cmd->add_flag("--quiet,-q", f->quiet, "no progress or per-epoch lines, only the JSON line");
  cmd->callback([f, cmd, &common] { run(*f, *cmd, common); });
}

}  // namespace mycel::cli
