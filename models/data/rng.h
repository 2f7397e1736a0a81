// A small, fully specified random source for splits and partitions. The C++ standard fixes
// mt19937_64's output but not what std::shuffle, uniform_int_distribution or
// gamma_distribution make of it, so a partition drawn with them could differ between libstdc++
// and libc++ (or a Jetson's toolchain). Everything here is spelled out, so a seed gives the same
// partition on every platform.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace mycel::data {

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}

  uint64_t next() { return g_(); }

  // Uniform in [0, n), n > 0 (Lemire's multiply-shift; the bias is below 2^-64 * n).
  size_t below(size_t n) {
    return static_cast<size_t>((static_cast<unsigned __int128>(g_()) * n) >> 64);
  }

  // Uniform in (0, 1): 53 random bits, never exactly 0 (log() and pow() below rely on that).
  double uniform() { return (static_cast<double>(g_() >> 11) + 0.5) * 0x1.0p-53; }

  // Standard normal (Box-Muller, one of the pair used).
  double normal() {
    const double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }

  // Gamma(shape, 1), Marsaglia and Tsang (2000); shape < 1 by boosting: G(a) = G(a+1) U^(1/a).
  double gamma(double shape) {
    if (shape < 1.0) return gamma(shape + 1.0) * std::pow(uniform(), 1.0 / shape);
    const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
    for (;;) {
      double x, v;
      do {
        x = normal();
        v = 1.0 + c * x;
      } while (v <= 0.0);
      v = v * v * v;
      const double u = uniform();
      if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
      if (std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
    }
  }

  // Fisher-Yates.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[below(i)]);
  }

 private:
  std::mt19937_64 g_;
};

}  // namespace mycel::data
