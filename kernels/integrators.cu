// CUDA kernels of the two leapfrog updates of HMC, registered for the CUDA key of torch.ops.kale_fast
// (kale_fast/ops/integrators.py wraps them; the other integrator updates are registered for the CUDA key as
// Triton kernels by kale_fast/ops/_backend.py). Same contracts as csrc/integrators.cpp:
// states (B, L) contiguous fp32/fp64, per-chain values (B,), updates in place.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "kale_fast/op_checks.h"
#include "launch.cuh"

namespace kale_fast {
namespace {

constexpr int kRowsPerBlock = kWarps;  // one warp per chain in hmc_trajectory_end

constexpr c10::DeviceType kDevice = c10::kCUDA;  // of every chain state these ops take

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) leapfrog_kick_drift_kernel(
    scalar_t* __restrict__ z, scalar_t* __restrict__ p, const scalar_t* __restrict__ grad,
    const scalar_t* __restrict__ step_size, scalar_t kick_fraction, int64_t n_cols, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    const scalar_t h = step_size[i / n_cols];
    const scalar_t momentum = p[i] - kick_fraction * h * grad[i];
    p[i] = momentum;
    z[i] += h * momentum;
  }
}

void leapfrog_kick_drift(const at::Tensor& z, const at::Tensor& p, const at::Tensor& grad, const at::Tensor& step_size,
                         double kick_fraction) {
  check_leapfrog_kick_drift_args(z, p, grad, step_size, kDevice);
  if (z.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(z.device());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "leapfrog_kick_drift_cuda", [&] {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    leapfrog_kick_drift_kernel<scalar_t><<<grid_stride_blocks(z.numel()), kThreads, 0, stream>>>(
        z.mutable_data_ptr<scalar_t>(), p.mutable_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
        step_size.const_data_ptr<scalar_t>(), static_cast<scalar_t>(kick_fraction), z.size(1), z.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// One warp per chain: closing half kick and kinetic energy (warp sum), Metropolis decision in lane 0,
// then the whole warp restores a rejected chain's row.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) hmc_trajectory_end_kernel(
    scalar_t* __restrict__ z, const scalar_t* __restrict__ p, scalar_t* __restrict__ grad,
    scalar_t* __restrict__ potential,
    const scalar_t* __restrict__ z0, const scalar_t* __restrict__ potential0, const scalar_t* __restrict__ grad0,
    const scalar_t* __restrict__ kinetic0, const scalar_t* __restrict__ step_size,
    const scalar_t* __restrict__ log_uniform, scalar_t* __restrict__ accept_prob, bool* __restrict__ accepted,
    scalar_t* __restrict__ energy_error, int64_t n_rows, int64_t n_cols) {
  const int lane = threadIdx.x % 32;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / 32;
  if (row >= n_rows) return;  // whole warps leave together
  const scalar_t half_kick = scalar_t(0.5) * step_size[row];
  const int64_t base = row * n_cols;
  scalar_t kinetic = 0;
  for (int64_t j = lane; j < n_cols; j += 32) {
    const scalar_t momentum = p[base + j] - half_kick * grad[base + j];
    kinetic += momentum * momentum;
  }
  for (int offset = 16; offset > 0; offset /= 2) kinetic += __shfl_xor_sync(0xffffffff, kinetic, offset);
  const scalar_t log_ratio = (potential0[row] + kinetic0[row]) - (potential[row] + scalar_t(0.5) * kinetic);
  const bool finite = isfinite(log_ratio);
  const bool accept = finite && log_uniform[row] < log_ratio;
  if (lane == 0) {
    accept_prob[row] = finite ? exp(min(log_ratio, scalar_t(0))) : scalar_t(0);
    accepted[row] = accept;
    energy_error[row] = -log_ratio;
    if (!accept) potential[row] = potential0[row];
  }
  if (!accept) {
    for (int64_t j = lane; j < n_cols; j += 32) {
      z[base + j] = z0[base + j];
      grad[base + j] = grad0[base + j];
    }
  }
}

// Returns (accept_prob, accepted, energy_error), as the CPU kernel (csrc/integrators.cpp).
std::tuple<at::Tensor, at::Tensor, at::Tensor> hmc_trajectory_end(
    const at::Tensor& z, const at::Tensor& p, const at::Tensor& grad, const at::Tensor& potential, const at::Tensor& z0,
    const at::Tensor& potential0, const at::Tensor& grad0, const at::Tensor& kinetic0, const at::Tensor& step_size,
    const at::Tensor& log_uniform) {
  check_hmc_trajectory_end_args({&z, &p, &grad, &z0, &grad0},
                                {&potential, &potential0, &kinetic0, &step_size, &log_uniform}, kDevice);
  const c10::cuda::CUDAGuard guard(z.device());
  auto accept_prob = at::empty_like(potential);
  auto accepted = at::empty({z.size(0)}, z.options().dtype(at::kBool));
  auto energy_error = at::empty_like(potential);
  const int64_t rows = z.size(0);
  if (rows == 0) return {accept_prob, accepted, energy_error};
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hmc_trajectory_end_cuda", [&] {
    const int blocks = static_cast<int>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    hmc_trajectory_end_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        z.mutable_data_ptr<scalar_t>(), p.const_data_ptr<scalar_t>(), grad.mutable_data_ptr<scalar_t>(),
        potential.mutable_data_ptr<scalar_t>(), z0.const_data_ptr<scalar_t>(), potential0.const_data_ptr<scalar_t>(),
        grad0.const_data_ptr<scalar_t>(), kinetic0.const_data_ptr<scalar_t>(), step_size.const_data_ptr<scalar_t>(),
        log_uniform.const_data_ptr<scalar_t>(), accept_prob.mutable_data_ptr<scalar_t>(),
        accepted.mutable_data_ptr<bool>(), energy_error.mutable_data_ptr<scalar_t>(), rows, z.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {accept_prob, accepted, energy_error};
}

}  // namespace

TORCH_LIBRARY_IMPL(kale_fast, CUDA, m) {
  m.impl("leapfrog_kick_drift", &leapfrog_kick_drift);
  m.impl("hmc_trajectory_end", &hmc_trajectory_end);
}

}  // namespace kale_fast
