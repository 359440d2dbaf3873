"""Overdamped Langevin samplers: ULA (unadjusted) and MALA (Metropolis-adjusted), one gradient per step.

Both move z' = z - h grad U(z) + sqrt(2h) xi (textbook step h, not the paper code's lambda).
"""
from typing import Tuple

import torch

from kale_fast.ops import integrators
from kale_fast.samplers.base import ChainState, Sampler, Transition
from kale_fast.samplers.potentials import value_and_grad


def _unadjusted(chains: ChainState) -> Transition:
    ones = torch.ones_like(chains.potential)
    return Transition(ones, torch.ones_like(ones, dtype=torch.bool), ~torch.isfinite(chains.potential))


class ULA(Sampler):
    """Unadjusted Langevin: biased by the step (for a standard Gaussian the stationary variance is
    1 / (1 - h/2)), cheap: no Metropolis test."""

    name = "ula"

    def __init__(self, step_size):
        super().__init__(step_size)

    def step(self, potential, chains, step_size, generator) -> Tuple[ChainState, Transition]:
        integrators.ula_step(chains.z, chains.grad, step_size, generator=generator)  # in place
        value, grad = value_and_grad(potential, chains.z)
        chains = ChainState(chains.z, value, grad)
        return chains, _unadjusted(chains)


class MALA(Sampler):
    """Metropolis-adjusted Langevin: exact for any h. Adapts h towards target_accept (default 0.574, the
    optimal rate for MALA in high dimension, Roberts & Rosenthal 1998) during warm-up when adapt_step_size."""

    name = "mala"
    default_target_accept = 0.574

    def step(self, potential, chains, step_size, generator) -> Tuple[ChainState, Transition]:
        z_prop = integrators.mala_propose(chains.z, chains.grad, step_size, generator=generator)
        value, grad = value_and_grad(potential, z_prop)
        nonfinite = ~torch.isfinite(value)
        log_uniform = torch.log(torch.rand(value.shape, generator=generator, dtype=value.dtype, device=value.device))
        accept_prob, accepted = integrators.mala_accept(chains.z, chains.potential, chains.grad, z_prop, value, grad,
                                                        step_size, log_uniform)
        return ChainState(z_prop, value, grad), Transition(accept_prob, accepted, nonfinite)
