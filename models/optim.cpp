#include "models/optim.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace mycel::models {
namespace {

Result<double> parse_number(std::string_view s, const std::string& what) {
  // from_chars for double is in libstdc++ 11+; strtod on a copy keeps older toolchains happy.
  std::string copy(s);
  char* end = nullptr;
  double v = copy.empty() ? 0 : std::strtod(copy.c_str(), &end);
  if (copy.empty() || end != copy.c_str() + copy.size() || !std::isfinite(v))
    return Error(Code::kInvalidArgument, "schedule '" + what + "': '" + copy + "' is not a number");
  return v;
}

}  // namespace

float LrSchedule::lr(const ScheduleClock& c) const {
  switch (kind) {
    case Kind::kConstant:
      return base;
    case Kind::kStep:
      return base * std::pow(gamma, float(c.epoch / std::max(1, every)));
    case Kind::kCosine: {
      const double t = std::min(1.0, double(c.epoch) / double(std::max(1, epochs)));
      return float(min_lr + (base - min_lr) * (1.0 + std::cos(M_PI * t)) / 2.0);
    }
    case Kind::kAge:
      return base / float(std::max<uint64_t>(1, c.age));
    case Kind::kPegasos:
      return float(1.0 / (double(lambda) * double(std::max<uint64_t>(1, c.age))));
  }
  return base;
}

std::string LrSchedule::text() const {
  auto g = [](float v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", double(v));
    return std::string(buf);
  };
  switch (kind) {
    case Kind::kConstant:
      return "constant";
    case Kind::kStep:
      return "step:" + std::to_string(every) + "," + g(gamma);
    case Kind::kCosine:
      return "cosine:" + g(min_lr);
    case Kind::kAge:
      return "age";
    case Kind::kPegasos:
      return "pegasos";
  }
  return "?";
}

Result<LrSchedule> parse_schedule(std::string_view text, float base, int epochs, float lambda) {
  const std::string spec(text);
  if (!std::isfinite(base) || base < 0)
    return Error(Code::kInvalidArgument, "learning rate must be finite and >= 0");
  LrSchedule s;
  s.base = base;
  s.epochs = std::max(1, epochs);
  s.lambda = lambda;
  size_t colon = text.find(':');
  std::string_view name = text.substr(0, colon);
  std::string_view args = colon == std::string_view::npos ? "" : text.substr(colon + 1);
  if (name == "constant" && args.empty()) {
    s.kind = LrSchedule::Kind::kConstant;
  } else if (name == "step") {
    s.kind = LrSchedule::Kind::kStep;
    size_t comma = args.find(',');
    MYCEL_ASSIGN_OR_RETURN(double every, parse_number(args.substr(0, comma), spec));
    if (every < 1 || every != std::floor(every) || every > 1e9)
      return Error(Code::kInvalidArgument,
                   "schedule '" + spec + "': step needs a whole number of epochs >= 1");
    s.every = int(every);
    if (comma != std::string_view::npos) {
      MYCEL_ASSIGN_OR_RETURN(double g, parse_number(args.substr(comma + 1), spec));
      if (g <= 0 || g > 1)
        return Error(Code::kInvalidArgument, "schedule '" + spec + "': gamma must be in (0, 1]");
      s.gamma = float(g);
    }
  } else if (name == "cosine") {
    s.kind = LrSchedule::Kind::kCosine;
    if (!args.empty()) {
      MYCEL_ASSIGN_OR_RETURN(double m, parse_number(args, spec));
      if (m < 0 || m > base)
        return Error(Code::kInvalidArgument, "schedule '" + spec + "': min must be in [0, lr]");
      s.min_lr = float(m);
    }
  } else if (name == "age" && args.empty()) {
    s.kind = LrSchedule::Kind::kAge;
  } else if (name == "pegasos" && args.empty()) {
    s.kind = LrSchedule::Kind::kPegasos;
    if (!(lambda > 0))
      return Error(Code::kInvalidArgument,
                   "schedule 'pegasos' needs a weight decay (lambda) > 0: lr = 1 / (lambda * age)");
  } else {
    return Error(Code::kInvalidArgument,
                 "unknown schedule '" + spec +
                     "' (expected constant, step:EVERY[,GAMMA], cosine[:MIN], age, pegasos)");
  }
  return s;
}

Result<Sgd> Sgd::create(Model& model, float momentum, float weight_decay,
                        const LrSchedule& schedule) {
  if (!std::isfinite(momentum) || momentum < 0 || momentum >= 1)
    return Error(Code::kInvalidArgument, "momentum must be in [0, 1)");
  if (!std::isfinite(weight_decay) || weight_decay < 0)
    return Error(Code::kInvalidArgument, "weight decay must be finite and >= 0");
  Sgd s;
  s.model_ = &model;
  s.opt_.momentum = momentum;
  s.opt_.weight_decay = weight_decay;
  s.schedule_ = schedule;
  if (momentum > 0) {
    MYCEL_ASSIGN_OR_RETURN(s.velocity_, Buffer<float>::make(model.device(), model.num_params()));
    MYCEL_CHECK(model.device().memset(s.velocity_.data(), 0, s.velocity_.bytes()));
  }
  return s;
}

Status Sgd::step(ScheduleClock clock) {
  clock.step = steps_;
  return step_lr(schedule_.lr(clock));
}

Status Sgd::step_lr(float lr) {
  if (!model_) return Error(Code::kInvalidArgument, "sgd: not created");
  if (!std::isfinite(lr) || lr < 0)
    return Error(Code::kInvalidArgument,
                 "sgd: learning rate " + std::to_string(lr) + " is not finite and >= 0");
  SgdParams p = opt_;
  p.lr = lr;
  MYCEL_CHECK(nn::sgd_update(model_->device(), model_->params().data(), model_->grads().data(),
                             velocity_.data(), model_->num_params(), p));
  ++steps_;
  last_lr_ = lr;
  return Ok();
}

Status Sgd::reset() {
  steps_ = 0;
  if (velocity_.data())
    MYCEL_CHECK(model_->device().memset(velocity_.data(), 0, velocity_.bytes()));
  return Ok();
}

}  // namespace mycel::models
