// Fixed topologies for D-PSGD, built identically by every peer from the experiment seed, and
// their Metropolis-Hastings mixing weights.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace mycel::runtime {

struct Topology {
  std::vector<std::vector<int>> adj;  // adj[i]: neighbours of i, sorted, no self loops
  int degree(int i) const { return static_cast<int>(adj[static_cast<size_t>(i)].size()); }
  // Metropolis-Hastings weight of edge (i, j): 1 / (1 + max(d_i, d_j)); the self weight is
  // 1 - sum of i's edge weights. The matrix is symmetric and doubly stochastic.
  double weight(int i, int j) const;
  double self_weight(int i) const;
};

// "ring", "torus" (2-D, rows x cols as square as n allows), "regular" (random k-regular,
// k = degree, n * k even, k < n), "complete".
Result<Topology> make_topology(std::string_view kind, int n, int degree, uint64_t seed);

}  // namespace mycel::runtime
