// CUDA kernels of the KALE objective and of log-mean-exp: the same functions and contracts as
// csrc/kale.cpp (CPU) and kale_fast/triton_kernels/kale.py, registered for the CUDA key of torch.ops.kale_fast.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "kale_fast/op_checks.h"

#include "log_sum_exp.cuh"

namespace kale_fast {
namespace {

constexpr int64_t kSingleBlockMax = 1 << 16;  // up to here one block reduces everything and writes the loss
constexpr double kTwoTo64 = 18446744073709551616.0;  // e_data * 2^-64 (exact) sums finitely at any count

// mean of exp(t) over n terms from their (max, sum) state, in double: (sum / n) exp(max), log n moved into the
// exponent only where exp(max) alone would overflow.
__device__ __forceinline__ double mean_exp(double max, double sum, int64_t n) {
  const double ratio = sum / static_cast<double>(n);
  return max <= 700.0 ? ratio * exp(max) : exp(max + log(ratio));
}

// The loss from the reduced sums, finished in double (no rounding of its own before the last), and the state.
template <typename acc_t>
__device__ void kale_loss_finish(LogSumExpState<acc_t> gen, acc_t data_sum, acc_t data_scaled,
                                 const acc_t* log_partition, acc_t* loss, acc_t* state, int64_t n_data,
                                 int64_t n_gen) {
  const double plain = static_cast<double>(data_sum);
  const double mean = isfinite(plain) ? plain / static_cast<double>(n_data)
                                      : static_cast<double>(data_scaled) / static_cast<double>(n_data) * kTwoTo64;
  double loss_value;
  if (log_partition != nullptr) {
    loss_value = mean + static_cast<double>(*log_partition) + mean_exp(gen.max, gen.sum, n_gen) - 1.0;
  } else {
    const double log_mean = log(static_cast<double>(gen.sum)) - log(static_cast<double>(n_gen));
    loss_value = mean + static_cast<double>(gen.max) + log_mean;
  }
  *loss = static_cast<acc_t>(loss_value);
  state[0] = gen.max;
  state[1] = gen.sum;
}

// Each block reduces a grid-stride slice of e_gen (log-sum-exp of t = -e_gen - A, or -e_gen without A) and of
// e_data (compensated sum, and the sum of e_data * 2^-64 where that one overflows); a single block finishes the
// loss itself, several write (max, sum, data sum, scaled data sum) partials for kale_loss_combine_kernel.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) kale_loss_forward_kernel(
    const scalar_t* __restrict__ e_data, const scalar_t* __restrict__ e_gen, const acc_t* log_partition,
    acc_t* __restrict__ partials, acc_t* loss, acc_t* state, int64_t n_data, int64_t n_gen) {
  OnlineLogSumExp<acc_t> gen;
  const acc_t a = log_partition != nullptr ? *log_partition : acc_t(0);
  acc_t data_sum = 0, data_comp = 0, data_scaled = 0;
  const acc_t scale = static_cast<acc_t>(1.0 / kTwoTo64);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n_gen; i += stride)
    gen.update(-static_cast<acc_t>(e_gen[i]) - a);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n_data; i += stride) {
    const acc_t x = static_cast<acc_t>(e_data[i]);
    compensated_add(data_sum, data_comp, x);
    data_scaled += x * scale;
  }
  LogSumExpState<acc_t> merged = gen.value();
  data_sum -= data_comp;
  block_merge(merged, data_sum, data_scaled);
  if (threadIdx.x != 0) return;
  if (gridDim.x == 1) {
    kale_loss_finish(merged, data_sum, data_scaled, log_partition, loss, state, n_data, n_gen);
  } else {
    partials[blockIdx.x] = merged.max;
    partials[gridDim.x + blockIdx.x] = merged.sum;
    partials[2 * gridDim.x + blockIdx.x] = data_sum;
    partials[3 * gridDim.x + blockIdx.x] = data_scaled;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) kale_loss_combine_kernel(const acc_t* __restrict__ partials, int n_blocks,
                                                                const acc_t* log_partition, acc_t* loss, acc_t* state,
                                                                int64_t n_data, int64_t n_gen) {
  LogSumExpState<acc_t> gen;
  acc_t data_sum = 0, data_scaled = 0;
  for (int b = threadIdx.x; b < n_blocks; b += kThreads) {
    gen.merge(partials[b], partials[n_blocks + b]);
    data_sum += partials[2 * n_blocks + b];
    data_scaled += partials[3 * n_blocks + b];
  }
  block_merge(gen, data_sum, data_scaled);
  if (threadIdx.x == 0) kale_loss_finish(gen, data_sum, data_scaled, log_partition, loss, state, n_data, n_gen);
}

