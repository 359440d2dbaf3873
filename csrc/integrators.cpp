// CPU kernels of the fused MCMC updates (kale_fast/ops/integrators.py is the wrapper,
// kale_fast/reference/integrators.py the oracle). States are (B, L) contiguous fp32/fp64 tensors, per-chain
// scalars (B,) of the same dtype; the Python layer validates. Rows (chains) are split across threads; the
// inner loops over L are plain loops that GCC vectorises.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "philox.h"
#include "kale_fast/op_checks.h"

namespace kale_fast {
namespace {

constexpr int64_t kGrainElements = 1 << 14;

constexpr c10::DeviceType kDevice = c10::kCPU;  // of every chain state these ops take

// Calls body(row_begin, row_end) over the chains in parallel, about kGrainElements elements per task.
template <typename F>
void for_rows(const at::Tensor& state, const F& body) {
  const int64_t rows = state.size(0), cols = std::max<int64_t>(1, state.size(1));
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElements / cols), body);
}

// Gaussian noise of row r: the caller's explicit noise, or Philox numbers keyed by the seed.
template <typename scalar_t>
const scalar_t* row_noise(const std::optional<at::Tensor>& noise, uint64_t seed, int64_t row, int64_t cols,
                          std::vector<scalar_t>& buffer) {
  if (noise.has_value()) return noise->const_data_ptr<scalar_t>() + row * cols;
  buffer.resize(cols);
  philox_normal<scalar_t>(seed, row * cols, cols, buffer.data());
  return buffer.data();
}

uint64_t read_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong, "seed must be a one-element int64 tensor");
  return static_cast<uint64_t>(seed.item<int64_t>());
}

void leapfrog_kick_drift(const at::Tensor& z, const at::Tensor& p, const at::Tensor& grad, const at::Tensor& step_size,
                         double kick_fraction) {
  check_leapfrog_kick_drift_args(z, p, grad, step_size, kDevice);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "leapfrog_kick_drift", [&] {
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    scalar_t* pp = p.mutable_data_ptr<scalar_t>();
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* hp = step_size.const_data_ptr<scalar_t>();
    const int64_t cols = z.size(1);
    for_rows(z, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t h = hp[r], kick = static_cast<scalar_t>(kick_fraction) * h;
        scalar_t* zr = zp + r * cols;
        scalar_t* pr = pp + r * cols;
        const scalar_t* gr = gp + r * cols;
        for (int64_t j = 0; j < cols; ++j) {
          const scalar_t momentum = pr[j] - kick * gr[j];
          pr[j] = momentum;
          zr[j] += h * momentum;
        }
      }
    });
  });
}

// Metropolis decision of one chain from its log acceptance ratio; NaN and infinite ratios are rejected.
template <typename scalar_t>
bool metropolis(scalar_t log_ratio, scalar_t log_uniform, scalar_t& accept_prob) {
  const bool finite = std::isfinite(log_ratio);
  accept_prob = finite ? std::exp(std::min(log_ratio, scalar_t(0))) : scalar_t(0);
  return finite && log_uniform < log_ratio;
}

// Where chain r is rejected, restore its state row from the previous one.
template <typename scalar_t>
void restore_row(bool accepted, int64_t r, int64_t cols, scalar_t* z, const scalar_t* z_old, scalar_t* grad,
                 const scalar_t* grad_old, scalar_t* potential, const scalar_t* potential_old) {
  if (accepted) return;
  std::copy(z_old + r * cols, z_old + (r + 1) * cols, z + r * cols);
  std::copy(grad_old + r * cols, grad_old + (r + 1) * cols, grad + r * cols);
  potential[r] = potential_old[r];
}

