// The schemas of every kernel op of kale_fast, defined once under torch.ops.kale_fast. Each source file
// registers its implementations for its dispatch key: csrc/*.cpp for CPU, kernels/*.cu for CUDA; each op
// family's Python module (kale_fast/ops/<family>.py) registers the fake (meta) rules, and Triton for the CUDA
// key where no CUDA C++ kernel exists. Annotated arguments (Tensor(a!)) are updated in place.
#include <torch/library.h>

TORCH_LIBRARY(kale_fast, m) {
  // KALE objective and log-mean-exp (csrc/kale.cpp, kernels/kale.cu)
  m.def("kale_loss_forward(Tensor e_data, Tensor e_gen, Tensor? log_partition) -> (Tensor, Tensor)");
  m.def("kale_loss_backward(Tensor grad, Tensor e_data, Tensor e_gen, Tensor? log_partition, Tensor state) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("log_mean_exp_forward(Tensor x) -> Tensor");
  m.def("log_mean_exp_backward(Tensor grad, Tensor x, Tensor out) -> Tensor");
  // Not a kernel: kale_loss's eager path on the C++ and CUDA backends, the two kale_loss kernels above with their
  // autograd in C++ (csrc/kale_autograd.cpp); returns the loss in the accumulation dtype.
  m.def("kale_loss_autograd(Tensor e_data, Tensor e_gen, Tensor? log_partition) -> Tensor");
  // MCMC updates (csrc/integrators.cpp, kernels/integrators.cu)
  m.def("hmc_draw_momentum(Tensor z, Tensor seed) -> (Tensor, Tensor)");
  m.def("leapfrog_kick_drift(Tensor(a!) z, Tensor(b!) p, Tensor grad, Tensor step_size, float kick_fraction) -> ()");
  m.def("hmc_trajectory_end(Tensor(a!) z, Tensor p, Tensor(b!) grad, Tensor(c!) potential, Tensor z0, "
        "Tensor potential0, Tensor grad0, Tensor kinetic0, Tensor step_size, Tensor log_uniform) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("mala_propose(Tensor z, Tensor grad, Tensor step_size, Tensor seed, Tensor? noise) -> Tensor");
  m.def("mala_accept(Tensor z, Tensor potential, Tensor grad, Tensor(a!) z_prop, Tensor(b!) potential_prop, "
        "Tensor(c!) grad_prop, Tensor step_size, Tensor log_uniform) -> (Tensor, Tensor, Tensor)");
  m.def("ula_step(Tensor(a!) z, Tensor grad, Tensor step_size, Tensor seed, Tensor? noise) -> ()");
  m.def("kinetic_langevin_baoa(Tensor(a!) z, Tensor(b!) v, Tensor grad, Tensor step_size, Tensor friction, "
        "Tensor seed, Tensor? noise) -> ()");
  // Value and input-gradient of a Linear + activation stack's GEBM latent potential (csrc/mlp_potential.cpp; CPU
  // only: on other devices kale_fast/ops/mlp_potential.py runs the reference in torch ops). activations: one code
  // per layer (0 identity, 1 SiLU, 2 ReLU, 3 LeakyReLU, 4 tanh), activation_parameters: LeakyReLU's slopes.
  m.def("mlp_potential(Tensor z, Tensor[] weights, Tensor?[] biases, int[] activations, "
        "float[] activation_parameters, float temperature, float prior_precision) -> (Tensor, Tensor)");
  // A whole leapfrog trajectory of n_steps steps on that potential in the unit coordinates of a diagonal metric
  // (scale; None: the identity), from (y, p) with grad the unit gradient at y: returns (y, p, U, grad) at its end,
  // before the closing half kick (csrc/mlp_potential.cpp; kale_fast/samplers/leapfrog.py's contract).
  m.def("mlp_leapfrog(Tensor y, Tensor p, Tensor grad, Tensor step_size, Tensor n_steps, Tensor? scale, "
        "Tensor[] weights, Tensor?[] biases, int[] activations, float[] activation_parameters, float temperature, "
        "float prior_precision) -> (Tensor, Tensor, Tensor, Tensor)");
}
