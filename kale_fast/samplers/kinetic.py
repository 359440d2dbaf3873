"""Kinetic (underdamped) Langevin dynamics by BAOAB splitting (Leimkuhler & Matthews), unit mass, friction
gamma: one gradient per step, velocity kept across steps. Unadjusted: its bias is O(h^2) in the positions."""
from typing import Tuple

import torch

from kale_fast.ops import integrators
from kale_fast.samplers.base import ChainState, Sampler, Transition, _check_positive
from kale_fast.samplers.langevin import _unadjusted
from kale_fast.samplers.potentials import value_and_grad


class KineticLangevin(Sampler):
    """BAOAB with step h and friction gamma (a float or a (B,) tensor)."""

    name = "kinetic_langevin"

    def __init__(self, step_size, friction=1.0):
        super().__init__(step_size)
        self.friction = _check_positive("friction", friction)

    def init_chains(self, potential, z, generator) -> ChainState:
        value, grad = value_and_grad(potential, z)
        velocity = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)  # stationary law
        return ChainState(z, value, grad, velocity)

    def step(self, potential, chains, step_size, generator) -> Tuple[ChainState, Transition]:
        friction = (self.friction.to(step_size.dtype) if isinstance(self.friction, torch.Tensor)
                    else torch.full_like(step_size, self.friction))
        z, velocity = chains.z, chains.velocity
        integrators.kinetic_langevin_baoa(z, velocity, chains.grad, step_size, friction, generator=generator)
        value, grad = value_and_grad(potential, z)
        velocity.sub_(0.5 * step_size[:, None] * grad)  # the closing B, with the new gradient
        chains = ChainState(z, value, grad, velocity)
        return chains, _unadjusted(chains)