// Returns (accept_prob, accepted, energy_error): energy_error = H1 - H0, -log of the Metropolis ratio, which the
// samplers' divergence check and ChEES's adaptation read (no second pass over the (B, L) momenta).
std::tuple<at::Tensor, at::Tensor, at::Tensor> hmc_trajectory_end(
    const at::Tensor& z, const at::Tensor& p, const at::Tensor& grad, const at::Tensor& potential, const at::Tensor& z0,
    const at::Tensor& potential0, const at::Tensor& grad0, const at::Tensor& kinetic0, const at::Tensor& step_size,
    const at::Tensor& log_uniform) {
  check_hmc_trajectory_end_args({&z, &p, &grad, &z0, &grad0},
                                {&potential, &potential0, &kinetic0, &step_size, &log_uniform}, kDevice);
  auto accept_prob = at::empty_like(potential);
  auto accepted = at::empty({z.size(0)}, z.options().dtype(at::kBool));
  auto energy_error = at::empty_like(potential);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hmc_trajectory_end", [&] {
    const int64_t cols = z.size(1);
    const scalar_t *pp = p.const_data_ptr<scalar_t>(), *hp = step_size.const_data_ptr<scalar_t>();
    scalar_t* gp = grad.mutable_data_ptr<scalar_t>();
    scalar_t* up = potential.mutable_data_ptr<scalar_t>();
    const scalar_t *u0 = potential0.const_data_ptr<scalar_t>(), *k0 = kinetic0.const_data_ptr<scalar_t>();
    const scalar_t* lu = log_uniform.const_data_ptr<scalar_t>();
    scalar_t *prob = accept_prob.mutable_data_ptr<scalar_t>(), *err = energy_error.mutable_data_ptr<scalar_t>();
    bool* acc = accepted.mutable_data_ptr<bool>();
    for_rows(z, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t half_kick = scalar_t(0.5) * hp[r];
        scalar_t kinetic = 0;
        for (int64_t j = 0; j < cols; ++j) {
          const scalar_t momentum = pp[r * cols + j] - half_kick * gp[r * cols + j];
          kinetic += momentum * momentum;
        }
        const scalar_t log_ratio = (u0[r] + k0[r]) - (up[r] + scalar_t(0.5) * kinetic);
        err[r] = -log_ratio;
        acc[r] = metropolis(log_ratio, lu[r], prob[r]);
        restore_row(acc[r], r, cols, z.mutable_data_ptr<scalar_t>(), z0.const_data_ptr<scalar_t>(), gp,
                    grad0.const_data_ptr<scalar_t>(), up, u0);
      }
    });
  });
  return {accept_prob, accepted, energy_error};
}

// out = z - h grad + sqrt(2h) xi; `out` may be z itself (the in-place ULA step).
template <typename scalar_t>
void langevin_move(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& step_size, uint64_t seed,
                   const std::optional<at::Tensor>& noise, const at::Tensor& out) {
  const int64_t cols = z.size(1);
  const scalar_t *zp = z.const_data_ptr<scalar_t>(), *gp = grad.const_data_ptr<scalar_t>();
  const scalar_t* hp = step_size.const_data_ptr<scalar_t>();
  scalar_t* op = out.mutable_data_ptr<scalar_t>();
  for_rows(z, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer;
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xi = row_noise<scalar_t>(noise, seed, r, cols, buffer);
      const scalar_t h = hp[r], scale = std::sqrt(2 * h);
      for (int64_t j = 0; j < cols; ++j) op[r * cols + j] = zp[r * cols + j] - h * gp[r * cols + j] + scale * xi[j];
    }
  });
}

void check_noise(const std::optional<at::Tensor>& noise, const at::Tensor& z) {
  if (noise.has_value()) {
    check_state(*noise, kDevice, "noise");
    TORCH_CHECK(noise->sizes() == z.sizes() && noise->scalar_type() == z.scalar_type(), "noise must match z");
  }
}

at::Tensor mala_propose(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& step_size, const at::Tensor& seed,
                        const std::optional<at::Tensor>& noise) {
  check_state(z, kDevice, "z");
  check_state(grad, kDevice, "grad");
  check_per_chain(step_size, z, "step_size");
  check_noise(noise, z);
  auto out = at::empty_like(z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mala_propose",
                             [&] { langevin_move<scalar_t>(z, grad, step_size, read_seed(seed), noise, out); });
  return out;
}

void ula_step(const at::Tensor& z, const at::Tensor& grad, const at::Tensor& step_size, const at::Tensor& seed,
              const std::optional<at::Tensor>& noise) {
  check_state(z, kDevice, "z");
  check_state(grad, kDevice, "grad");
  check_per_chain(step_size, z, "step_size");
  check_noise(noise, z);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "ula_step",
                             [&] { langevin_move<scalar_t>(z, grad, step_size, read_seed(seed), noise, z); });
}

