// The reductions and the gradient map of the CPU KALE kernels, over explicit SIMD vectors (vec_math.h); their
// running state (include/kale_fast/log_sum_exp_state.h) is shared with the CUDA kernels. Inputs of any floating
// dtype are widened to acc_t (float or double).
//
// Accuracy at any size: every sum is pairwise. Inside a block of kBlock elements, vector leaves of kLeafVectors
// vectors are summed directly and the leaves pairwise (Cascade); blocks are combined pairwise too, so each
// element goes through O(log n) roundings of like-sized partials (a running sum would take O(n)). The sum of
// the constant 0.1 over 2^26 elements is then exact to fp32 rounding.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "kale_fast/log_sum_exp_state.h"
#include "vec_math.h"

namespace kale_fast {

constexpr int64_t kBlock = 2048;      // elements per block: 8-16 KiB stay in L1 between the max and the exp pass
constexpr int64_t kLeafVectors = 8;   // vectors summed directly before the pairwise tree (64 fp32 elements)
constexpr int64_t kPrefetchAhead = kBlock;  // elements ahead that the exp pass asks the cache for (ReadAhead)

// Pairwise combination of values pushed one at a time: a binary counter whose level l holds the combination of
// 2^l pushed values, so each value goes through at most log2(count) + 1 combinations. T: a vector, a scalar sum
// or a LogSumExpState; Combine(earlier, later) -> T.
template <typename T>
struct Cascade {
  T level[64];
  int64_t count = 0;

  template <typename Combine>
  void push(T value, Combine combine) {
    int l = 0;
    for (int64_t c = count; c & 1; c >>= 1, ++l) value = combine(level[l], value);
    level[l] = value;
    ++count;
  }
  // The combination of everything pushed (lower levels hold later values), `empty` if nothing was.
  template <typename Combine>
  T total(T empty, Combine combine) const {
    T result = empty;
    bool any = false;
    for (int l = 0; l < 64; ++l) {
      if (!((count >> l) & 1)) continue;
      result = any ? combine(level[l], result) : level[l];
      any = true;
    }
    return result;
  }
};

// Asks the cache for two streams' elements kPrefetchAhead past an exp pass's position, one line per vector as the
// pass goes, so that the next block's max and sum passes read from L1 and their memory traffic overlaps this
// block's exp arithmetic (kale_loss forward + backward, 2^20-2^24 fp32: 0.83-0.88x the time with a burst of the
// next block's prefetches after the max pass). Clamped with a conditional: with std::min, GCC 12 emitted no
// prefetch here at all.
// Positions are clamped to each stream's last element: no address outside the streams.
template <typename scalar_t>
struct ReadAhead {
  const scalar_t* first;  // the block's start in the first stream
  int64_t first_left;     // elements from there to the stream's end (<= 0 where the stream ends before the block)
  const scalar_t* second;
  int64_t second_left;

  // for the block starting at element `start` of streams a (a_n >= 1 elements) and b (b_n >= 1)
  static ReadAhead of(const scalar_t* a, int64_t a_n, const scalar_t* b, int64_t b_n, int64_t start) {
    return {a + start, a_n - start, b + start, b_n - start};
  }
  void operator()(int64_t at) const {
    const int64_t ahead = at + kPrefetchAhead;
    __builtin_prefetch(first + (ahead < first_left ? ahead : first_left - 1));
    __builtin_prefetch(second + (ahead < second_left ? ahead : second_left - 1));
  }
};

template <typename acc_t, typename V>
inline acc_t horizontal_max(V v) {
  acc_t m = v[0];
  for (int64_t j = 1; j < Simd<acc_t>::kWidth; ++j) m = v[j] > m ? v[j] : m;
  return m;
}

// Pairwise sum of a vector's lanes.
template <typename acc_t, typename V>
inline acc_t horizontal_sum(V v) {
  for (int64_t w = Simd<acc_t>::kWidth / 2; w > 0; w /= 2)
    for (int64_t j = 0; j < w; ++j) v[j] += v[j + w];
  return v[0];
}

template <typename V>
inline V add(V a, V b) {
  return a + b;
}

// Pairwise sum of f(V load at x + i, i) over the whole vectors of x[0:n), and the count of elements they cover.
// f maps a loaded acc_t vector and its offset i to the vector of terms (exp(x - m), scale * x, ...).
template <typename scalar_t, typename acc_t, typename F>
inline acc_t pairwise_vector_sum(const scalar_t* x, int64_t n, F f, int64_t& covered) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  Cascade<V> leaves;
  int64_t i = 0;
  for (; i + kLeafVectors * W <= n; i += kLeafVectors * W) {
    V a = f(load_vec<acc_t>(x + i), i), b = f(load_vec<acc_t>(x + i + W), i + W);
    for (int64_t j = 2; j < kLeafVectors; j += 2) {
      a += f(load_vec<acc_t>(x + i + j * W), i + j * W);
      b += f(load_vec<acc_t>(x + i + (j + 1) * W), i + (j + 1) * W);
    }
    leaves.push(a + b, add<V>);
  }
  if (i + W <= n) {
    V a = f(load_vec<acc_t>(x + i), i);
    for (i += W; i + W <= n; i += W) a += f(load_vec<acc_t>(x + i), i);
    leaves.push(a, add<V>);
  }
  covered = i;
  return horizontal_sum<acc_t>(leaves.total(splat<V>(acc_t(0)), add<V>));
}

