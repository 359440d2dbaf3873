// Explicit SIMD (GCC/Clang vector extensions: 256-bit AVX2 vectors where the build enables AVX2, lowered
// to narrower registers elsewhere) and a branch-free exp written once for scalars and vectors: no libm
// calls and no float<->int conversions, only selects, FMAs, integer adds and shifts. Shared by every CPU
// kernel in csrc/.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace kale_fast {

template <typename acc_t>
struct Simd;

template <>
struct Simd<float> {
  static constexpr int64_t kWidth = 8;
  using Vec = float __attribute__((vector_size(32)));
  using Bits = uint32_t __attribute__((vector_size(32)));
  using ScalarBits = uint32_t;
};

template <>
struct Simd<double> {
  static constexpr int64_t kWidth = 4;
  using Vec = double __attribute__((vector_size(32)));
  using Bits = uint64_t __attribute__((vector_size(32)));
  using ScalarBits = uint64_t;
};

template <typename To, typename From>
inline To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs equal sizes");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// A scalar constant as a T (T a scalar or a vector): V{} + c broadcasts for vectors.
template <typename T, typename S>
inline T splat(S c) {
  return T{} + c;
}

// Loads Simd<acc_t>::kWidth elements of any dtype as an acc_t vector (fp16/bf16 are widened).
template <typename acc_t, typename scalar_t>
inline typename Simd<acc_t>::Vec load_vec(const scalar_t* p) {
  typename Simd<acc_t>::Vec v;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(&v, p, sizeof(v));
  } else {
    acc_t tmp[Simd<acc_t>::kWidth];
    for (int64_t j = 0; j < Simd<acc_t>::kWidth; ++j) tmp[j] = static_cast<acc_t>(p[j]);
    std::memcpy(&v, tmp, sizeof(v));
  }
  return v;
}

template <typename acc_t, typename scalar_t>
inline void store_vec(scalar_t* p, typename Simd<acc_t>::Vec v) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    std::memcpy(p, &v, sizeof(v));
  } else {
    for (int64_t j = 0; j < Simd<acc_t>::kWidth; ++j) p[j] = static_cast<scalar_t>(v[j]);
  }
}

template <typename acc_t, typename T>
using BitsOf =
    std::conditional_t<std::is_same_v<T, acc_t>, typename Simd<acc_t>::ScalarBits, typename Simd<acc_t>::Bits>;

// The core of exp_vec and exp_lean: for x in [kLo, kHi], returns p = exp(r) after the reduction x = k ln2 + r,
// accurate to about 1 ulp, and k's bits in `kbits` (k rounded by the 1.5 * 2^mantissa trick: kbits - kShift's
// bits = k, as an integer in the low bits). Float: 1 + r + r^2 q(r), q of degree 4 fitted for the least largest
// relative error on |r| <= ln2 / 2 (3.1e-9 with exact coefficients, 3.8e-9 with the float constants below, about
// an eighth of fp32's half ulp; Cephes' q of degree 5, 2.7e-9 with its float constants, costs one FMA more: its
// kale_loss forward took 1.07-1.1x the time; after fp32 evaluation both stay within 0.84 ulp); double: a Pade form.
template <typename acc_t, typename T>
inline T exp_reduced(T xc, BitsOf<acc_t, T>& kbits) {
  constexpr bool kFloat = std::is_same_v<acc_t, float>;
  constexpr acc_t kShift = kFloat ? 12582912.0 : 6755399441055744.0;  // 1.5 * 2^23, 1.5 * 2^52
  T k = xc * acc_t(1.4426950408889634074) + kShift;
  kbits = bit_cast<BitsOf<acc_t, T>>(k);
  k -= kShift;
  if constexpr (kFloat) {
    const T r = (xc - k * 0.693359375f) - k * -2.12194440e-4f;
    T p = splat<T>(1.381458189e-3f);
    p = p * r + 8.368713739e-3f;
    p = p * r + 4.166838805e-2f;
    p = p * r + 1.666652066e-1f;
    p = p * r + 4.999999345e-1f;
    return p * (r * r) + r + 1.0f;
  } else {
    const T r = (xc - k * 6.93145751953125e-1) - k * 1.42860682030941723212e-6;
    const T rr = r * r;
    const T px = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr + 9.99999999999999999910e-1);
    const T qx = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr + 2.27265548208155028766e-1) * rr +
                 2.00000000000000000009e0;
    return 1.0 + 2.0 * px / (qx - px);
  }
}

