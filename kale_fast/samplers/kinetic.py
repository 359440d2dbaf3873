"""Kinetic (underdamped) Langevin dynamics by BAOAB splitting (Leimkuhler & Matthews) in the metric's unit
coordinates, friction gamma: one gradient per step, velocity kept across steps. Unadjusted: its bias is O(h^2)
in the positions."""
from typing import Tuple, Union

import torch
from torch import Tensor

from kale_fast.reference import integrators as reference
from kale_fast.samplers.base import Sampler
from kale_fast.samplers.core import StepContext, StepParams, ValueAndGrad, check_positive
from kale_fast.samplers.langevin import unadjusted
from kale_fast.samplers.metric import Metric
from kale_fast.samplers.state import KineticChainState, Transition


class KineticLangevin(Sampler):
    """BAOAB with step h and friction gamma (a float or a (B,) tensor)."""

    name = "kinetic_langevin"

    def __init__(self, step_size: Union[float, Tensor], friction: Union[float, Tensor] = 1.0, *,
                 metric: Union[str, Metric] = "diag"):
        super().__init__(step_size, metric=metric)
        self.friction = check_positive("friction", friction)

    def init(self, ctx: StepContext, y: Tensor) -> KineticChainState:
        value, grad = ctx.value_and_grad(y)
        velocity = torch.randn(y.shape, generator=ctx.generator, dtype=y.dtype, device=y.device)  # stationary law
        return KineticChainState(y, value, grad, velocity)

    def _friction(self, step_size: Tensor) -> Tensor:
        return (self.friction.to(step_size.device, step_size.dtype) if isinstance(self.friction, Tensor)
                else torch.full_like(step_size, self.friction))

    def step(self, state: KineticChainState, params: StepParams, ctx: StepContext
             ) -> Tuple[KineticChainState, Transition]:
        step_size = params.step_size
        y, velocity = state.z.clone(), state.velocity.clone()
        ctx.kernels.kinetic_langevin_baoa(y, velocity, state.grad, step_size, self._friction(step_size),
                                          ctx.seed(y), None)
        value, grad = ctx.value_and_grad(y)
        velocity.sub_(0.5 * step_size[:, None] * grad)  # the closing B, with the new gradient
        return KineticChainState(y, value, grad, velocity), unadjusted(value, grad)

    def draw_kinds(self) -> Tuple[str, ...]:
        return ("normal",)

    def algebra_step(self, state: KineticChainState, params: StepParams, draws, value_and_grad: ValueAndGrad):
        (noise,) = draws
        step_size = params.step_size
        y, velocity = reference.kinetic_langevin_baoa(state.z, state.velocity, state.grad, step_size,
                                                      self._friction(step_size), noise)
        value, grad = value_and_grad(y)
        velocity = velocity - 0.5 * step_size[:, None] * grad
        return KineticChainState(y, value, grad, velocity), unadjusted(value, grad)
