// The running state of a streaming log-sum-exp, shared by the CPU kernels (csrc/log_sum_exp.h) and the
// CUDA kernels (kernels/log_sum_exp.cuh): compiled as host code by the C++ compiler and as host and
// device code by nvcc.
#pragma once

#include <cmath>

#if defined(__CUDACC__)
#define KALE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define KALE_HOST_DEVICE inline
#endif

namespace kale_fast {

// exp(a - m) for a <= m, defined as 1 when a == m so that equal infinities (all elements -inf, or the
// maximum itself +inf) rescale by 1 instead of exp(nan).
template <typename acc_t>
KALE_HOST_DEVICE acc_t rescale_scalar(acc_t a, acc_t m) {
  using std::exp;
  return a == m ? acc_t(1) : exp(a - m);
}

// Running (max, sum of exp(x - max)) of a log-sum-exp; lse = max + log(sum). acc_t is float or double.
template <typename acc_t>
struct LogSumExpState {
  acc_t max = -INFINITY;
  acc_t sum = 0;

  KALE_HOST_DEVICE void merge(acc_t other_max, acc_t other_sum) {
    const acc_t m = other_max > max ? other_max : max;
    sum = sum * rescale_scalar(max, m) + other_sum * rescale_scalar(other_max, m);
    max = m;
  }
  KALE_HOST_DEVICE void merge(const LogSumExpState& other) { merge(other.max, other.sum); }
  KALE_HOST_DEVICE acc_t value() const {
    using std::log;
    return max + log(sum);
  }
};

}  // namespace kale_fast
