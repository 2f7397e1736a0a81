// Optimisation: SGD with momentum and weight decay over a model's flat vector (one kernel per
// step), its state (the velocity) in one more flat buffer, and learning-rate schedules.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/status.h"
#include "kernels/train_ops.h"
#include "models/model.h"

namespace mycel::models {

// Where training stands when a learning rate is asked for.
struct ScheduleClock {
  int epoch = 0;      // 0-based epoch of centralised training
  uint64_t step = 0;  // optimizer steps taken before this one
  uint64_t age = 1;   // gossip learning: the model's age (updates it embodies), >= 1
};

// Learning-rate schedules (text form in parentheses, as --schedule takes it):
//   constant          lr = base                                                   ("constant")
//   step              lr = base * gamma^floor(epoch / every)              ("step:EVERY[,GAMMA]")
//                     GAMMA defaults to 0.1
//   cosine            lr = min + (base - min) * (1 + cos(pi * epoch / epochs)) / 2
//                     per epoch, as PyTorch's CosineAnnealingLR(T_max = epochs)  ("cosine[:MIN]")
//   age               lr = base / age: gossip learning's eta / age, where age counts the
//                     updates a (possibly merged) model embodies                  ("age")
//   pegasos           lr = 1 / (lambda * age), Pegasos (Shalev-Shwartz et al.) as used by
//                     gossip learning for linear models; lambda is the weight decay, so with
//                     momentum 0 an update is w <- (1 - lr*lambda) w - lr * grad   ("pegasos")
// In centralised training age = step + 1 (one update per mini-batch).
struct LrSchedule {
  enum class Kind { kConstant, kStep, kCosine, kAge, kPegasos };
  Kind kind = Kind::kConstant;
  float base = 0.01f;
  int every = 1;       // step: epochs between decays
  float gamma = 0.1f;  // step
  int epochs = 1;      // cosine: T_max
  float min_lr = 0.f;  // cosine
  float lambda = 0.f;  // pegasos

  float lr(const ScheduleClock& c) const;
  std::string text() const;
};

// Parses the text form above. base is the base learning rate, epochs the run's length (cosine),
// lambda the weight decay (pegasos needs it > 0).
Result<LrSchedule> parse_schedule(std::string_view text, float base, int epochs, float lambda);

// SGD with momentum and weight decay (PyTorch's torch.optim.SGD rule; see SgdParams).
class Sgd {
 public:
  // Allocates the velocity (zeros) when momentum > 0.
  static Result<Sgd> create(Model& model, float momentum, float weight_decay,
                            const LrSchedule& schedule);

  // One update of model.params() from model.grads() at the schedule's rate for `clock`
  // (clock.step is taken from the optimizer's own counter, which then advances).
  Status step(ScheduleClock clock);
  // One update at an explicit learning rate (the gossip runtime picks its own).
  Status step_lr(float lr);

  uint64_t steps() const { return steps_; }
  void set_steps(uint64_t n) { steps_ = n; }  // a restored checkpoint's count
  float last_lr() const { return last_lr_; }
  const LrSchedule& schedule() const { return schedule_; }
  SgdParams params() const { return opt_; }
  Buffer<float>& velocity() { return velocity_; }
  // Zeroes the velocity and the step counter (e.g. after a merge replaced the model).
  Status reset();

 private:
  Model* model_ = nullptr;
  SgdParams opt_;
  LrSchedule schedule_;
  Buffer<float> velocity_;
  uint64_t steps_ = 0;
  float last_lr_ = 0.f;
};

}  // namespace mycel::models
