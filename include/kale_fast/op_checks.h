// Argument checks and dtype rules of the kernel ops, shared by the CPU (csrc/) and CUDA (kernels/)
// implementations; the Python layer checks first and names the user's argument, these guard direct
// torch.ops.kale_fast calls and the kernels' own layout assumptions.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <initializer_list>

namespace kale_fast {

// The accumulation dtype of a reduction over `t`: fp64 for fp64, fp32 for fp16, bf16 and fp32.
inline at::ScalarType acc_type_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A flat input of the KALE objective: contiguous, 1-D, on the backend's device.
inline void check_flat(const at::Tensor& t, c10::DeviceType device, const char* name) {
  TORCH_CHECK(t.device().type() == device && t.dim() == 1 && t.is_contiguous(), name, " must be a contiguous 1-D ",
              c10::DeviceTypeName(device), " tensor");
}

// The (R, K) rows of log-mean-exp: contiguous, K > 0, on the backend's device.
inline void check_rows(const at::Tensor& x, c10::DeviceType device) {
  TORCH_CHECK(x.device().type() == device && x.dim() == 2 && x.is_contiguous() && x.size(1) > 0,
              "x must be a contiguous 2-D ", c10::DeviceTypeName(device), " tensor with non-empty rows");
}

// grad and state of kale_loss_backward: a one-element grad and the forward's (max, sum) state (the CPU kernel's, with
// A: a reference at most the max, in place of the max), both in the accumulation dtype of the energies, on their
// device.
inline void check_kale_state(const at::Tensor& grad, const at::Tensor& state, const at::Tensor& e_gen) {
  const auto acc = acc_type_of(e_gen.scalar_type());
  TORCH_CHECK(grad.numel() == 1 && grad.scalar_type() == acc && grad.device() == e_gen.device(),
              "grad must be a one-element tensor in the accumulation dtype on the energies' device");
  TORCH_CHECK(state.dim() == 1 && state.numel() == 2 && state.is_contiguous() && state.scalar_type() == acc &&
                  state.device() == e_gen.device(),
              "state must be the forward's contiguous (2,) (max, sum) tensor in the accumulation dtype");
}

// grad and out of log_mean_exp_backward: contiguous (R,) in the accumulation dtype of x.
inline void check_row_values(const at::Tensor& grad, const at::Tensor& out, const at::Tensor& x) {
  TORCH_CHECK(grad.scalar_type() == out.scalar_type() && out.scalar_type() == acc_type_of(x.scalar_type()) &&
                  grad.is_contiguous() && out.is_contiguous() && grad.numel() == x.size(0) &&
                  out.numel() == x.size(0),
              "grad and out must be contiguous (R,) tensors in the accumulation dtype");
}

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
