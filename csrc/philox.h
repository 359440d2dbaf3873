// Counter-based Gaussian noise for the CPU kernels: Philox4x32-10 (Salmon et al., SC'11) keyed by a seed
// drawn from torch's generator, counter = element index / 4, and Box-Muller on its four uniforms. Element i
// of a call always gets the same number for the same seed, whatever the thread split.
#pragma once

#include <cmath>
#include <cstdint>

namespace kale_fast {

struct Philox4x32 {
  uint32_t key0, key1;

  explicit Philox4x32(uint64_t seed) : key0(static_cast<uint32_t>(seed)), key1(static_cast<uint32_t>(seed >> 32)) {}

  // Four independent 32-bit words for counter `counter`.
  void operator()(uint64_t counter, uint32_t out[4]) const {
    uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = key0, k1 = key1;
    for (int round = 0; round < 10; ++round) {
      const uint64_t product0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      const uint64_t product1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t next0 = static_cast<uint32_t>(product1 >> 32) ^ c1 ^ k0;
      const uint32_t next2 = static_cast<uint32_t>(product0 >> 32) ^ c3 ^ k1;
      c1 = static_cast<uint32_t>(product1);
      c3 = static_cast<uint32_t>(product0);
      c0 = next0;
      c2 = next2;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
  }
};

// Standard normals for the global element indices [start, start + n), written to out[0:n].
template <typename acc_t>
void philox_normal(uint64_t seed, int64_t start, int64_t n, acc_t* out) {
  const Philox4x32 philox(seed);
  constexpr double kTwoPi = 6.283185307179586476925;
  constexpr double kInv2To32 = 2.3283064365386963e-10;
  uint32_t words[4];
  double normals[4];
  for (int64_t i = start; i < start + n;) {
    const int64_t group = i / 4;
    philox(static_cast<uint64_t>(group), words);
    for (int pair = 0; pair < 2; ++pair) {
      const double u1 = (words[2 * pair] + 0.5) * kInv2To32;  // in (0, 1): log(u1) is finite
      const double u2 = (words[2 * pair + 1] + 0.5) * kInv2To32;
      const double radius = std::sqrt(-2.0 * std::log(u1));
      normals[2 * pair] = radius * std::cos(kTwoPi * u2);
      normals[2 * pair + 1] = radius * std::sin(kTwoPi * u2);
    }
    for (int64_t k = i - 4 * group; k < 4 && i < start + n; ++k, ++i) out[i - start] = static_cast<acc_t>(normals[k]);
  }
}

}  // namespace kale_fast
