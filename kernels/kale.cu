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

#include "../csrc/op_checks.h"

#include "log_sum_exp.cuh"

namespace kale_fast {
namespace {

constexpr int64_t kSingleBlockMax = 1 << 16;  // up to here one block reduces everything and writes the loss

template <typename acc_t>
__device__ void kale_loss_finish(LogSumExpState<acc_t> state, acc_t data_sum, const acc_t* log_partition,
                            acc_t* loss, acc_t* lse, int64_t n_data, acc_t log_n_gen) {
  const acc_t lse_value = state.value();
  acc_t loss_value = data_sum / static_cast<acc_t>(n_data);
  if (log_partition != nullptr) {
    const acc_t a = *log_partition;
    loss_value += a + exp(lse_value - a - log_n_gen) - acc_t(1);
  } else {
    loss_value += lse_value - log_n_gen;
  }
  *loss = loss_value;
  *lse = lse_value;
}

// Each block reduces a grid-stride slice of e_gen (log-sum-exp of -e_gen) and of e_data (sum); a single
// block finishes the loss itself, several write (max, sum, data sum) partials for kale_loss_combine_kernel.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) kale_loss_forward_kernel(
    const scalar_t* __restrict__ e_data, const scalar_t* __restrict__ e_gen, const acc_t* log_partition,
    acc_t* __restrict__ partials, acc_t* loss, acc_t* lse, int64_t n_data, int64_t n_gen, acc_t log_n_gen) {
  LogSumExpState<acc_t> state;
  acc_t data_sum = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n_gen; i += stride)
    online_update(state, -static_cast<acc_t>(e_gen[i]));
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n_data; i += stride)
    data_sum += static_cast<acc_t>(e_data[i]);
  block_merge(state, data_sum);
  if (threadIdx.x != 0) return;
  if (gridDim.x == 1) {
    kale_loss_finish(state, data_sum, log_partition, loss, lse, n_data, log_n_gen);
  } else {
    partials[blockIdx.x] = state.max;
    partials[gridDim.x + blockIdx.x] = state.sum;
    partials[2 * gridDim.x + blockIdx.x] = data_sum;
  }
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads) kale_loss_combine_kernel(const acc_t* __restrict__ partials, int n_blocks,
                                                                const acc_t* log_partition, acc_t* loss, acc_t* lse,
                                                                int64_t n_data, acc_t log_n_gen) {
  LogSumExpState<acc_t> state;
  acc_t data_sum = 0;
  for (int b = threadIdx.x; b < n_blocks; b += kThreads) {
    state.merge(partials[b], partials[n_blocks + b]);
    data_sum += partials[2 * n_blocks + b];
  }
  block_merge(state, data_sum);
  if (threadIdx.x == 0) kale_loss_finish(state, data_sum, log_partition, loss, lse, n_data, log_n_gen);
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
  auto lse = at::empty({}, acc_options);
  const int64_t n_data = e_data.numel(), n_gen = e_gen.numel();
  const int blocks = reduce_blocks(std::max(n_data, n_gen));
  auto partials = at::empty({blocks > 1 ? 3 * blocks : 0}, acc_options);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* a = log_partition.has_value() ? log_partition->const_data_ptr<acc_t>() : nullptr;
    const acc_t log_n_gen = std::log(static_cast<acc_t>(n_gen));
    kale_loss_forward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        e_data.const_data_ptr<scalar_t>(), e_gen.const_data_ptr<scalar_t>(), a, partials.mutable_data_ptr<acc_t>(),
        loss.mutable_data_ptr<acc_t>(), lse.mutable_data_ptr<acc_t>(), n_data, n_gen, log_n_gen);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (blocks > 1) {
      kale_loss_combine_kernel<acc_t><<<1, kThreads, 0, stream>>>(partials.const_data_ptr<acc_t>(), blocks, a,
                                                              loss.mutable_data_ptr<acc_t>(),
                                                              lse.mutable_data_ptr<acc_t>(), n_data, log_n_gen);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {loss, lse};
}

