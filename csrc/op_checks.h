// Argument checks of the MCMC update ops, shared by the CPU (csrc/) and CUDA (kernels/) registrations; the
// Python wrappers check first and name the user's argument, these guard direct torch.ops calls.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

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

}  // namespace kale_fast
