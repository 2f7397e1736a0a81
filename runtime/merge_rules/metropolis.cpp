// Metropolis-Hastings weight of the edge (i, j) on a fixed topology: 1 / (1 + max(d_i, d_j)).
// With every neighbour's model merged at this weight the mixing matrix is doubly stochastic,
// which is what D-PSGD needs to converge to the average. Without degrees it falls back to 1/2.
#include <algorithm>

#include "runtime/core/merge_rule.h"

namespace mycel::runtime {
namespace {

class MetropolisRule final : public MergeRule {
 public:
  std::string_view name() const override { return "metropolis"; }
  float weight(const MergeInputs& in) const override {
    if (in.degree <= 0 || in.degree_recv <= 0) return 0.5f;
    return 1.0f / (1.0f + static_cast<float>(std::max(in.degree, in.degree_recv)));
  }
};

}  // namespace
MYCEL_REGISTER_MERGE_RULE(MetropolisRule, "metropolis", "a = 1 / (1 + max(deg_i, deg_j)) (D-PSGD)");
}  // namespace mycel::runtime