template <typename acc_t>
constexpr acc_t kExpLo = std::is_same_v<acc_t, float> ? acc_t(-86.6) : acc_t(-707.7);
template <typename acc_t>
constexpr int kMantissaBits = std::is_same_v<acc_t, float> ? 23 : 52;
template <typename acc_t>
constexpr unsigned kExponentBias = std::is_same_v<acc_t, float> ? 127 : 1023;

// exp(x) for T = acc_t or Simd<acc_t>::Vec, accurate to about 1 ulp; 2^k is built from exponent bits as
// 2^(k-1) * 2, so that k = 128 (float) and k = 1024 (double), reached just below the overflow threshold, stay
// representable. Results below the smallest normal number (fp32: x < -86.6, fp64: x < -707.7) are flushed to
// zero; +inf and overflow give +inf, -inf gives 0, NaN gives NaN. No libm calls, no float<->int conversions.
template <typename acc_t, typename T>
inline T exp_vec(T x) {
  constexpr acc_t kHi = std::is_same_v<acc_t, float> ? 88.7228317 : 709.782712893383973;
  const T lo = splat<T>(kExpLo<acc_t>), hi = splat<T>(kHi);
  const T xc = x < lo ? lo : (x > hi ? hi : x);
  BitsOf<acc_t, T> kbits;
  const T p = exp_reduced<acc_t>(xc, kbits);
  const T half_scale = bit_cast<T>(static_cast<BitsOf<acc_t, T>>((kbits + (kExponentBias<acc_t> - 1))
                                                                  << kMantissaBits<acc_t>));  // 2^(k-1)
  T y = p * half_scale * acc_t(2);
  y = x < lo ? splat<T>(acc_t(0)) : y;
  y = x > hi ? splat<T>(std::numeric_limits<acc_t>::infinity()) : y;
  return x != x ? x : y;
}

// max(a, b) as a > b ? a : b (b where either is NaN): one vmaxps/vmaxpd on AVX vectors, where GCC compiles the
// select as a compare and a blend. T: a scalar or a Simd vector.
template <typename T>
inline T max_or_second(T a, T b) {
#if defined(__AVX__)
  if constexpr (std::is_same_v<T, Simd<float>::Vec>) return __builtin_ia32_maxps256(a, b);
  if constexpr (std::is_same_v<T, Simd<double>::Vec>) return __builtin_ia32_maxpd256(a, b);
#endif
  return a > b ? a : b;
}

// exp(x) for x <= kLeanExpMax<acc_t> (fp32: 65, fp64: 660): exp_vec without the overflow and +inf handling, for
// arguments bounded by construction (an element minus the maximum, x minus a log-mean-exp, -e - A where the
// maximum allows it). Same accuracy where the result is normal; NaN gives NaN, -inf gives 0. Below the smallest
// normal result (fp32: x < -87.3, fp64: x < -708.4), by kSubnormals:
// - true: the subnormal result, rounded once (2^k applied as 2^(k + kLeanScaleBits) * 2^-kLeanScaleBits, so
//   that the first product stays normal), and 0 below half the smallest subnormal; for values returned as they
//   are (gradients).
// - false: a value in (0, exp(kLeanSumLo)] (about 1.7e-38, 3.3e-308) instead, one multiplication cheaper; for the
//   terms of a sum that holds a term of 1 (exp(max - max)), whose rounding an error that small per term does not
//   reach at any count of terms.
// `unscale` is the last factor, 2^-kLeanScaleBits (kSubnormals only): factor * 2^-kLeanScaleBits instead returns
// factor * exp(x) with one multiplication less and one rounding, where that product is exact (normal or 0).
template <typename acc_t>
constexpr acc_t kLeanExpMax = std::is_same_v<acc_t, float> ? acc_t(65) : acc_t(660);
template <typename acc_t>
constexpr unsigned kLeanScaleBits = std::is_same_v<acc_t, float> ? 32 : 64;
template <typename acc_t>  // 2^-kLeanScaleBits
constexpr acc_t kLeanUnscale = std::is_same_v<acc_t, float> ? acc_t(0x1p-32) : acc_t(0x1p-64);
template <typename acc_t>  // below half the smallest subnormal result: exp(-104) = 6.8e-46, exp(-745.2) = 2.3e-324
constexpr acc_t kLeanSubnormalLo = std::is_same_v<acc_t, float> ? acc_t(-104) : acc_t(-745.2);
template <typename acc_t>  // the result still normal (and k >= -126, -1022)
constexpr acc_t kLeanSumLo = std::is_same_v<acc_t, float> ? acc_t(-87) : acc_t(-708);