// sum_i scale * x[i] over one block (pairwise); scale is a power of two (exact) or 1.
template <typename scalar_t, typename acc_t>
inline acc_t block_sum(const scalar_t* x, int64_t n, acc_t scale) {
  using V = typename Simd<acc_t>::Vec;
  const V scale_v = splat<V>(scale);
  int64_t i = 0;
  acc_t s = pairwise_vector_sum<scalar_t, acc_t>(x, n, [&](V v, int64_t) { return v * scale_v; }, i);
  acc_t tail = 0;
  for (; i < n; ++i) tail += scale * static_cast<acc_t>(x[i]);
  return s + tail;
}

// max_i (sign * x[i]) over one block; NaN elements are skipped (the exp pass turns them into a NaN sum). With
// lowest: also min_i (sign * x[i]) into *lowest, in the same pass.
template <typename scalar_t, typename acc_t>
inline acc_t block_max(const scalar_t* x, int64_t n, acc_t sign, acc_t* lowest = nullptr) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  V highs = splat<V>(-kInf), lows = splat<V>(-kInf);  // lows: the max of -v
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = sign * load_vec<acc_t>(x + i);
    highs = max_or_second(v, highs);
    if (lowest != nullptr) lows = max_or_second(V(-v), lows);
  }
  acc_t m = horizontal_max<acc_t>(highs), low = -horizontal_max<acc_t>(lows);
  for (; i < n; ++i) {
    const acc_t v = sign * static_cast<acc_t>(x[i]);
    m = v > m ? v : m;
    low = v < low ? v : low;
  }
  if (lowest != nullptr) *lowest = low;
  return m;
}

// (max, sum exp(t - max)) of t_i = sign * x[i] - offset over one block: the max pass, then the exp pass from L1,
// which calls ahead(i) at each vector's offset i (ReadAhead: the next block, so that its passes do not wait on
// memory). offset is A in the KALE objective with A (t = -e_gen - A, the exponent of its gradient) and 0 elsewhere.
// zero_ref_max (the KALE forward; -inf: off): where every t_i lies in [kLeanSumLo, zero_ref_max], the state is
// (0, sum exp(t)), the terms' exponents t_i rounded once, as the gradient's own are (the state's "max" is then a
// reference at most the max, which every use of the state allows; zero_ref_max_for keeps the sums finite).
// kKeep (zero_ref, scalar_t = acc_t): the terms are also written to kept[i], and *kept_ref is what they are
// relative to (the state's max), or NaN where a term is not exact (below the smallest normal number, which
// exp_lean<acc_t, false> does not round) or the max is not finite: the backward scales a block's kept terms into its
// gradient, or recomputes the block.
template <typename acc_t>  // for sums of n terms: n * exp(zero_ref_max) at most a 1/e of the largest finite value
inline acc_t zero_ref_max_for(int64_t n) {
  const double most = std::log(double(std::numeric_limits<acc_t>::max()) / double(std::max<int64_t>(n, 1))) - 1;
  return static_cast<acc_t>(std::min(most, double(kLeanExpMax<acc_t>)));
}

