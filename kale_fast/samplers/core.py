"""What a sampler's step needs and what it reports, at the bottom of kale_fast.samplers (imports nothing else of
the package's samplers but the metric): StepParams, StepContext, Tuning and the option checks.

A sampler is a pure pair in the BlackJAX sense: `init(ctx, y) -> state` and `step(state, params, ctx) ->
(state, transition)` over unit-mass coordinates y (kale_fast.samplers.metric), with its own state type.
kale_fast.samplers.context.build_context makes a StepContext for a loop of one's own; kale_fast.samplers.run
is the package's loop.
"""
import math
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from kale_fast.ops import integrators
from kale_fast.samplers.metric import METRIC_KINDS, Metric

ValueAndGrad = Callable[[Tensor], Tuple[Tensor, Tensor]]


class StepParams(NamedTuple):
    """What a step is given: per-chain step sizes (B,), for HMC this iteration's leapfrog count (an int; inside
    ChEES's compiled whole iterations a 0-d int64 tensor; with ChEES, the jittered trajectory time too), and
    whether warm-up adaptation will read the step's report."""
    step_size: Tensor
    n_leapfrog: int = 0
    trajectory_time: float = 0.0
    adapting: bool = False


class StepContext(NamedTuple):
    """The resolved machinery of a run, for one metric: the unit-coordinate potential (eager or compiled), the
    integrator kernels of the backend resolved once for the chains' device, the leapfrog integrator (eager, or
    compiled chunks of steps: kale_fast.samplers.leapfrog) and the run's generator."""
    value_and_grad: ValueAndGrad
    kernels: object
    leapfrog: Callable
    generator: torch.Generator

    def seed(self, like: Tensor) -> Tensor:
        """A fresh kernel seed, kept on the chains' device (no host synchronisation)."""
        return integrators.seed(like, self.generator)

    def log_uniform(self, like: Tensor) -> Tensor:
        """log u, u ~ U(0, 1), one per chain, for Metropolis tests."""
        return torch.log(torch.rand(like.shape[:1], generator=self.generator, dtype=like.dtype, device=like.device))


class Tuning(NamedTuple):
    """What warm-up adapts besides the metric: per-chain step sizes (B,) (on the device), the trajectory length
    (a host float, ChEES) and the step sizes' mean as a host float (nan unless the sampler reads it on the host,
    as ChEES does to set its leapfrog count: read once per change, not per step); longest_scale, for samplers
    that ask (Sampler.needs_longest_scale), the last metric window's MetricEstimator.longest_scale (None before
    a window of enough draws, adaptation.longest_scale_min_draws)."""
    step_size: Tensor
    trajectory_length: Optional[float] = None
    mean_step_size: float = math.nan
    longest_scale: Optional[float] = None

    def with_step_size(self, step_size: Tensor) -> "Tuning":
        """New step sizes; their host mean refreshed where it is kept."""
        mean = self.mean_step_size if math.isnan(self.mean_step_size) else float(step_size.mean())
        return self._replace(step_size=step_size, mean_step_size=mean)


def check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_positive(name: str, value) -> Union[float, Tensor]:
    """A positive finite float, or a (B,) floating tensor of them (copied, so the caller's tensor can change)."""
    if isinstance(value, Tensor):
        if value.dim() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a positive float or a (B,) floating tensor, got shape "
                             f"{tuple(value.shape)}, dtype {value.dtype}")
        if not bool(torch.all(torch.isfinite(value) & (value > 0))):
            raise ValueError(f"{name} must be finite and > 0 for every chain")
        return value.detach().clone()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive float or a (B,) floating tensor, got {value!r}")
    return float(value)


def check_fraction(name: str, value, low: float, high: float) -> float:
    """A float in the open interval (low, high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
        raise ValueError(f"{name} must be a number in ({low}, {high}), got {value!r}")
    return float(value)


def check_metric_option(metric) -> Union[str, Metric]:
    if isinstance(metric, Metric):
        return metric
    if metric not in METRIC_KINDS:
        raise ValueError(f"metric must be one of {METRIC_KINDS} or a kale_fast.samplers.Metric, got {metric!r}")
    return metric
