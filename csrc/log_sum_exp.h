// Streaming log-sum-exp and scaled-exp loops of the CPU kernels, over explicit SIMD vectors (vec_math.h) with
// a scalar tail; their running state (log_sum_exp_state.h) is shared with the CUDA kernels. Inputs of any floating dtype are widened to acc_t (float or double).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "log_sum_exp_state.h"
#include "vec_math.h"

namespace kale_fast {

constexpr int64_t kBlock = 2048;  // elements per block: 8-16 KiB stay in L1 between the two reads

template <typename acc_t, typename V>
inline acc_t horizontal_max(V v) {
  acc_t m = v[0];
  for (int64_t j = 1; j < Simd<acc_t>::kWidth; ++j) m = v[j] > m ? v[j] : m;
  return m;
}

template <typename acc_t, typename V>
inline acc_t horizontal_sum(V v) {
  acc_t s = 0;
  for (int64_t j = 0; j < Simd<acc_t>::kWidth; ++j) s += v[j];
  return s;
}

// max_i sign * x[i] (NaN elements are skipped here; lane_sum_rescaled turns them into a NaN sum).
template <typename scalar_t, typename acc_t>
inline acc_t lane_max(const scalar_t* x, int64_t n, acc_t sign) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  V lanes = splat<V>(-std::numeric_limits<acc_t>::infinity());
  int64_t i = 0;
  for (; i + W <= n; i += W) {
    const V v = sign * load_vec<acc_t>(x + i);
    lanes = v > lanes ? v : lanes;
  }
  acc_t m = horizontal_max<acc_t>(lanes);
  for (; i < n; ++i) {
    const acc_t v = sign * static_cast<acc_t>(x[i]);
    m = v > m ? v : m;
  }
  return m;
}

// sum_i rescale(sign * x[i], m); NaN elements make the sum NaN.
template <typename scalar_t, typename acc_t>
inline acc_t lane_sum_rescaled(const scalar_t* x, int64_t n, acc_t sign, acc_t m) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  const V mv = splat<V>(m);
  V lanes = splat<V>(acc_t(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) lanes += rescale<acc_t>(V(sign * load_vec<acc_t>(x + i)), mv);
  acc_t s = horizontal_sum<acc_t>(lanes);
  for (; i < n; ++i) s += rescale<acc_t>(acc_t(sign * static_cast<acc_t>(x[i])), m);
  return s;
}

template <typename scalar_t, typename acc_t>
inline acc_t lane_sum(const scalar_t* x, int64_t n) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  V lanes = splat<V>(acc_t(0));
  int64_t i = 0;
  for (; i + W <= n; i += W) lanes += load_vec<acc_t>(x + i);
  acc_t s = horizontal_sum<acc_t>(lanes);
  for (; i < n; ++i) s += static_cast<acc_t>(x[i]);
  return s;
}

// Folds sign * x[0:n] into `state` one L1-sized block at a time: the block's max, then its rescaled sum
// (the second read hits L1, so memory is streamed once).
template <typename scalar_t, typename acc_t>
void accumulate_log_sum_exp(const scalar_t* x, int64_t n, acc_t sign, LogSumExpState<acc_t>& state) {
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t len = std::min(kBlock, n - start);
    const acc_t block_max = lane_max(x + start, len, sign);
    state.merge(block_max, lane_sum_rescaled(x + start, len, sign, block_max));
  }
}

// out[i] = scale * exp(sign * x[i] - shift), the gradient of every log-sum-exp form.
template <typename scalar_t, typename acc_t>
void write_scaled_exp(const scalar_t* x, scalar_t* out, int64_t n, acc_t sign, acc_t shift, acc_t scale) {
  using V = typename Simd<acc_t>::Vec;
  constexpr int64_t W = Simd<acc_t>::kWidth;
  int64_t i = 0;
  for (; i + W <= n; i += W)
    store_vec<acc_t>(out + i, V(scale * exp_vec<acc_t>(V(sign * load_vec<acc_t>(x + i) - shift))));
  for (; i < n; ++i) out[i] = static_cast<scalar_t>(scale * exp_vec<acc_t>(acc_t(sign * static_cast<acc_t>(x[i]) - shift)));
}

}  // namespace kale_fast
