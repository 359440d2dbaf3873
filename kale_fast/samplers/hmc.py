"""Hamiltonian Monte Carlo with unit mass: n_leapfrog leapfrog steps of size h, then a Metropolis test.

An iteration costs n_leapfrog gradient evaluations: each potential value and gradient along the trajectory
is computed once, the first kick reuses the chain's stored gradient, and the Metropolis test reuses the
trajectory's last evaluation (no extra forward pass).
"""
from typing import Tuple

import torch

from kale_fast.ops import integrators
from kale_fast.samplers.base import ChainState, Sampler, Transition
from kale_fast.samplers.potentials import value_and_grad


class HMC(Sampler):
    """HMC (exact). `jitter` in [0, 1) draws each iteration's step uniformly in h * [1 - jitter, 1 + jitter]
    (per chain), which breaks periodic trajectories. Adapts h towards target_accept (default 0.8) during
    warm-up when adapt_step_size."""

    name = "hmc"
    default_target_accept = 0.8

    def __init__(self, step_size, n_leapfrog: int, *, jitter: float = 0.0, **adaptation):
        super().__init__(step_size, **adaptation)
        if not isinstance(n_leapfrog, int) or isinstance(n_leapfrog, bool) or n_leapfrog < 1:
            raise ValueError(f"n_leapfrog must be an int >= 1, got {n_leapfrog!r}")
        if not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self.n_leapfrog, self.jitter = n_leapfrog, float(jitter)

    def step(self, potential, chains, step_size, generator) -> Tuple[ChainState, Transition]:
        z0 = chains.z
        momentum, kinetic0 = integrators.hmc_draw_momentum(z0, generator=generator)
        if self.jitter:
            u = torch.rand(step_size.shape, generator=generator, dtype=z0.dtype, device=z0.device)
            step_size = step_size * (1 + self.jitter * (2 * u - 1))
        z, grad = z0.clone(), chains.grad
        for i in range(self.n_leapfrog):
            integrators.leapfrog_kick_drift(z, momentum, grad, step_size, 0.5 if i == 0 else 1.0)
            value, grad = value_and_grad(potential, z)
        nonfinite = ~torch.isfinite(value)
        log_uniform = torch.log(torch.rand(value.shape, generator=generator, dtype=value.dtype, device=value.device))
        accept_prob, accepted = integrators.hmc_trajectory_end(
            z, momentum, grad, value, z0, chains.potential, chains.grad, kinetic0, step_size, log_uniform)
        return ChainState(z, value, grad), Transition(accept_prob, accepted, nonfinite)
