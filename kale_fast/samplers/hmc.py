"""Hamiltonian Monte Carlo in the metric's unit coordinates: fixed-length HMC with a jittered step, and ChEES-HMC
(Hoffman, Radul & Sountsov, AISTATS 2021), whose trajectory length is adapted across many chains.

An iteration of n leapfrog steps costs n gradient evaluations: each potential value and gradient along the
trajectory is computed once, the first kick reuses the chain's stored gradient, and the Metropolis test reuses the
trajectory's last evaluation (no extra forward pass). All chains take the same number of leapfrog steps.
"""
import math
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from kale_fast.reference import integrators as reference
from kale_fast.samplers import adaptation, checks
from kale_fast.samplers.base import Sampler
from kale_fast.samplers.core import StepContext, StepParams, Tuning, ValueAndGrad, check_count, check_fraction
from kale_fast.samplers.leapfrog import algebra_leapfrog
from kale_fast.samplers.metric import Metric
from kale_fast.samplers.state import ChainState, Transition


class HMC(Sampler):
    """HMC (exact) with n_leapfrog steps of size h.

    jitter in [0, 1) draws each iteration's step uniformly in h [1 - jitter, 1 + jitter] (per chain). The default
    0.5 is on because a fixed trajectory length resonates with targets of periodic dynamics: on a 100-D Gaussian
    with scales in [0.1, 1], HMC without jitter reached an ESS of 72 and R-hat 3.3 over 64 chains, with jitter 0.5
    58x that ESS in the same time. Adapts h towards target_accept (default 0.8) during warm-up (unless
    adapt_step_size=False); for the trajectory length to adapt too, use ChEES.
    """

    name = "hmc"
    default_target_accept = 0.8

    def __init__(self, step_size: Union[float, Tensor], n_leapfrog: int, *, jitter: float = 0.5,
                 metric: Union[str, Metric] = "diag", adapt_step_size: Optional[bool] = None,
                 target_accept: Optional[float] = None, per_chain_adaptation: bool = False):
        super().__init__(step_size, metric=metric, adapt_step_size=adapt_step_size, target_accept=target_accept,
                         per_chain_adaptation=per_chain_adaptation)
        self.n_leapfrog = check_count("n_leapfrog", n_leapfrog, 1)
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter < 1:
            raise ValueError(f"jitter must be a number in [0, 1), got {jitter!r}")
        self.jitter = float(jitter)

    def init(self, ctx: StepContext, y: Tensor) -> ChainState:
        return ChainState(y, *ctx.value_and_grad(y))

    def params(self, tune: Tuning, iteration: int, adapting: bool) -> StepParams:
        return StepParams(tune.step_size, self.n_leapfrog, adapting=adapting)

    def gradients_per_iteration(self) -> int:
        return self.n_leapfrog

    def step(self, state: ChainState, params: StepParams, ctx: StepContext) -> Tuple[ChainState, Transition]:
        y0 = state.z
        step_size = params.step_size
        if self.jitter:
            factor = torch.empty_like(step_size).uniform_(1 - self.jitter, 1 + self.jitter, generator=ctx.generator)
            step_size = step_size * factor
        momentum, kinetic0 = ctx.kernels.hmc_draw_momentum(y0, ctx.seed(y0))
        y, p, value, grad = ctx.leapfrog(y0, momentum, state.grad, step_size, params.n_leapfrog)
        proposal = self._proposal(y, p, grad, step_size) if params.adapting else None  # before the test's restore
        accept_prob, accepted, energy_error = ctx.kernels.hmc_trajectory_end(
            y, p, grad, value, y0, state.potential, state.grad, kinetic0, step_size, ctx.log_uniform(value))
        return ChainState(y, value, grad), self._transition(accept_prob, accepted, checks.divergent(energy_error),
                                                            proposal, y0, params)

    def draw_kinds(self) -> Tuple[str, ...]:
        """Momenta, log-uniforms and, with jitter, the step's uniforms."""
        return ("normal", "log_uniform") + (("uniform",) if self.jitter else ())

    def algebra_step(self, state: ChainState, params: StepParams, draws, value_and_grad: ValueAndGrad):
        momentum, log_uniform, *uniform = draws
        step_size = params.step_size
        if self.jitter:
            step_size = step_size * ((1 - self.jitter) + 2 * self.jitter * uniform[0])
        kinetic0 = 0.5 * (momentum * momentum).sum(1)
        y, p, value, grad = algebra_leapfrog(value_and_grad, state.z, momentum, state.grad, step_size,
                                             params.n_leapfrog)
        *chosen, accept_prob, accepted, energy_error = reference.hmc_trajectory_end(
            y, p, grad, value, state.z, state.potential, state.grad, kinetic0, step_size, log_uniform)
        return ChainState(*chosen), Transition(accept_prob, accepted, checks.divergent(energy_error))

    # ChEES records the proposal before the Metropolis test; plain HMC does not.
    def _proposal(self, y, p, grad, step_size):
        return None

    def _transition(self, accept_prob, accepted, divergent, proposal, y0, params):
        return Transition(accept_prob, accepted, divergent)


