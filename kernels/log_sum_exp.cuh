// Device side of the streaming log-sum-exp of the CUDA kernels: the per-element update and the warp and
// block merges of the state that include/kale_fast/log_sum_exp_state.h defines for host and device code alike.
#pragma once

#include <cmath>

#include "kale_fast/log_sum_exp_state.h"
#include "launch.cuh"

namespace kale_fast {

// Kahan: folds x into the sum `sum` whose rounding error so far is -comp (the true sum is about sum - comp), so
// that a thread's sum over any number of grid-stride steps keeps the dtype's rounding instead of growing with it.
template <typename acc_t>
__device__ __forceinline__ void compensated_add(acc_t& sum, acc_t& comp, acc_t x) {
  const acc_t y = x - comp;
  const acc_t t = sum + y;
  comp = (t - sum) - y;
  sum = t;
}

// A thread's running log-sum-exp: max, and the compensated sum of exp(x - max).
template <typename acc_t>
struct OnlineLogSumExp {
  LogSumExpState<acc_t> state;
  acc_t comp = 0;

  // Folds one element in with a single exp: exp(-|x - m|) is either the new term (x <= m) or the factor that
  // rescales the old sum (x > m; the new term is then 1). NaN x makes the sum NaN and never becomes the max;
  // equal infinities count 1 each.
  __device__ __forceinline__ void update(acc_t x) {
    const acc_t e = x == state.max ? acc_t(1) : exp(-fabs(x - state.max));
    if (x > state.max) {
      state.sum *= e;
      comp *= e;
      state.max = x;
      compensated_add(state.sum, comp, acc_t(1));
    } else {
      compensated_add(state.sum, comp, e);
    }
  }
  __device__ __forceinline__ LogSumExpState<acc_t> value() const { return {state.max, state.sum - comp}; }
};

template <typename acc_t>
__device__ __forceinline__ LogSumExpState<acc_t> warp_merge(LogSumExpState<acc_t> state) {
  for (int offset = 16; offset > 0; offset /= 2)
    state.merge(__shfl_down_sync(0xffffffff, state.max, offset), __shfl_down_sync(0xffffffff, state.sum, offset));
  return state;
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffff, v, offset);
  return v;
}

// Block-wide merge of (state, two extra sums); the result is valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ void block_merge(LogSumExpState<acc_t>& state, acc_t& extra, acc_t& extra2) {
  __shared__ acc_t shared_max[kWarps], shared_sum[kWarps], shared_extra[kWarps], shared_extra2[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  state = warp_merge(state);
  extra = warp_sum(extra);
  extra2 = warp_sum(extra2);
  if (lane == 0) {
    shared_max[warp] = state.max;
    shared_sum[warp] = state.sum;
    shared_extra[warp] = extra;
    shared_extra2[warp] = extra2;
  }
  __syncthreads();
  if (warp == 0) {
    const bool valid = lane < kWarps;
    state = {valid ? shared_max[lane] : -INFINITY, valid ? shared_sum[lane] : acc_t(0)};
    extra = valid ? shared_extra[lane] : acc_t(0);
    extra2 = valid ? shared_extra2[lane] : acc_t(0);
    state = warp_merge(state);
    extra = warp_sum(extra);
    extra2 = warp_sum(extra2);
  }
}

}  // namespace kale_fast
