"""What every sampler shares: its options and their checks, the adaptations it declares, and `run`.

A sampler is a small pure pair in the BlackJAX sense: `init(ctx, y) -> state` and
`step(state, params, ctx) -> (state, transition)`, over unit-mass coordinates y (kale_fast.samplers.metric), with
its own state type; a step never modifies the state it is given (the fused in-place kernels only ever touch
tensors the step itself created). For the compiled path a sampler also gives `draw_kinds` and `algebra_step`: the
same transition as tensor algebra from pre-drawn random numbers (kale_fast.samplers.compiled). The loop is
kale_fast.samplers.run, which knows samplers only through this interface.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from kale_fast.samplers import adaptation, checks
from kale_fast.samplers.core import (StepContext, StepParams, Tuning, ValueAndGrad, check_count,  # noqa: F401
                                     check_fraction, check_metric_option, check_positive)
from kale_fast.samplers.metric import Metric
from kale_fast.samplers.run import run_chains


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
    # Whether the leapfrog count of StepParams changes from iteration to iteration (compiled: passed as a tensor)
    leapfrog_count_varies = False
    # Whether `params` reads the step sizes' mean on the host (Tuning.mean_step_size)
    host_step_size = False
    # Whether its adaptations read Tuning.longest_scale (the metric windows then keep the draws' whole covariance)
    needs_longest_scale = False

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

    def draw_kinds(self) -> Tuple[str, ...]:
        """What one iteration of algebra_step draws, in order: "normal" (B, L), "log_uniform" (B,), "uniform"
        (B,) (kale_fast.samplers.compiled.draws_from_uniforms)."""
        raise NotImplementedError

    def algebra_step(self, state, params: StepParams, draws: Tuple[Tensor, ...], value_and_grad: ValueAndGrad):
        """step's transition as tensor algebra from one iteration's draws (traceable by torch.compile)."""
        raise NotImplementedError

    def gradients_per_iteration(self) -> int:
        return 1

    def params(self, tune: Tuning, iteration: int, adapting: bool) -> StepParams:
        """This iteration's StepParams (HMC and ChEES add their leapfrog count)."""
        return StepParams(tune.step_size, adapting=adapting)

    harmonic_acceptance = False  # ChEES: the shared statistic is the chains' harmonic mean

    def acceptance_statistic(self, transition) -> Tensor:
        """What dual averaging steers towards target_accept (B,): per chain, or shared by the chains
        (kale_fast.samplers.adaptation.acceptance_statistic; divergent transitions left out)."""
        return adaptation.acceptance_statistic(transition.accept_prob, transition.divergent,
                                               self.per_chain_adaptation, self.harmonic_acceptance)

    def initial_trajectory_length(self) -> Optional[float]:
        return None

    def adaptations(self, warmup: int) -> List[object]:
        """What a warm-up of this length adapts besides the metric, in update order
        (kale_fast.samplers.adaptation)."""
        if not checks.adapts_step_size(self, warmup):
            return []
        return [adaptation.StepSizeAdaptation(self.target_accept, self.acceptance_statistic)]

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self, potential, z0: Optional[Tensor], n_steps: int, *, warmup: int = 0, thin: int = 0,
            progress: bool = False, compile: bool = False, cuda_graph: bool = False,
            generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None, state=None):
        """Run B chains from z0 (B, L): `warmup` adaptation steps, then `n_steps` sampling steps; returns a
        SampleResult. See kale_fast.samplers.run.run_chains for every option."""
        return run_chains(self, potential, z0, n_steps, warmup=warmup, thin=thin, progress=progress,
                          compile=compile, cuda_graph=cuda_graph, generator=generator, chunk_size=chunk_size,
                          state=state)