template <bool kKeep = false, typename scalar_t, typename acc_t, typename Ahead>
inline LogSumExpState<acc_t> block_log_sum_exp(const scalar_t* x, int64_t n, acc_t sign, acc_t offset, Ahead ahead,
                                               acc_t zero_ref_max = -std::numeric_limits<acc_t>::infinity(),
                                               scalar_t* kept = nullptr, acc_t* kept_ref = nullptr) {
  using V = typename Simd<acc_t>::Vec;
  const bool bounded = kKeep || zero_ref_max >= 0;  // the terms' lowest exponent is needed too
  acc_t lowest;
  acc_t m = block_max(x, n, sign, bounded ? &lowest : nullptr) - offset;  // monotone rounding: the max of the t_i
  if (!std::isfinite(m)) {
    // all elements -inf or NaN (m = -inf), or some +inf (m = +inf): the terms are 1 where t == m (equal
    // infinities rescale by 1), 0 below, NaN for NaN elements
    acc_t s = 0;
    for (int64_t i = 0; i < n; ++i) s += rescale_scalar(acc_t(sign * static_cast<acc_t>(x[i]) - offset), m);
    if constexpr (kKeep) *kept_ref = std::numeric_limits<acc_t>::quiet_NaN();
    return {m, s};
  }
  if (bounded) {
    lowest -= offset;
    if (m <= zero_ref_max && lowest >= kLeanSumLo<acc_t>) m = 0;
    if constexpr (kKeep) *kept_ref = lowest - m >= kLeanSumLo<acc_t> ? m : std::numeric_limits<acc_t>::quiet_NaN();
  }
  // (sign * x - offset) - m: t rounded first, as the gradient's exponent is
  const V sign_v = splat<V>(sign), offset_v = splat<V>(offset), m_v = splat<V>(m);
  int64_t i = 0;
  acc_t s = pairwise_vector_sum<scalar_t, acc_t>(
      x, n,
      [&](V v, int64_t at) {
        ahead(at);
        const V term = exp_lean<acc_t, false>(V((sign_v * v - offset_v) - m_v));
        if constexpr (kKeep) store_vec<acc_t>(kept + at, term);
        return term;
      },
      i);
  for (; i < n; ++i) {
    const acc_t term = exp_lean<acc_t, false>(acc_t((sign * static_cast<acc_t>(x[i]) - offset) - m));
    if constexpr (kKeep) kept[i] = term;
    s += term;
  }
  return {m, s};
}

// out[i] = scale * exp((sign * x[i] - shift) - post_shift), the gradient of every log-sum-exp form. kLean: the
// caller guarantees exponents <= kLeanExpMax (exp_lean), else exp_vec handles overflow and infinities.
template <bool kLean, typename scalar_t, typename acc_t>
void write_scaled_exp(const scalar_t* x, scalar_t* out, int64_t n, acc_t sign, acc_t shift, acc_t post_shift,
                      acc_t scale) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  auto write = [&](auto term) {  // term: the exponent's vector or scalar -> out's
    int64_t i = 0;
    for (; i + W <= n; i += W)
      store_vec<acc_t>(out + i, V(term(V((sign * load_vec<acc_t>(x + i) - shift) - post_shift))));
    for (; i < n; ++i)
      out[i] = static_cast<scalar_t>(term(acc_t((sign * static_cast<acc_t>(x[i]) - shift) - post_shift)));
  };
  if constexpr (!kLean) {
    write([&](auto arg) { return scale * exp_vec<acc_t>(arg); });
  } else {  // scale enters exp_lean's last product where scale * 2^-kLeanScaleBits is exact
    const acc_t folded = scale * kLeanUnscale<acc_t>;
    if (folded == 0 || !(std::abs(folded) < std::numeric_limits<acc_t>::min()))
      write([&](auto arg) { return exp_lean<acc_t>(arg, folded); });
    else
      write([&](auto arg) { return scale * exp_lean<acc_t>(arg); });
  }
}

// out[i] = factor * x[i] over x[0:n) (kept exp terms of a block into its gradient: one rounding, no exp).
template <typename scalar_t, typename acc_t>
void write_scaled(const scalar_t* x, scalar_t* out, int64_t n, acc_t factor) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  const V factor_v = splat<V>(factor);
  int64_t i = 0;
  for (; i + W <= n; i += W) store_vec<acc_t>(out + i, V(load_vec<acc_t>(x + i) * factor_v));
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(static_cast<acc_t>(x[i]) * factor);
}

}  // namespace kale_fast
