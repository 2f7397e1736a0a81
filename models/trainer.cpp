#include "models/trainer.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "kernels/train_ops.h"
#include "models/data/rng.h"

namespace mycel::models {

InputShape input_shape(const data::Dataset& d) {
  InputShape s;
  s.dim = d.dim;
  s.channels = d.channels;
  s.height = d.height;
  s.width = d.width;
  s.classes = d.classes;
  return s;
}

Result<DeviceData> DeviceData::upload(Device& dev, const data::Dataset& d) {
  if (d.n == 0 || d.dim == 0)
    return Error(Code::kInvalidArgument, "data set '" + d.name + "' is empty");
  if (d.x.size() != d.n * d.dim || d.y.size() != d.n)
    return Error(Code::kInvalidArgument,
                 "data set '" + d.name + "': x/y sizes disagree with n, dim");
  if (d.n > size_t(INT32_MAX)) return Error(Code::kInvalidArgument, "data set over 2^31 rows");
  for (int32_t label : d.y)
    if (label < 0 || label >= d.classes)
      return Error(Code::kInvalidArgument, "data set '" + d.name + "': label " +
                                               std::to_string(label) + " outside [0, " +
                                               std::to_string(d.classes) + ")");
  DeviceData out;
  out.n = d.n;
  out.dim = d.dim;
  out.classes = d.classes;
  MYCEL_ASSIGN_OR_RETURN(out.x, Buffer<float>::make(dev, d.x.size()));
  MYCEL_ASSIGN_OR_RETURN(out.y, Buffer<int32_t>::make(dev, d.y.size()));
  MYCEL_CHECK(out.x.upload(d.x.data(), d.x.size()));
  MYCEL_CHECK(out.y.upload(d.y.data(), d.y.size()));
  MYCEL_CHECK(dev.sync());
  return out;
}

Result<DeviceData> DeviceData::allocate(Device& dev, size_t n, size_t dim, int classes) {
  if (n == 0 || dim == 0) return Error(Code::kInvalidArgument, "device data: no rows or no features");
  if (n > size_t(INT32_MAX)) return Error(Code::kInvalidArgument, "data set over 2^31 rows");
  DeviceData out;
  out.n = n;
  out.dim = dim;
  out.classes = classes;
  MYCEL_ASSIGN_OR_RETURN(out.x, Buffer<float>::make(dev, n * dim));
  MYCEL_ASSIGN_OR_RETURN(out.y, Buffer<int32_t>::make(dev, n));
  return out;
}

Status DeviceData::write_rows(Device& dev, size_t row0, const data::Dataset& block) {
  if (block.dim != dim || block.x.size() != block.n * dim || block.y.size() != block.n ||
      row0 > n || block.n > n - row0)
    return Error(Code::kInvalidArgument, "device data: a block of rows that does not fit");
  for (int32_t label : block.y)
    if (label < 0 || label >= classes)
      return Error(Code::kInvalidArgument, "data set '" + block.name + "': label " +
                                               std::to_string(label) + " outside [0, " +
                                               std::to_string(classes) + ")");
  MYCEL_CHECK(dev.copy(x.data() + row0 * dim, block.x.data(), block.x.size() * sizeof(float),
                       CopyKind::kHostToDevice));
  MYCEL_CHECK(dev.copy(y.data() + row0, block.y.data(), block.y.size() * sizeof(int32_t),
                       CopyKind::kHostToDevice));
  return dev.sync();
}

Result<std::unique_ptr<Trainer>> Trainer::create(Model& model, const data::Dataset& train,
                                                 const TrainConfig& cfg) {
  const InputShape& in = model.input();
  if (train.dim != in.dim || train.classes != in.classes)
    return Error(Code::kInvalidArgument,
                 "data set '" + train.name + "' (dim " + std::to_string(train.dim) + ", " +
                     std::to_string(train.classes) + " classes) does not fit the model (dim " +
                     std::to_string(in.dim) + ", " + std::to_string(in.classes) + " classes)");
  MYCEL_ASSIGN_OR_RETURN(auto d, DeviceData::upload(model.device(), train));
  return create(model, std::move(d), cfg);
}

Result<std::unique_ptr<Trainer>> Trainer::create(Model& model, DeviceData train_data,
                                                 const TrainConfig& cfg) {
  if (cfg.batch <= 0) return Error(Code::kInvalidArgument, "batch must be positive");
  const InputShape& in = model.input();
  if (train_data.dim != in.dim || train_data.classes != in.classes || train_data.n == 0)
    return Error(Code::kInvalidArgument,
                 "training data (" + std::to_string(train_data.n) + " rows, dim " +
                     std::to_string(train_data.dim) + ", " + std::to_string(train_data.classes) +
                     " classes) does not fit the model (dim " + std::to_string(in.dim) + ", " +
                     std::to_string(in.classes) + " classes)");
  std::unique_ptr<Trainer> t(new Trainer());
  t->model_ = &model;
  t->cfg_ = cfg;
  Device& dev = model.device();
  MYCEL_ASSIGN_OR_RETURN(t->sgd_, Sgd::create(model, cfg.momentum, cfg.weight_decay, cfg.schedule));
  t->data_ = std::move(train_data);
  const size_t n = t->data_.n, dim = t->data_.dim;
  const int batch = int(std::min<size_t>(size_t(cfg.batch), n));
  MYCEL_ASSIGN_OR_RETURN(t->order_, Buffer<int32_t>::make(dev, n));
  MYCEL_ASSIGN_OR_RETURN(t->xb_, Buffer<float>::make(dev, size_t(batch) * dim));
  MYCEL_ASSIGN_OR_RETURN(t->yb_, Buffer<int32_t>::make(dev, size_t(batch)));
  MYCEL_ASSIGN_OR_RETURN(t->acc_, Buffer<float>::make(dev, 2));
  MYCEL_CHECK(dev.memset(t->acc_.data(), 0, t->acc_.bytes()));
  MYCEL_CHECK(model.reserve(batch));
  t->cfg_.batch = batch;
  t->cursor_ = n;  // train_steps draws an order on first use
  return t;
}

Status Trainer::new_order() {
  // Fisher-Yates with the fully specified generator: the same seed gives the same order on
  // every platform. Each order has its own stream (seed, order number).
  data::Rng rng(cfg_.seed * 0x9E3779B97F4A7C15ull + orders_drawn_++);
  host_order_.resize(data_.n);
  for (size_t i = 0; i < data_.n; ++i) host_order_[i] = int32_t(i);
  for (size_t i = data_.n; i > 1; --i) std::swap(host_order_[i - 1], host_order_[rng.below(i)]);
  MYCEL_CHECK(order_.upload(host_order_.data(), host_order_.size()));
  // The host vector stays alive until the next order, so an asynchronous copy may still read it;
  // the next new_order() call syncs before rewriting it.
  cursor_ = 0;
  return Ok();
}

Status Trainer::step(size_t offset, int rows, float lr, uint64_t age) {
  Device& dev = model_->device();
  MYCEL_CHECK(nn::gather_rows(dev, data_.x.data(), data_.y.data(), data_.n, data_.dim,
                              order_.data() + offset, size_t(rows), xb_.data(), yb_.data()));
  MYCEL_CHECK(model_->forward_backward(xb_.data(), yb_.data(), rows, acc_.data()));
  acc_samples_ += size_t(rows);
  if (lr >= 0) return sgd_.step_lr(lr);
  ScheduleClock clock;
  clock.epoch = epoch_;
  clock.age = age;
  return sgd_.step(clock);
}

Result<EpochStats> Trainer::run_epoch(const std::function<void(size_t, size_t)>& progress) {
  Device& dev = model_->device();
  MYCEL_CHECK(dev.sync());  // the previous order's upload is done before its host copy changes
  MYCEL_CHECK(take_stats().status());  // start the epoch's accumulator at zero
  const auto t0 = std::chrono::steady_clock::now();
  MYCEL_CHECK(new_order());
  const size_t steps = (data_.n + size_t(cfg_.batch) - 1) / size_t(cfg_.batch);
  for (size_t s = 0; s < steps; ++s) {
    const size_t off = s * size_t(cfg_.batch);
    const int rows = int(std::min<size_t>(size_t(cfg_.batch), data_.n - off));
    // Centralised training: age counts the updates, so the age and pegasos schedules decay.
    MYCEL_CHECK(step(off, rows, -1.f, sgd_.steps() + 1));
    if (progress) progress(s + 1, steps);
  }
  cursor_ = data_.n;  // train_steps starts a fresh order after an epoch
  MYCEL_ASSIGN_OR_RETURN(EvalStats st, take_stats());  // syncs: the epoch's work is done
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EpochStats e;
  e.epoch = epoch_++;
  e.train_loss = st.loss;
  e.train_accuracy = st.accuracy;
  e.samples = st.n;
  e.seconds = secs;
  e.samples_per_s = secs > 0 ? double(st.n) / secs : 0;
  e.lr = sgd_.last_lr();
  return e;
}

Trainer::Position Trainer::position() const {
  return Position{orders_drawn_, cursor_, sgd_.steps(), epoch_};
}

Status Trainer::restore_position(const Position& p) {
  if (p.cursor > data_.n)
    return Error(Code::kOutOfRange, "trainer position: cursor " + std::to_string(p.cursor) + " is past the " +
                                        std::to_string(data_.n) + " training samples");
  if (p.orders_drawn > 0) {
    orders_drawn_ = p.orders_drawn - 1;
    MYCEL_CHECK(new_order());  // the same order again (drawn from the seed and its index)
  } else {
    orders_drawn_ = 0;
  }
  cursor_ = static_cast<size_t>(p.orders_drawn > 0 ? p.cursor : data_.n);
  epoch_ = static_cast<int>(p.epoch);
  sgd_.set_steps(p.sgd_steps);
  return Ok();
}

Status Trainer::train_steps(size_t n, float lr, uint64_t age) {
  for (size_t i = 0; i < n; ++i) {
    if (cursor_ + size_t(cfg_.batch) > data_.n) {
      MYCEL_CHECK(model_->device().sync());
      MYCEL_CHECK(new_order());
    }
    MYCEL_CHECK(step(cursor_, cfg_.batch, lr, age));
    cursor_ += size_t(cfg_.batch);
  }
  return Ok();
}

Result<EvalStats> Trainer::take_stats() {
  float host[2] = {0, 0};
  MYCEL_CHECK(acc_.download(host, 2));
  EvalStats s;
  s.n = acc_samples_;
  if (s.n > 0) {
    s.loss = double(host[0]) / double(s.n);
    s.accuracy = double(host[1]) / double(s.n);
  }
  acc_samples_ = 0;
  MYCEL_CHECK(model_->device().memset(acc_.data(), 0, acc_.bytes()));
  return s;
}

Result<EvalStats> Trainer::evaluate(const DeviceData& d, int batch) {
  if (d.dim != data_.dim || d.classes != data_.classes)
    return Error(Code::kInvalidArgument, "evaluate: data set does not fit the model");
  if (batch <= 0) batch = cfg_.batch;
  Device& dev = model_->device();
  MYCEL_ASSIGN_OR_RETURN(auto acc, Buffer<float>::make(dev, 2));
  MYCEL_CHECK(dev.memset(acc.data(), 0, acc.bytes()));
  for (size_t off = 0; off < d.n; off += size_t(batch)) {
    const int rows = int(std::min<size_t>(size_t(batch), d.n - off));
    MYCEL_CHECK(model_->evaluate(d.x.data() + off * d.dim, d.y.data() + off, rows, acc.data()));
  }
  float host[2];
  MYCEL_CHECK(acc.download(host, 2));
  EvalStats s;
  s.n = d.n;
  s.loss = double(host[0]) / double(d.n);
  s.accuracy = double(host[1]) / double(d.n);
  return s;
}

Result<EvalStats> Trainer::evaluate(const data::Dataset& d, int batch) {
  MYCEL_ASSIGN_OR_RETURN(auto dd, DeviceData::upload(model_->device(), d));
  return evaluate(dd, batch);
}

}  // namespace mycel::models
