// Local training: a data set resident on the model's device, mini-batches gathered on the
// device by a shuffled index (one upload of the order per epoch, no per-step host traffic), the
// forward/backward pass and one SGD update per batch. `mycel train` runs whole epochs; the gossip
// runtime runs a few steps at a time with a learning rate of its own (train_steps).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include "common/status.h"
#include "models/data/dataset.h"
#include "models/model.h"
#include "models/optim.h"

namespace mycel::models {

// A data set copied to a device once.
struct DeviceData {
  Buffer<float> x;    // [n, dim]
  Buffer<int32_t> y;  // [n]
  size_t n = 0, dim = 0;
  int classes = 0;
  static Result<DeviceData> upload(Device& dev, const data::Dataset& d);
  // Room for n rows, written block by block with write_rows (rows [row0, row0 + block.n)).
  static Result<DeviceData> allocate(Device& dev, size_t n, size_t dim, int classes);
  Status write_rows(Device& dev, size_t row0, const data::Dataset& block);
};

// The input shape a model needs for a data set.
InputShape input_shape(const data::Dataset& d);

struct TrainConfig {
  int batch = 32;
  float lr = 0.01f;
  float momentum = 0.f;
  float weight_decay = 0.f;
  LrSchedule schedule;  // schedule.base is what counts; lr is a convenience for callers
  uint64_t seed = 1;    // shuffling order (the model's init seed is the model's business)
};

struct EpochStats {
  int epoch = 0;              // 0-based
  double train_loss = 0;      // mean cross-entropy over the epoch's batches (before each update)
  double train_accuracy = 0;  // same, fraction correct
  size_t samples = 0;
  double seconds = 0;  // the training loop alone (no evaluation)
  double samples_per_s = 0;
  float lr = 0;  // the last step's
};

struct EvalStats {
  double loss = 0;      // mean cross-entropy
  double accuracy = 0;  // fraction
  size_t n = 0;
};

class Trainer {
 public:
  // Uploads `train` to the model's device. The model must match the data (dim, classes).
  // The same with the data already on the device (e.g. written there a block at a time).
  static Result<std::unique_ptr<Trainer>> create(Model& model, DeviceData train,
                                                 const TrainConfig& cfg);
  static Result<std::unique_ptr<Trainer>> create(Model& model, const data::Dataset& train,
                                                 const TrainConfig& cfg);

  // One pass over the training set in a new order drawn from (seed, epoch); the last batch may
  // be short (as PyTorch's DataLoader without drop_last). progress(done, total) after each step.
  Result<EpochStats> run_epoch(const std::function<void(size_t, size_t)>& progress = {});

  // n steps of `batch` samples continuing through the current order (a new order is drawn when
  // one is used up; partial batches are not taken here). lr < 0: the schedule's rate with
  // clock.age; otherwise that rate. Losses add to the device accumulator read by take_stats().
  Status train_steps(size_t n, float lr = -1.f, uint64_t age = 1);
  // Mean loss and accuracy of the steps since the last call (reads the device: syncs).
  Result<EvalStats> take_stats();

  // Loss and accuracy of the model on a data set, in contiguous batches (no shuffling).
  Result<EvalStats> evaluate(const DeviceData& d, int batch = 0);
  Result<EvalStats> evaluate(const data::Dataset& d, int batch = 0);

  // Where train_steps stands in its data order (checkpoints): the orders drawn so far (the
  // current one is redrawn from the seed and this count), the position in it, the epochs of
  // run_epoch and the optimizer's step count. restore_position() refuses a cursor past the
  // data.
  struct Position {
    uint64_t orders_drawn = 0, cursor = 0, sgd_steps = 0;
    int64_t epoch = 0;
  };
  Position position() const;
  Status restore_position(const Position& p);

  Model& model() { return *model_; }
  Sgd& optimizer() { return sgd_; }
  const DeviceData& train_data() const { return data_; }
  int epochs_done() const { return epoch_; }

 private:
  Trainer() = default;
  Status new_order();
  Status step(size_t offset, int rows, float lr, uint64_t age);

  Model* model_ = nullptr;
  TrainConfig cfg_;
  Sgd sgd_;
  DeviceData data_;
  Buffer<int32_t> order_;  // device copy of the current permutation
  std::vector<int32_t> host_order_;
  Buffer<float> xb_;  // gathered batch
  Buffer<int32_t> yb_;
  Buffer<float> acc_;  // [loss sum, correct] since take_stats
  size_t acc_samples_ = 0;
  size_t cursor_ = 0;  // train_steps' position in the current order
  uint64_t orders_drawn_ = 0;
  int epoch_ = 0;
};

}  // namespace mycel::models