// One launch writes both gradients (index i serves e_gen and e_data alike) and, in thread 0, d A.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) kale_loss_backward_kernel(
    const scalar_t* grad, const scalar_t* __restrict__ e_gen, const acc_t* log_partition, const acc_t* lse,
    scalar_t* __restrict__ grad_data, scalar_t* __restrict__ grad_gen, acc_t* grad_a, int64_t n_data, int64_t n_gen,
    acc_t log_n_gen) {
  const acc_t g = static_cast<acc_t>(*grad);
  const acc_t lse_value = *lse;
  const acc_t shift = log_partition != nullptr ? *log_partition + log_n_gen : lse_value;
  const scalar_t data_grad = static_cast<scalar_t>(g / static_cast<acc_t>(n_data));
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < max(n_gen, n_data); i += stride) {
    if (i < n_gen) grad_gen[i] = static_cast<scalar_t>(-g * exp(-static_cast<acc_t>(e_gen[i]) - shift));
    if (i < n_data) grad_data[i] = data_grad;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *grad_a = g * (acc_t(1) - exp(lse_value - shift));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kale_loss_backward(const at::Tensor& grad, const at::Tensor& e_data,
                                                             const at::Tensor& e_gen,
                                                             const std::optional<at::Tensor>& log_partition,
                                                             const at::Tensor& lse) {
  check_flat(e_data, c10::kCUDA, "e_data");
  check_flat(e_gen, c10::kCUDA, "e_gen");
  TORCH_CHECK(grad.scalar_type() == e_gen.scalar_type(), "grad must have the energies' dtype");
  const c10::cuda::CUDAGuard guard(e_gen.device());
  auto grad_data = at::empty_like(e_data);
  auto grad_gen = at::empty_like(e_gen);
  auto grad_a = at::empty({}, lse.options());
  const int64_t n_data = e_data.numel(), n_gen = e_gen.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, e_gen.scalar_type(), "kale_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    kale_loss_backward_kernel<scalar_t, acc_t><<<grid_stride_blocks(std::max(n_data, n_gen)), kThreads, 0,
                                            c10::cuda::getCurrentCUDAStream()>>>(
        grad.const_data_ptr<scalar_t>(), e_gen.const_data_ptr<scalar_t>(),
        log_partition.has_value() ? log_partition->const_data_ptr<acc_t>() : nullptr, lse.const_data_ptr<acc_t>(),
        grad_data.mutable_data_ptr<scalar_t>(), grad_gen.mutable_data_ptr<scalar_t>(), grad_a.mutable_data_ptr<acc_t>(),
        n_data, n_gen, std::log(static_cast<acc_t>(n_gen)));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_data, grad_gen, grad_a};
}

// One block per row.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) log_mean_exp_forward_kernel(const scalar_t* __restrict__ x,
                                                                        acc_t* __restrict__ out, int64_t n_cols,
                                                                        acc_t log_n_cols) {
  const scalar_t* row = x + static_cast<int64_t>(blockIdx.x) * n_cols;
  LogSumExpState<acc_t> state;
  for (int64_t i = threadIdx.x; i < n_cols; i += kThreads) online_update(state, static_cast<acc_t>(row[i]));
  acc_t unused = 0;
  block_merge(state, unused);
  if (threadIdx.x == 0) out[blockIdx.x] = state.max + log(state.sum) - log_n_cols;
}

at::Tensor log_mean_exp_forward(const at::Tensor& x) {
  check_rows(x, c10::kCUDA);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty({x.size(0)}, x.options().dtype(acc_type_of(x.scalar_type())));
  if (x.size(0) == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "log_mean_exp_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    log_mean_exp_forward_kernel<scalar_t, acc_t><<<x.size(0), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<acc_t>(), x.size(1), std::log(static_cast<acc_t>(x.size(1))));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) log_mean_exp_backward_kernel(
    const acc_t* __restrict__ grad, const scalar_t* __restrict__ x, const acc_t* __restrict__ out,
    scalar_t* __restrict__ grad_x, int64_t n_rows, int64_t n_cols, acc_t log_n_cols) {
  const int64_t total = n_rows * n_cols, stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / n_cols;
    grad_x[i] = static_cast<scalar_t>(grad[r] * exp(static_cast<acc_t>(x[i]) - out[r] - log_n_cols));
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
        grad_x.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1), std::log(static_cast<acc_t>(x.size(1))));
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
