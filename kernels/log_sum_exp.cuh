// Device side of the streaming log-sum-exp of the CUDA kernels: the per-element update and the warp and
// block merges of the state that csrc/log_sum_exp_state.h defines for host and device code alike.
#pragma once

#include <cmath>

#include "../csrc/log_sum_exp_state.h"
#include "launch.cuh"

namespace kale_fast {

// Folds one element in with a single exp: exp(-|x - m|) is either the new term or the factor that rescales
// the old sum. NaN x makes the sum NaN and never becomes the max.
template <typename acc_t>
__device__ __forceinline__ void online_update(LogSumExpState<acc_t>& state, acc_t x) {
  const acc_t e = x == state.max ? acc_t(1) : exp(-fabs(x - state.max));
  if (x > state.max) {
    state.sum = state.sum * e + acc_t(1);
    state.max = x;
  } else {
    state.sum += e;
  }
}

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

// Block-wide merge of (state, extra sum); the result is valid in thread 0.
template <typename acc_t>
__device__ __forceinline__ void block_merge(LogSumExpState<acc_t>& state, acc_t& extra) {
  __shared__ acc_t shared_max[kWarps], shared_sum[kWarps], shared_extra[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  state = warp_merge(state);
  extra = warp_sum(extra);
  if (lane == 0) {
    shared_max[warp] = state.max;
    shared_sum[warp] = state.sum;
    shared_extra[warp] = extra;
  }
  __syncthreads();
  if (warp == 0) {
    const bool valid = lane < kWarps;
    state = {valid ? shared_max[lane] : -INFINITY, valid ? shared_sum[lane] : acc_t(0)};
    extra = valid ? shared_extra[lane] : acc_t(0);
    state = warp_merge(state);
    extra = warp_sum(extra);
  }
}

}  // namespace kale_fast
