// Kernel-level op schemas, shared by the CPU (torch.ops.kale_fast_cpp) and CUDA (torch.ops.kale_fast_cuda)
// registrations so that both backends expose one contract.
#pragma once

#include <torch/library.h>

namespace kale_fast {

inline void define_kale_schemas(torch::Library& m) {
  m.def("kale_forward(Tensor e_data, Tensor e_gen, Tensor? log_partition) -> (Tensor, Tensor)");
  m.def("kale_backward(Tensor grad, Tensor e_data, Tensor e_gen, Tensor? log_partition, Tensor lse) -> (Tensor, Tensor, Tensor)");
  m.def("log_mean_exp_forward(Tensor x) -> Tensor");
  m.def("log_mean_exp_backward(Tensor grad, Tensor x, Tensor out) -> Tensor");
}

inline void define_leapfrog_schemas(torch::Library& m) {
  m.def("leapfrog_kick_drift(Tensor(a!) z, Tensor(b!) p, Tensor grad, Tensor step_size, float kick_fraction) -> ()");
  m.def("hmc_trajectory_end(Tensor(a!) z, Tensor p, Tensor(b!) grad, Tensor(c!) potential, Tensor z0, Tensor potential0, "
        "Tensor grad0, Tensor kinetic0, Tensor step_size, Tensor log_uniform) -> (Tensor, Tensor)");
}

inline void define_langevin_schemas(torch::Library& m) {
  m.def("hmc_draw_momentum(Tensor z, Tensor seed) -> (Tensor, Tensor)");
  m.def("mala_propose(Tensor z, Tensor grad, Tensor step_size, Tensor seed, Tensor? noise) -> Tensor");
  m.def("mala_accept(Tensor z, Tensor potential, Tensor grad, Tensor(a!) z_prop, Tensor(b!) potential_prop, "
        "Tensor(c!) grad_prop, Tensor step_size, Tensor log_uniform) -> (Tensor, Tensor)");
  m.def("ula_step(Tensor(a!) z, Tensor grad, Tensor step_size, Tensor seed, Tensor? noise) -> ()");
  m.def("kinetic_langevin_baoa(Tensor(a!) z, Tensor(b!) v, Tensor grad, Tensor step_size, Tensor friction, Tensor seed, "
        "Tensor? noise) -> ()");
}

}  // namespace kale_fast
