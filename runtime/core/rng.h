// The per-peer random source of the protocol cores: SplitMix64 (Steele, Lea, Flood 2014), eight
// bytes of state, a UniformRandomBitGenerator for <random>. A Mersenne Twister is 2.5 KB; a
// simulator holding 100,000 cores cannot afford two of them per peer, and peer selection and
// jitter need no more than SplitMix64's statistical quality (it passes BigCrush).
#pragma once

#include <cstdint>
#include <limits>

namespace mycel::runtime {

class SmallRng {
 public:
  using result_type = uint64_t;
  explicit SmallRng(uint64_t seed = 1) : s_(seed) {}
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  result_type operator()() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, n), n > 0 (Lemire's multiply-shift).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>((*this)()) * n) >> 64); }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>((*this)() >> 11) * 0x1.0p-53; }
  uint64_t state() const { return s_; }

 private:
  uint64_t s_;
};

}  // namespace mycel::runtime
