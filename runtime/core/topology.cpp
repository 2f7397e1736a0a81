#include "runtime/core/topology.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

namespace mycel::runtime {

double Topology::weight(int i, int j) const {
  return 1.0 / (1.0 + std::max(degree(i), degree(j)));
}

double Topology::self_weight(int i) const {
  double s = 0;
  for (int j : adj[static_cast<size_t>(i)]) s += weight(i, j);
  return 1.0 - s;
}

namespace {

void add_edge(std::vector<std::set<int>>& g, int a, int b) {
  if (a == b) return;
  g[static_cast<size_t>(a)].insert(b);
  g[static_cast<size_t>(b)].insert(a);
}

// Pairing (configuration) model: n*k stubs matched at random, retried until simple.
bool random_regular(int n, int k, std::mt19937_64& rng, std::vector<std::set<int>>& g) {
  for (int attempt = 0; attempt < 200; ++attempt) {
    for (auto& s : g) s.clear();
    std::vector<int> stubs;
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < k; ++c) stubs.push_back(i);
    std::shuffle(stubs.begin(), stubs.end(), rng);
    bool ok = true;
    for (size_t p = 0; p + 1 < stubs.size() && ok; p += 2) {
      int a = stubs[p], b = stubs[p + 1];
      if (a == b || g[static_cast<size_t>(a)].count(b)) ok = false;
      else add_edge(g, a, b);
    }
    if (ok) return true;
  }
  return false;
}

}  // namespace

Result<Topology> make_topology(std::string_view kind, int n, int degree, uint64_t seed) {
  if (n < 1) return Error(Code::kInvalidArgument, "a topology needs at least one peer");
  std::vector<std::set<int>> g(static_cast<size_t>(n));
  if (kind == "ring") {
    for (int i = 0; i < n; ++i) add_edge(g, i, (i + 1) % n);
  } else if (kind == "complete") {
    for (int i = 0; i < n; ++i)
      for (int j = i + 1; j < n; ++j) add_edge(g, i, j);
  } else if (kind == "torus") {
    int rows = static_cast<int>(std::sqrt(static_cast<double>(n)));
    while (rows > 1 && n % rows != 0) --rows;
    int cols = n / rows;
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) {
        int i = r * cols + c;
        add_edge(g, i, r * cols + (c + 1) % cols);
        add_edge(g, i, ((r + 1) % rows) * cols + c);
      }
  } else if (kind == "regular") {
    if (degree < 1 || degree >= n || (static_cast<long>(n) * degree) % 2 != 0)
      return Error(Code::kInvalidArgument, "a random " + std::to_string(degree) + "-regular graph on " +
                                               std::to_string(n) + " peers needs 1 <= k < n and n*k even");
    std::mt19937_64 rng(seed ^ 0x5eed70b0u);
    if (!random_regular(n, degree, rng, g))
      return Error(Code::kInternal, "could not draw a simple random regular graph");
  } else {
    return Error(Code::kInvalidArgument, "unknown topology '" + std::string(kind) +
                                             "' (expected ring, torus, regular or complete)");
  }
  Topology t;
  for (auto& s : g) t.adj.emplace_back(s.begin(), s.end());
  return t;
}

}  // namespace mycel::runtime