// Returns (accept_prob, accepted, energy_error): energy_error = -log of the Metropolis ratio, which the
// sampler's divergence check reads (no second pass over the (B, L) states).
std::tuple<at::Tensor, at::Tensor, at::Tensor> mala_accept(const at::Tensor& z, const at::Tensor& potential,
                                                           const at::Tensor& grad,
                                               const at::Tensor& z_prop, const at::Tensor& potential_prop,
                                               const at::Tensor& grad_prop, const at::Tensor& step_size,
                                               const at::Tensor& log_uniform) {
  for (const auto* t : {&z, &grad, &z_prop, &grad_prop}) check_state(*t, kDevice, "MALA state");
  for (const auto* t : {&potential, &potential_prop, &step_size, &log_uniform}) check_per_chain(*t, z, "MALA per-chain value");
  auto accept_prob = at::empty_like(potential);
  auto accepted = at::empty({z.size(0)}, z.options().dtype(at::kBool));
  auto energy_error = at::empty_like(potential);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mala_accept", [&] {
    const int64_t cols = z.size(1);
    const scalar_t *zp = z.const_data_ptr<scalar_t>(), *gp = grad.const_data_ptr<scalar_t>();
    const scalar_t *up = potential.const_data_ptr<scalar_t>(), *hp = step_size.const_data_ptr<scalar_t>();
    const scalar_t* lu = log_uniform.const_data_ptr<scalar_t>();
    scalar_t *zq = z_prop.mutable_data_ptr<scalar_t>(), *gq = grad_prop.mutable_data_ptr<scalar_t>();
    scalar_t* uq = potential_prop.mutable_data_ptr<scalar_t>();
    scalar_t *prob = accept_prob.mutable_data_ptr<scalar_t>(), *err = energy_error.mutable_data_ptr<scalar_t>();
    bool* acc = accepted.mutable_data_ptr<bool>();
    for_rows(z, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t h = hp[r];
        scalar_t forward = 0, backward = 0;  // |z' - z + h g(z)|^2 and |z - z' + h g(z')|^2
        for (int64_t j = 0; j < cols; ++j) {
          const scalar_t delta = zq[r * cols + j] - zp[r * cols + j];
          const scalar_t f = delta + h * gp[r * cols + j], b = -delta + h * gq[r * cols + j];
          forward += f * f;
          backward += b * b;
        }
        const scalar_t log_ratio = (up[r] - uq[r]) + (forward - backward) / (4 * h);
        err[r] = -log_ratio;
        acc[r] = metropolis(log_ratio, lu[r], prob[r]);
        restore_row(acc[r], r, cols, zq, zp, gq, gp, uq, up);
      }
    });
  });
  return {accept_prob, accepted, energy_error};
}

void kinetic_langevin_baoa(const at::Tensor& z, const at::Tensor& v, const at::Tensor& grad, const at::Tensor& step_size,
                           const at::Tensor& friction, const at::Tensor& seed, const std::optional<at::Tensor>& noise) {
  check_state(z, kDevice, "z");
  check_state(v, kDevice, "v");
  check_state(grad, kDevice, "grad");
  check_per_chain(step_size, z, "step_size");
  check_per_chain(friction, z, "friction");
  check_noise(noise, z);
  const uint64_t seed_value = read_seed(seed);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "kinetic_langevin_baoa", [&] {
    const int64_t cols = z.size(1);
    scalar_t *zp = z.mutable_data_ptr<scalar_t>(), *vp = v.mutable_data_ptr<scalar_t>();
    const scalar_t *gp = grad.const_data_ptr<scalar_t>(), *hp = step_size.const_data_ptr<scalar_t>();
    const scalar_t* fp = friction.const_data_ptr<scalar_t>();
    for_rows(z, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> buffer;
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* xi = row_noise<scalar_t>(noise, seed_value, r, cols, buffer);
        const scalar_t half = scalar_t(0.5) * hp[r], c = std::exp(-fp[r] * hp[r]), s = std::sqrt(1 - c * c);
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t i = r * cols + j;
          scalar_t velocity = vp[i] - half * gp[i];
          scalar_t position = zp[i] + half * velocity;
          velocity = c * velocity + s * xi[j];
          zp[i] = position + half * velocity;
          vp[i] = velocity;
        }
      }
    });
  });
}

// Fresh momenta p ~ N(0, I) (Philox) and their kinetic energies 0.5 |p|^2 (B,), for an HMC trajectory.
std::tuple<at::Tensor, at::Tensor> hmc_draw_momentum(const at::Tensor& z, const at::Tensor& seed) {
  check_state(z, kDevice, "z");
  const uint64_t seed_value = read_seed(seed);
  auto momentum = at::empty_like(z);
  auto kinetic = at::empty({z.size(0)}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "hmc_draw_momentum", [&] {
    const int64_t cols = z.size(1);
    scalar_t* pp = momentum.mutable_data_ptr<scalar_t>();
    scalar_t* kp = kinetic.mutable_data_ptr<scalar_t>();
    for_rows(z, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        philox_normal<scalar_t>(seed_value, r * cols, cols, pp + r * cols);
        scalar_t sum = 0;
        for (int64_t j = 0; j < cols; ++j) sum += pp[r * cols + j] * pp[r * cols + j];
        kp[r] = scalar_t(0.5) * sum;
      }
    });
  });
  return {momentum, kinetic};
}

}  // namespace

TORCH_LIBRARY_IMPL(kale_fast, CPU, m) {
  m.impl("hmc_draw_momentum", &hmc_draw_momentum);
  m.impl("leapfrog_kick_drift", &leapfrog_kick_drift);
  m.impl("hmc_trajectory_end", &hmc_trajectory_end);
  m.impl("mala_propose", &mala_propose);
  m.impl("mala_accept", &mala_accept);
  m.impl("ula_step", &ula_step);
  m.impl("kinetic_langevin_baoa", &kinetic_langevin_baoa);
}

}  // namespace kale_fast
