"""What every sampler shares: its configuration checks, the context a step runs in, and `run`.

A sampler is a small pure pair in the BlackJAX sense: `init(ctx, y) -> state` and
`step(state, params, ctx) -> (state, Transition)`, over unit-mass coordinates y (kale_fast.samplers.metric), with
its own state type. A step never modifies the state it is given: the fused in-place kernels only ever touch
tensors the step itself created. The loop (warm-up schedule, thinning, resume) is kale_fast.samplers.run; the
adaptation rules are kale_fast.samplers.adaptation.
"""
import math
from typing import Callable, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from kale_fast.ops import integrators
from kale_fast.samplers import adaptation
from kale_fast.samplers.metric import METRIC_KINDS, Metric

ValueAndGrad = Callable[[Tensor], Tuple[Tensor, Tensor]]


class StepParams(NamedTuple):
    """What the run loop hands a step: per-chain step sizes (B,), for HMC this iteration's leapfrog count (with
    ChEES, the jittered trajectory time too), and whether warm-up adaptation will read the step's report."""
    step_size: Tensor
    n_leapfrog: int = 0
    trajectory_time: float = 0.0
    adapting: bool = False


class StepContext(NamedTuple):
    """The resolved machinery of one run: the unit-coordinate potential (eager or compiled), the integrator
    kernels of the backend resolved once for the chains' device, the leapfrog integrator (eager or compiled
    chunks, kale_fast.samplers.compiled) and the run's generator."""
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


class Sampler:
    """Base of ULA, MALA, HMC, ChEES and KineticLangevin: the options every sampler has.

    step_size: a float or a (B,) tensor (one per chain), in the metric's units (see each sampler).
    metric: "diag" (default) adapts a diagonal inverse mass matrix during warm-up, "dense" a dense one,
        "identity" keeps unit mass; a `Metric` is used as given. Adaptation pools all chains' draws over Stan's
        windowed schedule (kale_fast.samplers.adaptation.warmup_windows) and needs warmup >= 20; with less, or
        without warm-up, the metric is the identity.
    adapt_step_size (samplers with a Metropolis test): dual averaging towards target_accept during warm-up,
        then the averaged step is frozen. None (the default) adapts whenever the run has a warm-up; True
        without a warm-up warns (there is nothing to adapt in); False keeps step_size as given. Shared across
        chains by default (the chains target one distribution, so the acceptance averaged over B chains is a
        far less noisy signal than one chain's); per_chain_adaptation=True adapts each chain on its own.
        Divergent transitions are left out of the shared statistic (kale_fast.samplers.adaptation).
    """

    name = "sampler"
    default_target_accept: Optional[float] = None

    def __init__(self, step_size: Union[float, Tensor], *, metric: Union[str, Metric] = "diag",
                 adapt_step_size: Optional[bool] = None, target_accept: Optional[float] = None,
                 per_chain_adaptation: bool = False):
        self.step_size = check_positive("step_size", step_size)
        self.metric = check_metric_option(metric)
        if adapt_step_size is not None and not isinstance(adapt_step_size, bool):
            raise TypeError(f"adapt_step_size must be None (adapt when there is a warm-up), True or False, got "
                            f"{adapt_step_size!r}")
        if adapt_step_size and self.default_target_accept is None:
            raise ValueError(f"{type(self).__name__} has no Metropolis test, so no acceptance rate to adapt to")
        target = self.default_target_accept if target_accept is None else target_accept
        if target is not None:
            target = check_fraction("target_accept", target, 0.0, 1.0)
        self.adapt_step_size, self.target_accept = adapt_step_size, target
        self.per_chain_adaptation = bool(per_chain_adaptation)

    # --- what a sampler defines ---------------------------------------------------------------------------

    def init(self, ctx: StepContext, y: Tensor):
        """The state of chains at unit coordinates y (B, L)."""
        raise NotImplementedError

    def step(self, state, params: StepParams, ctx: StepContext) -> Tuple[object, object]:
        """One transition of all chains: (new state, Transition); `state` itself is left untouched."""
        raise NotImplementedError

    def params(self, step_size: Tensor, mean_step_size: float, trajectory_length: Optional[float],
               iteration: int, adapting: bool) -> StepParams:
        """This iteration's StepParams (HMC and ChEES add their leapfrog count); mean_step_size is the step sizes'
        mean, kept on the host by the run loop."""
        return StepParams(step_size, adapting=adapting)

    harmonic_acceptance = False  # ChEES: the shared statistic is the chains' harmonic mean

    def acceptance_statistic(self, transition) -> Tensor:
        """What dual averaging steers towards target_accept (B,): per chain, or shared by the chains
        (kale_fast.samplers.adaptation.acceptance_statistic; divergent transitions left out)."""
        return adaptation.acceptance_statistic(transition.accept_prob, transition.divergent,
                                               self.per_chain_adaptation, self.harmonic_acceptance)

    def initial_trajectory_length(self, step_size: Tensor) -> Optional[float]:
        return None

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self, potential, z0: Optional[Tensor], n_steps: int, *, warmup: int = 0, thin: int = 0,
            progress: bool = False, compile: bool = False, cuda_graph: bool = False,
            generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None, state=None):
        """Run B chains from z0 (B, L): `warmup` adaptation steps, then `n_steps` sampling steps; returns a
        SampleResult. See kale_fast.samplers.run.run_chains for every option."""
        from kale_fast.samplers.run import run_chains

        return run_chains(self, potential, z0, n_steps, warmup=warmup, thin=thin, progress=progress,
                          compile=compile, cuda_graph=cuda_graph, generator=generator, chunk_size=chunk_size,
                          state=state)