class ChEESTransition(NamedTuple):
    """HMC's report plus what the ChEES criterion needs (unit coordinates, (B, L)): the proposal and its
    momentum after the closing half kick (before the Metropolis test), and the trajectory's start."""
    accept_prob: Tensor
    accepted: Tensor
    divergent: Tensor
    proposal: Tensor
    end_momentum: Tensor
    start: Tensor


def halton(index: int) -> float:
    """The base-2 Halton (van der Corput) number of index >= 1, in (0, 1): a low-discrepancy sequence of
    trajectory-length fractions, evener than uniform draws (as in the ChEES paper). index's bits reversed over
    2^(its bit length), exact below 2^53; ChEES's run loop calls it every iteration (0.8 us against 2.2 us for a
    loop over the bits)."""
    return int(bin(index)[:1:-1], 2) / (1 << index.bit_length())


class ChEES(HMC):
    """ChEES-HMC: HMC whose trajectory length T is adapted during warm-up by maximising the Change in the
    Estimator of the Expected Square across chains (Adam on log T), with the step size adapted by dual averaging
    of the chains' harmonic-mean acceptance towards target_accept (default 0.651). Each iteration runs
    ceil(u T / h) leapfrog steps with u from a Halton sequence in (0, 1), shared by the chains. Designed for many
    chains (the criterion averages over them): use B >= 16; a warm-up with 2-7 chains warns (a noisy T), as does
    one chain without the length floor (the criterion cannot adapt T at all;
    kale_fast.samplers.adaptation.CHEES_MIN_CHAINS).

    trajectory_length: the initial T, in the metric's units (1.0 suits a target of unit scale, which the default
    diagonal metric makes of any target); max_leapfrog caps one iteration's leapfrog steps.
    length_floor: with the adapted diagonal metric (metric="diag"), use T no shorter than a quarter period of the
    warm-up draws' slowest direction, pi/2 times their largest standard deviation in the metric's units (and no
    longer than max_leapfrog steps; BlackJAX's chees_adaptation does the same with a diagonal metric;
    kale_fast.samplers.adaptation.LENGTH_FLOOR_FACTOR): it sets T for one chain, and lengthens it where a
    diagonal metric leaves a slow correlated direction. False: the ChEES criterion alone.
    """

    name = "chees"
    default_target_accept = 0.651

    def __init__(self, step_size: Union[float, Tensor] = 0.1, *, trajectory_length: float = 1.0,
                 max_leapfrog: int = 1000, metric: Union[str, Metric] = "diag",
                 adapt_step_size: Optional[bool] = None,
                 target_accept: Optional[float] = None, length_floor: bool = True):
        super().__init__(step_size, 1, jitter=0.0, metric=metric, adapt_step_size=adapt_step_size,
                         target_accept=target_accept)
        self.trajectory_length = check_fraction("trajectory_length", trajectory_length, 0.0, math.inf)
        self.max_leapfrog = check_count("max_leapfrog", max_leapfrog, 1)
        if not isinstance(length_floor, bool):
            raise TypeError(f"length_floor must be a bool, got {type(length_floor).__name__}")
        self.length_floor = length_floor

    @property
    def needs_longest_scale(self) -> bool:
        """The floor is measured in the windows of an adapted diagonal metric (as BlackJAX's: a dense metric
        fitted to the same draws leaves a longest scale of about 1)."""
        return self.length_floor and self.metric == "diag"

    # Its leapfrog count varies: compiled whole iterations (sampling, on the CPU) take the counts as a tensor and
    # run each iteration's steps as a while_loop; its warm-up adapts T on the host (TrajectoryLengthAdaptation is
    # not traceable): eager iterations around compiled leapfrog chunks (kale_fast.samplers.compiled)
    leapfrog_count_varies = True
    host_step_size = True

    def initial_trajectory_length(self) -> Optional[float]:
        return self.trajectory_length

    def adaptations(self, warmup: int) -> List[object]:
        rules = super().adaptations(warmup)
        if warmup:
            rules.append(adaptation.TrajectoryLengthAdaptation(self.max_leapfrog, self.needs_longest_scale))
        return rules

    def params(self, tune: Tuning, iteration: int, adapting: bool) -> StepParams:
        time = halton(iteration + 1) * tune.trajectory_length
        n = min(max(math.ceil(time / tune.mean_step_size), 1), self.max_leapfrog)  # one count for all chains
        return StepParams(tune.step_size, n, time, adapting)

    def gradients_per_iteration(self) -> int:
        return self.max_leapfrog

    # The harmonic mean over chains: one chain stuck at low acceptance pulls the step size down.
    harmonic_acceptance = True

    def _proposal(self, y, p, grad, step_size):
        return y.clone(), p - 0.5 * step_size[:, None] * grad  # the momentum after the closing half kick

    def _transition(self, accept_prob, accepted, divergent, proposal, y0, params):
        if proposal is None:  # sampling: nothing to adapt
            return Transition(accept_prob, accepted, divergent)
        return ChEESTransition(accept_prob, accepted, divergent, *proposal, y0)
