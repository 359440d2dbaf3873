"""Reference MCMC integrator updates, written as the textbook reads; the fused ops of
kale_fast.ops.integrators are tested against these.

Shapes: states z, p, v, grad, noise are (B, L) (B chains, L latent dimensions); potentials, step sizes,
frictions, log-uniforms and the outputs accept_prob/accepted are (B,). Unit mass. Each function returns new
tensors; the fused twins update their state arguments in place instead.
"""
from typing import Tuple

import torch
from torch import Tensor


def _col(x: Tensor) -> Tensor:
    return x[:, None]


def leapfrog_kick_drift(z: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, kick_fraction: float
                        ) -> Tuple[Tensor, Tensor]:
    """p <- p - kick_fraction * h * grad U(z); z <- z + h * p. (kick_fraction 0.5 opens a trajectory.)"""
    p = p - kick_fraction * _col(step_size) * grad
    return z + _col(step_size) * p, p


def _metropolis_select(log_ratio: Tensor, log_uniform: Tensor, proposal, current):
    """Accept where log u < log_ratio and log_ratio is finite (NaN or infinite energies are rejected)."""
    finite = torch.isfinite(log_ratio)
    accepted = finite & (log_uniform < log_ratio)
    accept_prob = torch.where(finite, torch.exp(torch.clamp(log_ratio, max=0.0)), torch.zeros_like(log_ratio))
    selected = [torch.where(accepted if new.dim() == 1 else _col(accepted), new, old)
                for new, old in zip(proposal, current)]
    return (*selected, accept_prob, accepted)


def hmc_trajectory_end(z: Tensor, p: Tensor, grad: Tensor, potential: Tensor, z0: Tensor, potential0: Tensor,
                       grad0: Tensor, kinetic0: Tensor, step_size: Tensor, log_uniform: Tensor):
    """Closing half kick, kinetic energy, Hamiltonian difference and the Metropolis test of an HMC trajectory.

    (z, p, grad, potential) is the trajectory's end before its last half kick; (z0, potential0, grad0,
    kinetic0) its start. Returns (z, potential, grad, accept_prob, accepted) of the chosen states and the energy
    error H1 - H0, -log of the Metropolis ratio (B,), which the samplers' divergence check reads.
    """
    p = p - 0.5 * _col(step_size) * grad
    kinetic = 0.5 * (p * p).sum(dim=1)
    log_ratio = (potential0 + kinetic0) - (potential + kinetic)
    return (*_metropolis_select(log_ratio, log_uniform, (z, potential, grad), (z0, potential0, grad0)),
            -log_ratio)


def mala_propose(z: Tensor, grad: Tensor, step_size: Tensor, noise: Tensor) -> Tensor:
    """z' = z - h grad U(z) + sqrt(2h) xi."""
    h = _col(step_size)
    return z - h * grad + torch.sqrt(2 * h) * noise


def mala_accept(z: Tensor, potential: Tensor, grad: Tensor, z_prop: Tensor, potential_prop: Tensor,
                grad_prop: Tensor, step_size: Tensor, log_uniform: Tensor):
    """Metropolis-adjusted test of a MALA proposal with log q(b | a) = -|b - a + h grad U(a)|^2 / (4h).

    Returns (z, potential, grad, accept_prob, accepted) of the chosen states and the energy error, -log of the
    Metropolis ratio (B,), which the samplers' divergence check reads.
    """
    h = _col(step_size)
    log_q_forward = -((z_prop - z + h * grad) ** 2).sum(dim=1) / (4 * step_size)
    log_q_backward = -((z - z_prop + h * grad_prop) ** 2).sum(dim=1) / (4 * step_size)
    log_ratio = (potential - potential_prop) + log_q_backward - log_q_forward
    return (*_metropolis_select(log_ratio, log_uniform, (z_prop, potential_prop, grad_prop), (z, potential, grad)),
            -log_ratio)


def ula_step(z: Tensor, grad: Tensor, step_size: Tensor, noise: Tensor) -> Tensor:
    """z' = z - h grad U(z) + sqrt(2h) xi (the unadjusted Langevin algorithm)."""
    return mala_propose(z, grad, step_size, noise)


def kinetic_langevin_baoa(z: Tensor, v: Tensor, grad: Tensor, step_size: Tensor, friction: Tensor, noise: Tensor
                          ) -> Tuple[Tensor, Tensor]:
    """B, A, O, A of a BAOAB step of underdamped Langevin (unit mass, friction gamma): half kick with grad U(z),
    half drift, Ornstein-Uhlenbeck v <- c v + sqrt(1 - c^2) xi with c = exp(-gamma h), half drift. The closing B
    needs grad U at the new z, so the sampler applies it after evaluating the potential. Returns (z, v)."""
    h = _col(step_size)
    v = v - 0.5 * h * grad
    z = z + 0.5 * h * v
    c = torch.exp(-_col(friction) * h)
    v = c * v + torch.sqrt(1 - c * c) * noise
    return z + 0.5 * h * v, v
