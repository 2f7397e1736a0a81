// Gossip learning's age-weighted merge (Hegedűs, Danner, Jelasity): the model that has seen
// more updates weighs more. a = age_recv / (age + age_recv); 1/2 when both are new.
#include "runtime/core/merge_rule.h"

namespace mycel::runtime {
namespace {

class AgeRule final : public MergeRule {
 public:
  std::string_view name() const override { return "age"; }
  float weight(const MergeInputs& in) const override {
    if (in.age == 0 && in.age_recv == 0) return 0.5f;
    return static_cast<float>(static_cast<double>(in.age_recv) /
                              (static_cast<double>(in.age) + static_cast<double>(in.age_recv)));
  }
};

}  // namespace
MYCEL_REGISTER_MERGE_RULE(AgeRule, "age", "a = age_recv / (age + age_recv); age = max (gossip learning)");
}  // namespace mycel::runtime
