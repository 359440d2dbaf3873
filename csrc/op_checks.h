// Argument checks of the MCMC update ops, shared by the CPU (csrc/) and CUDA (kernels/) registrations; the
// Python wrappers check first and name the user's argument, these guard direct torch.ops calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <initializer_list>

namespace kale_fast {

// A chain state (B, L), contiguous, on the backend's device.
inline void check_state(const at::Tensor& t, c10::DeviceType device, const char* name) {
  TORCH_CHECK(t.device().type() == device && t.dim() == 2 && t.is_contiguous(), name, " must be a contiguous (B, L) ",
              c10::DeviceTypeName(device), " tensor");
}

// A per-chain value (B,), contiguous, of the state's dtype and device.
inline void check_per_chain(const at::Tensor& t, const at::Tensor& state, const char* name) {
  TORCH_CHECK(t.device() == state.device() && t.dim() == 1 && t.size(0) == state.size(0) && t.is_contiguous() &&
                  t.scalar_type() == state.scalar_type(),
              name, " must be a contiguous (B,) tensor of the state's dtype and device");
}

// The ops that both backends implement: one contract, checked once.
inline void check_leapfrog_kick_drift_args(const at::Tensor& z, const at::Tensor& p, const at::Tensor& grad,
                                           const at::Tensor& step_size, c10::DeviceType device) {
  check_state(z, device, "z");
  check_state(p, device, "p");
  check_state(grad, device, "grad");
  check_per_chain(step_size, z, "step_size");
}

inline void check_hmc_trajectory_end_args(std::initializer_list<const at::Tensor*> states,
                                          std::initializer_list<const at::Tensor*> per_chain, c10::DeviceType device) {
  for (const auto* t : states) check_state(*t, device, "HMC state");
  for (const auto* t : per_chain) check_per_chain(*t, **states.begin(), "HMC per-chain value");
}

}  // namespace kale_fast