int reduce_blocks(int64_t n) {
  if (n <= kSingleBlockMax) return 1;
  return static_cast<int>(std::min<int64_t>(4 * multiprocessor_count(), (n + kThreads * 8 - 1) / (kThreads * 8)));
}

std::tuple<at::Tensor, at::Tensor> kale_loss_forward(const at::Tensor& e_data, const at::Tensor& e_gen,
                                                const std::optional<at::Tensor>& log_partition) {
  check_flat(e_data, c10::kCUDA, "e_data");
  check_flat(e_gen, c10::kCUDA, "e_gen");
  const c10::cuda::CUDAGuard guard(e_gen.device());
  const auto acc_options = e_gen.options().dtype(acc_type_of(e_gen.scalar_type()));
  auto loss = at::empty({}, acc_options);
  auto state = at::empty({2}, acc_options);
  const int64_t n_data = e_data.numel(), n_gen = e_gen.numel();
  const int blocks = reduce_blocks(std::max(n_data, n_gen));
  auto partials = at::empty({blocks > 1 ? 4 * blocks : 0}, acc_options);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* a = log_partition.has_value() ? log_partition->const_data_ptr<acc_t>() : nullptr;
    kale_loss_forward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        e_data.const_data_ptr<scalar_t>(), e_gen.const_data_ptr<scalar_t>(), a, partials.mutable_data_ptr<acc_t>(),
        loss.mutable_data_ptr<acc_t>(), state.mutable_data_ptr<acc_t>(), n_data, n_gen);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (blocks > 1) {
      kale_loss_combine_kernel<acc_t><<<1, kThreads, 0, stream>>>(partials.const_data_ptr<acc_t>(), blocks, a,
                                                              loss.mutable_data_ptr<acc_t>(),
                                                              state.mutable_data_ptr<acc_t>(), n_data, n_gen);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {loss, state};
}

// d e_gen_i = scale * exp((-e_gen_i - shift) - post_shift): -g/sum * exp(-e_gen_i - max) without A, -g/M *
// exp(-e_gen_i - A) with A (log M moves into the exponent only where exp alone would overflow): 1/M and 1/sum stay
// factors, which a large |A| cannot round away. Thread 0 writes the constant d e_data and d A.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) kale_loss_backward_kernel(
    const acc_t* grad, const scalar_t* __restrict__ e_gen, const acc_t* log_partition, const acc_t* state,
    scalar_t* grad_data, scalar_t* __restrict__ grad_gen, acc_t* grad_a, int64_t n_data, int64_t n_gen) {
  const double g = static_cast<double>(*grad), max = static_cast<double>(state[0]), sum = static_cast<double>(state[1]);
  acc_t shift = state[0], post_shift = 0, scale = static_cast<acc_t>(-g / sum);
  if (log_partition != nullptr) {
    const bool overflows = max > 80.0;
    shift = *log_partition;
    post_shift = overflows ? static_cast<acc_t>(log(static_cast<double>(n_gen))) : acc_t(0);
    scale = static_cast<acc_t>(overflows ? -g : -g / static_cast<double>(n_gen));
  }
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n_gen; i += stride)
    grad_gen[i] = static_cast<scalar_t>(scale * exp((-static_cast<acc_t>(e_gen[i]) - shift) - post_shift));
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    *grad_data = static_cast<scalar_t>(static_cast<acc_t>(g / static_cast<double>(n_data)));
    *grad_a = log_partition != nullptr ? static_cast<acc_t>(g * (1.0 - mean_exp(max, sum, n_gen))) : acc_t(0);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kale_loss_backward(const at::Tensor& grad, const at::Tensor& e_data,
                                                             const at::Tensor& e_gen,
                                                             const std::optional<at::Tensor>& log_partition,
                                                             const at::Tensor& state) {
  check_flat(e_data, c10::kCUDA, "e_data");
  check_flat(e_gen, c10::kCUDA, "e_gen");
  check_kale_state(grad, state, e_gen);
  const c10::cuda::CUDAGuard guard(e_gen.device());
  auto grad_data = at::empty({}, e_data.options());
  auto grad_gen = at::empty_like(e_gen);
  auto grad_a = at::empty({}, state.options());
  const int64_t n_data = e_data.numel(), n_gen = e_gen.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kale_loss_backward_kernel<scalar_t, acc_t><<<grid_stride_blocks(n_gen), kThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<acc_t>(), e_gen.const_data_ptr<scalar_t>(),
        log_partition.has_value() ? log_partition->const_data_ptr<acc_t>() : nullptr, state.const_data_ptr<acc_t>(),
        grad_data.mutable_data_ptr<scalar_t>(), grad_gen.mutable_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<acc_t>(),
        n_data, n_gen);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_data.expand({n_data}), grad_gen, grad_a};
}

