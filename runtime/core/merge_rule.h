// Merge rules: how much of a received model a peer takes. One small interface and a registry,
// so a new rule is one file: define a class and register it with MYCEL_REGISTER_MERGE_RULE.
// (The runtime library is linked whole-archive so self-registration survives static linking.)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mycel::runtime {

// What a rule may look at when a model arrives.
struct MergeInputs {
  uint64_t age = 0;       // local model's age (updates it has seen)
  uint64_t age_recv = 0;  // received model's age
  int degree = 0;         // local peer's degree (fixed topologies), 0 when unknown
  int degree_recv = 0;    // sender's degree
};

class MergeRule {
 public:
  virtual ~MergeRule() = default;
  virtual std::string_view name() const = 0;
  // The weight a of the received model in x = (1 - a) x + a x_recv, in [0, 1].
  virtual float weight(const MergeInputs& in) const = 0;
  // The local model's age after the merge.
  virtual uint64_t merged_age(const MergeInputs& in) const {
    return in.age > in.age_recv ? in.age : in.age_recv;
  }
};

using MergeRuleFactory = std::function<std::unique_ptr<MergeRule>()>;

bool register_merge_rule(std::string name, std::string help, MergeRuleFactory factory);
Result<std::unique_ptr<MergeRule>> make_merge_rule(std::string_view name);
// (name, help) of every registered rule, sorted by name.
std::vector<std::pair<std::string, std::string>> merge_rules();

}  // namespace mycel::runtime

#define MYCEL_REGISTER_MERGE_RULE(Type, name, help)                                    \
  static const bool MYCEL_CONCAT(mycel_merge_rule_registered_, __LINE__) =              \
      ::mycel::runtime::register_merge_rule(name, help,                                \
                                            [] { return std::make_unique<Type>(); })
