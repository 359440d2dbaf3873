// Counter-based Gaussian noise for the CPU kernels: Philox4x32-10 (Salmon et al., SC'11) keyed by a seed
// drawn from torch's generator, counter = element index / 4, and Box-Muller on its four uniforms. Element i
// of a call always gets the same number for the same seed, whatever the thread split. Blocks of 8 counters
// (32 normals) are computed at a time on 8-lane vectors with the float log/sin/cos of vec_math.h; normals are
// computed in fp32 (plenty for MCMC noise) and widened for fp64 states.
#pragma once

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "vec_math.h"

namespace kale_fast {

constexpr int64_t kPhiloxLanes = 8;                       // counters per block
constexpr int64_t kNormalsPerBlock = 4 * kPhiloxLanes;    // 32 normals per block

// (hi, lo) 32-bit halves of a * m for 8 lanes: vpmuludq on even and odd lanes where AVX2 is built in.
inline void mul_hi_lo(Uint32x8 a, uint32_t m, Uint32x8& hi, Uint32x8& lo) {
#if defined(__AVX2__)
  const __m256i av = bit_cast<__m256i>(a), mv = _mm256_set1_epi32(static_cast<int>(m));
  const __m256i even = _mm256_mul_epu32(av, mv), odd = _mm256_mul_epu32(_mm256_srli_epi64(av, 32), mv);
  lo = bit_cast<Uint32x8>(_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA));
  hi = bit_cast<Uint32x8>(_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA));
#else
  for (int j = 0; j < 8; ++j) {
    const uint64_t product = static_cast<uint64_t>(a[j]) * m;
    hi[j] = static_cast<uint32_t>(product >> 32);
    lo[j] = static_cast<uint32_t>(product);
  }
#endif
}

// The four 32-bit words of counters first_counter .. first_counter + 7.
inline void philox_block(uint64_t seed, uint64_t first_counter, Uint32x8 words[4]) {
  Uint32x8 c0, c1, c2 = {}, c3 = {};
  for (int j = 0; j < kPhiloxLanes; ++j) {
    c0[j] = static_cast<uint32_t>(first_counter + j);
    c1[j] = static_cast<uint32_t>((first_counter + j) >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    Uint32x8 hi0, lo0, hi1, lo1;
    mul_hi_lo(c0, 0xD2511F53u, hi0, lo0);
    mul_hi_lo(c2, 0xCD9E8D57u, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c2 = hi0 ^ c3 ^ k1;
    c1 = lo1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  words[0] = c0;
  words[1] = c1;
  words[2] = c2;
  words[3] = c3;
}

// 32 standard normals of block `block` (elements 32 * block ... 32 * block + 31).
inline void philox_normal_block(uint64_t seed, uint64_t block, float out[kNormalsPerBlock]) {
  Uint32x8 words[4];
  philox_block(seed, block * kPhiloxLanes, words);
  for (int pair = 0; pair < 2; ++pair) {
    // (w + 0.5) / 2^32 in (0, 1), so log(u1) is finite; through int32 halves, as AVX2 converts signed only.
    const Floatx8 u1 = (__builtin_convertvector(Int32x8(words[2 * pair] >> 1), Floatx8) * 2.0f + 1.0f) *
                       2.3283064365386963e-10f;
    const Floatx8 u2 = __builtin_convertvector(Int32x8(words[2 * pair + 1] >> 8), Floatx8) * 5.9604645e-8f;
    const Floatx8 radius = sqrt_vec(-2.0f * log_vec(u1));
    Floatx8 sine, cosine;
    sincos_two_pi(u2, sine, cosine);
    const Floatx8 first = radius * cosine, second = radius * sine;
    for (int j = 0; j < kPhiloxLanes; ++j) {
      out[4 * j + 2 * pair] = first[j];
      out[4 * j + 2 * pair + 1] = second[j];
    }
  }
}

// Standard normals for the global element indices [start, start + n), written to out[0:n].
template <typename acc_t>
void philox_normal(uint64_t seed, int64_t start, int64_t n, acc_t* out) {
  float block_normals[kNormalsPerBlock];
  for (int64_t i = start; i < start + n;) {
    const int64_t block = i / kNormalsPerBlock, offset = i - block * kNormalsPerBlock;
    philox_normal_block(seed, static_cast<uint64_t>(block), block_normals);
    const int64_t count = std::min(kNormalsPerBlock - offset, start + n - i);
    for (int64_t k = 0; k < count; ++k) out[i - start + k] = static_cast<acc_t>(block_normals[offset + k]);
    i += count;
  }
}

}  // namespace kale_fast