// One block per row.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) log_mean_exp_forward_kernel(const scalar_t* __restrict__ x,
                                                                        acc_t* __restrict__ out, int64_t n_cols) {
  const scalar_t* row = x + static_cast<int64_t>(blockIdx.x) * n_cols;
  OnlineLogSumExp<acc_t> online;
  for (int64_t i = threadIdx.x; i < n_cols; i += kThreads) online.update(static_cast<acc_t>(row[i]));
  LogSumExpState<acc_t> state = online.value();
  acc_t unused = 0, unused2 = 0;
  block_merge(state, unused, unused2);
  if (threadIdx.x == 0)  // max + log(sum) - log K, finished in double
    out[blockIdx.x] = static_cast<acc_t>(static_cast<double>(state.max) +
                                         (log(static_cast<double>(state.sum)) - log(static_cast<double>(n_cols))));
}

at::Tensor log_mean_exp_forward(const at::Tensor& x) {
  check_rows(x, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({x.size(0)}, x.options().dtype(acc_type_of(x.scalar_type())));
  if (x.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_mean_exp_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    log_mean_exp_forward_kernel<scalar_t, acc_t><<<x.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<acc_t>(), x.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) log_mean_exp_backward_kernel(
    const acc_t* __restrict__ grad, const scalar_t* __restrict__ x, const acc_t* __restrict__ out,
    scalar_t* __restrict__ grad_x, int64_t n_rows, int64_t n_cols) {
  // grad[r] / K * exp(x - out[r]): 1/K a factor, not log K in the exponent, where a large |out| would round it away
  const int64_t total = n_rows * n_cols, stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / n_cols;
    grad_x[i] = static_cast<scalar_t>(grad[r] / static_cast<acc_t>(n_cols) * exp(static_cast<acc_t>(x[i]) - out[r]));
  }
}

at::Tensor log_mean_exp_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& out) {
  check_rows(x, c10::kCUDA);
  check_row_values(grad, out, x);
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty_like(x);
  if (x.numel() == 0) return grad_x;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_mean_exp_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    log_mean_exp_backward_kernel<scalar_t, acc_t><<<grid_stride_blocks(x.numel()), kThreads, 0,
                                                    c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(), out.const_data_ptr<acc_t>(),
        grad_x.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(kale_fast, CUDA, m) {
  m.impl("kale_loss_forward", &kale_loss_forward);
  m.impl("kale_loss_backward", &kale_loss_backward);
  m.impl("log_mean_exp_forward", &log_mean_exp_forward);
  m.impl("log_mean_exp_backward", &log_mean_exp_backward);
}

}  // namespace kale_fast
