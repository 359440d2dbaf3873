"""Overdamped Langevin samplers: ULA (unadjusted) and MALA (Metropolis-adjusted), one gradient per step.

Both move y' = y - h grad U(y) + sqrt(2h) xi in the metric's unit coordinates (textbook step h, not the paper
code's lambda); in z's coordinates that is z' = z - h C grad U(z) + sqrt(2h) S xi with C = S S^T the inverse mass.
"""
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from kale_fast.reference import integrators as reference
from kale_fast.samplers import checks
from kale_fast.samplers.base import Sampler
from kale_fast.samplers.core import StepContext, StepParams, ValueAndGrad
from kale_fast.samplers.metric import Metric
from kale_fast.samplers.state import ChainState, Transition


def unadjusted(potential: Tensor, grad: Tensor) -> Transition:
    """The report of a step without a Metropolis test that moved to a point of this potential (B,) and
    gradient (B, L): divergent where either is not finite."""
    ones = torch.ones_like(potential)
    return Transition(ones, torch.ones_like(ones, dtype=torch.bool), checks.nonfinite(potential, grad))


class ULA(Sampler):
    """Unadjusted Langevin: biased by the step (for a standard Gaussian the stationary variance is
    1 / (1 - h/2)), cheap: no Metropolis test."""

    name = "ula"

    def __init__(self, step_size: Union[float, Tensor], *, metric: Union[str, Metric] = "diag"):
        super().__init__(step_size, metric=metric)

    def init(self, ctx: StepContext, y: Tensor) -> ChainState:
        return ChainState(y, *ctx.value_and_grad(y))

    def step(self, state: ChainState, params: StepParams, ctx: StepContext) -> Tuple[ChainState, Transition]:
        y = state.z.clone()
        ctx.kernels.ula_step(y, state.grad, params.step_size, ctx.seed(y), None)
        value, grad = ctx.value_and_grad(y)
        return ChainState(y, value, grad), unadjusted(value, grad)

    def draw_kinds(self) -> Tuple[str, ...]:
        return ("normal",)

    def algebra_step(self, state: ChainState, params: StepParams, draws, value_and_grad: ValueAndGrad):
        (noise,) = draws
        y = reference.ula_step(state.z, state.grad, params.step_size, noise)
        value, grad = value_and_grad(y)
        return ChainState(y, value, grad), unadjusted(value, grad)


class MALA(Sampler):
    """Metropolis-adjusted Langevin: exact for any h. Adapts h towards target_accept (default 0.574, the
    optimal rate for MALA in high dimension, Roberts & Rosenthal 1998) during warm-up (unless
    adapt_step_size=False)."""

    name = "mala"
    default_target_accept = 0.574

    def __init__(self, step_size: Union[float, Tensor], *, metric: Union[str, Metric] = "diag",
                 adapt_step_size: Optional[bool] = None, target_accept: Optional[float] = None,
                 per_chain_adaptation: bool = False):
        super().__init__(step_size, metric=metric, adapt_step_size=adapt_step_size, target_accept=target_accept,
                         per_chain_adaptation=per_chain_adaptation)

    def init(self, ctx: StepContext, y: Tensor) -> ChainState:
        return ChainState(y, *ctx.value_and_grad(y))

    def step(self, state: ChainState, params: StepParams, ctx: StepContext) -> Tuple[ChainState, Transition]:
        y_prop = ctx.kernels.mala_propose(state.z, state.grad, params.step_size, ctx.seed(state.z), None)
        value, grad = ctx.value_and_grad(y_prop)
        accept_prob, accepted, energy_error = ctx.kernels.mala_accept(
            state.z, state.potential, state.grad, y_prop, value, grad, params.step_size, ctx.log_uniform(value))
        return ChainState(y_prop, value, grad), Transition(accept_prob, accepted, checks.divergent(energy_error))

    def draw_kinds(self) -> Tuple[str, ...]:
        return "normal", "log_uniform"

    def algebra_step(self, state: ChainState, params: StepParams, draws, value_and_grad: ValueAndGrad):
        noise, log_uniform = draws
        y_prop = reference.mala_propose(state.z, state.grad, params.step_size, noise)
        value, grad = value_and_grad(y_prop)
        *chosen, accept_prob, accepted, energy_error = reference.mala_accept(
            state.z, state.potential, state.grad, y_prop, value, grad, params.step_size, log_uniform)
        return ChainState(*chosen), Transition(accept_prob, accepted, checks.divergent(energy_error))