template <typename acc_t, bool kSubnormals = true, typename T>
inline T exp_lean(T x, acc_t unscale = kLeanUnscale<acc_t>) {
  const T xc = max_or_second(splat<T>(kSubnormals ? kLeanSubnormalLo<acc_t> : kLeanSumLo<acc_t>), x);  // keeps NaN
  BitsOf<acc_t, T> kbits;
  const T p = exp_reduced<acc_t>(xc, kbits);
  if constexpr (kSubnormals) {
    constexpr unsigned kBiasedScale = kExponentBias<acc_t> + kLeanScaleBits<acc_t>;
    const T scale =  // 2^(k + kLeanScaleBits)
        bit_cast<T>(static_cast<BitsOf<acc_t, T>>((kbits + kBiasedScale) << kMantissaBits<acc_t>));
    return p * scale * unscale;
  } else {
    return p * bit_cast<T>(static_cast<BitsOf<acc_t, T>>((kbits + kExponentBias<acc_t>) << kMantissaBits<acc_t>));
  }
}

using Floatx8 = Simd<float>::Vec;
using Int32x8 = int32_t __attribute__((vector_size(32)));
using Uint32x8 = uint32_t __attribute__((vector_size(32)));

// Natural log of 8 floats > 0 (Cephes logf polynomial, about 1 ulp); callers guarantee positive, finite,
// normal inputs (the uniforms of philox.h).
inline Floatx8 log_vec(Floatx8 x) {
  const Uint32x8 bits = bit_cast<Uint32x8>(x);
  Floatx8 e = __builtin_convertvector(Int32x8((bits >> 23) & 0xffu) - 126, Floatx8);
  Floatx8 m = bit_cast<Floatx8>((bits & 0x007fffffu) | 0x3f000000u);  // x = m * 2^e, m in [0.5, 1)
  const auto small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = (small ? m + m : m) - 1.0f;
  const Floatx8 z = m * m;
  Floatx8 y = splat<Floatx8>(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}

inline Floatx8 sqrt_vec(Floatx8 x) {
  for (int j = 0; j < 8; ++j) x[j] = __builtin_sqrtf(x[j]);  // one vsqrtps with -fno-math-errno
  return x;
}

// sin and cos of 2 pi u for u in [0, 1): reduction to [-pi/4, pi/4] by quarter turns, Cephes polynomials.
inline void sincos_two_pi(Floatx8 u, Floatx8& sine, Floatx8& cosine) {
  const Floatx8 turns = u * 4.0f;                                  // quarter turns, [0, 4)
  const Floatx8 quarter = (turns + 12582912.0f) - 12582912.0f;      // nearest integer, 0..4
  const Floatx8 r = (turns - quarter) * 1.57079632679489662f;       // in [-pi/4, pi/4]
  const Floatx8 r2 = r * r;
  const Floatx8 s = r + r * r2 * (-1.6666654611e-1f + r2 * (8.3321608736e-3f + r2 * -1.9515295891e-4f));
  const Floatx8 c = 1.0f - 0.5f * r2 +
                    r2 * r2 * (4.166664568298827e-2f + r2 * (-1.388731625493765e-3f + r2 * 2.443315711809948e-5f));
  // rotate (s, c) by `quarter` quarter turns (4 is a full turn, as 0)
  const auto q1 = quarter == 1.0f, q2 = quarter == 2.0f, q3 = quarter == 3.0f;
  sine = q1 ? c : (q2 ? -s : (q3 ? -c : s));
  cosine = q1 ? -s : (q2 ? -c : (q3 ? s : c));
}

}  // namespace kale_fast
