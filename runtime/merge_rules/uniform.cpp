// Plain averaging of the two models: a = 1/2 whatever their ages.
#include "runtime/core/merge_rule.h"

namespace mycel::runtime {
namespace {

class UniformRule final : public MergeRule {
 public:
  std::string_view name() const override { return "uniform"; }
  float weight(const MergeInputs&) const override { return 0.5f; }
};

}  // namespace
MYCEL_REGISTER_MERGE_RULE(UniformRule, "uniform", "a = 1/2 (plain pairwise averaging)");
}  // namespace mycel::runtime
