"""Warm-up adaptation, separate from the samplers: the windowed schedule, dual averaging of the step size
(Hoffman & Gelman 2014, Algorithm 5) and the ChEES trajectory-length rule (Hoffman, Radul & Sountsov 2021).
The metric's estimator is kale_fast.samplers.metric.MetricEstimator. Step sizes stay on the device (no host
synchronisation); ChEES's trajectory length is a host float, since it sets the number of leapfrog steps.
"""
import math
from typing import List, NamedTuple, Tuple

import torch
from torch import Tensor

from kale_fast.samplers import checks

# Hoffman & Gelman's constants: gamma = 0.05, t0 = 10, kappa = 0.75.
GAMMA, T0, KAPPA = 0.05, 10.0, 0.75
# Stan's warm-up buffers for warm-up >= 150 iterations: fast (step size only) at the start and end, slow
# (metric) windows between, doubling. Shorter warm-ups scale them to 15% / 75% / 10%.
INIT_BUFFER, BASE_WINDOW, TERM_BUFFER = 75, 25, 50
MIN_METRIC_WARMUP = 20


def metric_windows(warmup: int) -> List[Tuple[int, int]]:
    """The slow windows [start, end) of Stan's schedule in which the metric is estimated; at each window's end
    the metric is updated and step-size adaptation restarts. Empty when warmup < 20 (too short to estimate)."""
    if warmup < MIN_METRIC_WARMUP:
        return []
    if warmup < INIT_BUFFER + BASE_WINDOW + TERM_BUFFER:
        init, base, term = int(0.15 * warmup), int(0.75 * warmup), warmup - int(0.15 * warmup) - int(0.75 * warmup)
    else:
        init, base, term = INIT_BUFFER, BASE_WINDOW, TERM_BUFFER
    windows, start, size = [], init, base
    end_of_slow = warmup - term
    while start < end_of_slow:
        end = start + size
        if end + 2 * size > end_of_slow:  # the next window would not fit: this one takes the rest
            end = end_of_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


class DualAveragingState(NamedTuple):
    log_step: Tensor        # (B,) the step size used next, log
    log_step_avg: Tensor    # (B,) the iterate average, log: the step size kept after warm-up
    error_avg: Tensor       # (B,) running average of target_accept - acceptance
    mu: Tensor              # (B,) shrinkage point, log(10 h0)
    count: int             # an int, or a 0-d tensor inside compiled iterations


def dual_averaging_init(step_size: Tensor) -> DualAveragingState:
    log_step = torch.log(step_size)
    return DualAveragingState(log_step, log_step.clone(), torch.zeros_like(step_size), log_step + math.log(10.0), 0)


def acceptance_statistic(accept_prob: Tensor, divergent: Tensor, per_chain: bool, harmonic: bool) -> Tensor:
    """What dual averaging steers towards target_accept (B,), from one step's acceptance probabilities and
    divergences (B,): each chain's own (per_chain), or one value shared by the chains: their mean, or (harmonic,
    ChEES) the harmonic mean over the chains that did not diverge times the share of them.

    Divergent transitions (acceptance 0) count as rejections, as in Stan, but never enter a harmonic mean, where
    one zero makes the statistic, and with it the step size, collapse: on a Gaussian truncated by an infinite
    wall, ChEES's step fell from 0.1 to 0.0004 (ESS 130 of 128,000 draws). Left out altogether, they let the step
    grow until most transitions diverge (HMC there: step 2.35, ESS 517, against 0.44 and ESS 80,151 counted)."""
    if per_chain:
        return accept_prob
    if not harmonic:
        return accept_prob.mean().expand_as(accept_prob)
    kept = ~divergent
    inverse = torch.where(kept, 1.0 / accept_prob.clamp_min(1e-10), torch.zeros_like(accept_prob))
    n_kept = kept.sum().to(accept_prob.dtype)
    harmonic = 1.0 / (inverse.sum() / n_kept)  # as 1 / mean(1 / a), to the bit, when no chain diverged
    statistic = torch.where(n_kept > 0, harmonic * (n_kept / accept_prob.shape[0]), torch.zeros_like(harmonic))
    return statistic.expand_as(accept_prob)


def dual_averaging_update(state: DualAveragingState, acceptance: Tensor, target_accept: float) -> DualAveragingState:
    """One update from this step's acceptance statistic (B,) (per chain, or one value shared by all chains)."""
    t = state.count + 1
    weight = 1.0 / (t + T0)
    error_avg = (1 - weight) * state.error_avg + weight * (target_accept - acceptance)
    # t is an int, or a 0-d tensor inside compiled iterations (a number there would be baked into the graph)
    log_step = state.mu - (torch.sqrt(t) if isinstance(t, Tensor) else math.sqrt(t)) / GAMMA * error_avg
    eta = t ** -KAPPA
    log_step_avg = eta * log_step + (1 - eta) * state.log_step_avg
    return DualAveragingState(log_step, log_step_avg, error_avg, state.mu, t)


# ChEES: Adam on log T with beta1 = 0 and beta2 = 0.95 and learning rate 0.025, log-space updates clipped to
# +-0.35, and the kept T a moving average of log T with weight t^-0.5 (the paper's and TFP's settings).
CHEES_LEARNING_RATE, CHEES_BETA2, CHEES_CLIP, CHEES_DECAY = 0.025, 0.95, 0.35, 0.5
# Fewer chains than this, and a warm-up that adapts T warns (TrajectoryLengthAdaptation.init). Measured on
# bench_peers' GEBM target (300 warm-up iterations, 4 seeds each, no length floor): B = 1 T 0.66-0.88 at h 0.60-0.75
# (T did not adapt: about one leapfrog step per iteration), B = 2 T 2.0-3.8, B = 4 1.9-4.0, B = 8 2.2-3.0, B = 64
# 2.35-2.49.
CHEES_MIN_CHAINS = 8

# The trajectory-length floor (BlackJAX's chees_adaptation with a diagonal metric): T is used no shorter than a
# quarter period, pi/2 sqrt(lambda), of the slowest direction of the warm-up's draws, lambda the top eigenvalue
# of their covariance in the metric's unit coordinates (a Gaussian's harmonic motion along it under unit mass has
# period 2 pi sqrt(lambda)). ChEES's criterion, averaged over all directions, settles near pi/2 for the bulk
# and under-serves a slow correlated direction that a diagonal metric leaves; with one chain it is zero and the
# floor alone sets T. Estimated at each metric window's end across two halves of its draws
# (MetricEstimator.longest_scale), from at least max(64, L) of them. BlackJAX takes the pooled covariance's own top
# eigenvalue from max(64, 2 sqrt(L)) draws, which one chain's few draws bias up: unit Gaussian, B = 1, 300 warm-up
# iterations, T 1.8 / 2.8 / 5.0 / 10.3 at L = 4 / 16 / 64 / 256 for a floor of 1.57 (ours: 1.3 / 1.2 / 2.2-3.0 /
# not engaged; with 1000 warm-up iterations at L = 256 1.8-1.9). A chain far from mixing within a window still
# overstates it (its drift is spread in both halves).
LENGTH_FLOOR_FACTOR = math.pi / 2


def longest_scale_min_draws(size: int) -> int:
    """Draws a metric window needs before its longest scale (MetricEstimator.longest_scale) sets the floor."""
    return max(64, size)


class ChEESState(NamedTuple):
    log_length: float      # log T used next
    log_length_avg: float  # the moving average: the T kept after warm-up
    grad_sq_avg: float     # Adam's second moment
    count: int


def chees_init(trajectory_length: float) -> ChEESState:
    log_length = math.log(trajectory_length)
    return ChEESState(log_length, log_length, 0.0, 0)


def chees_gradient(transition, trajectory_time: float) -> Tensor:
    """d ChEES / d log T from one ChEES iteration over B chains (a 0-d tensor):
    mean_i a_i t (|y'_i - m'|^2 - |y_i - m|^2) (y'_i - m') . p'_i / mean_i a_i, with y, y' the chains' starts and
    proposals, m, m' their means (the proposals' weighted by acceptance a), p' the proposals' momenta and t the
    trajectory's (jittered) time. Divergent chains are left out (their proposal may not be finite)."""
    weight = torch.where(transition.divergent, torch.zeros_like(transition.accept_prob), transition.accept_prob)
    finite = ~transition.divergent[:, None]
    proposal = torch.where(finite, transition.proposal, torch.zeros_like(transition.proposal))
    momentum = torch.where(finite, transition.end_momentum, torch.zeros_like(transition.end_momentum))
    proposal_mean = (weight[:, None] * proposal).sum(0) / (weight.sum() + 1e-20)
    start_centred = transition.start - transition.start.mean(0)
    proposal_centred = proposal - proposal_mean
    change = (proposal_centred * proposal_centred).sum(1) - (start_centred * start_centred).sum(1)
    per_chain = trajectory_time * change * (proposal_centred * momentum).sum(1)
    return (weight * per_chain).sum() / (weight.sum() + 1e-20)


def chees_update(state: ChEESState, gradient: float, step_size: float, max_leapfrog: int) -> ChEESState:
    """One Adam ascent step on log T; T kept <= max_leapfrog h (as in TFP). A non-finite gradient is skipped.

    No floor at h (BlackJAX's): right after each metric window, dual averaging restarts at its shrinkage point
    log(10 h), so for a few iterations h is about 10x its settled value, and a floor there dragged T up with it,
    from where Adam's +-0.025 steps on a criterion that oscillates in T never brought it back (an isotropic
    16-D Gaussian, 1024 chains: T 1.7 -> 7.1 at the window ending at iteration 100, 13.4 at the end of a
    300-iteration warm-up, where the jittered criterion peaks at T = 2.25). An iteration runs at least one
    leapfrog step whatever T (ChEES.params)."""
    t = state.count + 1
    if not math.isfinite(gradient):
        return state._replace(count=t)
    grad_sq_avg = CHEES_BETA2 * state.grad_sq_avg + (1 - CHEES_BETA2) * gradient * gradient
    corrected = grad_sq_avg / (1 - CHEES_BETA2 ** t)
    update = CHEES_LEARNING_RATE * gradient / (math.sqrt(corrected) + 1e-8)
    log_length = min(state.log_length + max(-CHEES_CLIP, min(CHEES_CLIP, update)), math.log(max_leapfrog * step_size))
    weight = t ** -CHEES_DECAY
    log_length_avg = (1 - weight) * state.log_length_avg + weight * log_length
    return ChEESState(log_length, log_length_avg, grad_sq_avg, t)


# --- the adaptations samplers declare (Sampler.adaptations): init, update after each warm-up iteration,
# restart when a metric window ends (the chains' coordinates change), final at the end of warm-up. `traceable`
# ones are pure tensor updates that compiled whole iterations run inside the graph. -------------------------

class StepSizeAdaptation:
    """Dual averaging of the step size towards target_accept, on the sampler's acceptance statistic."""
    traceable = True

    def __init__(self, target_accept: float, statistic):
        self.target_accept, self.statistic = target_accept, statistic

    def init(self, tune):
        return dual_averaging_init(tune.step_size)

    def update(self, state: DualAveragingState, transition, params, tune):
        state = dual_averaging_update(state, self.statistic(transition), self.target_accept)
        return state, tune.with_step_size(torch.exp(state.log_step))

    def restart(self, state: DualAveragingState, tune):
        step_size = torch.exp(state.log_step_avg)
        return dual_averaging_init(step_size), tune.with_step_size(step_size)

    def final(self, state: DualAveragingState, tune):
        return tune.with_step_size(torch.exp(state.log_step_avg))


class TrajectoryLengthAdaptation:
    """ChEES's trajectory length: Adam on log T, on the host (T sets the number of leapfrog steps). With
    length_floor, the T used is at least LENGTH_FLOOR_FACTOR Tuning.longest_scale (measured by the run loop at each
    metric window's end), and at most max_leapfrog h; the floor never enters Adam's state, only the T used and the
    T kept (as BlackJAX's)."""
    traceable = False

    def __init__(self, max_leapfrog: int, length_floor: bool):
        self.max_leapfrog, self.length_floor = max_leapfrog, length_floor

    def init(self, tune):
        n_chains = tune.step_size.shape[0]
        if n_chains < CHEES_MIN_CHAINS and not (n_chains == 1 and self.length_floor):  # one chain: the floor sets T
            reason = ("with one chain the criterion is zero up to rounding, so T is not adapted (it stays near "
                      "its start: about one leapfrog step per iteration at the adapted step, MALA's mixing; the "
                      "length floor, which needs the diagonal metric adapted, would set it)"
                      if n_chains == 1 else
                      f"with {n_chains} chains its estimate is noisy, and T varies up to 2x from seed to seed")
            checks.warn(f"ChEES with B = {n_chains} chain{'s' if n_chains > 1 else ''}: its trajectory length T is "
                        f"adapted from the spread of the chains around their mean (the ChEES criterion), and "
                        f"{reason}. Run B >= 16 chains, or HMC(step_size, n_leapfrog) with a trajectory length of "
                        f"your choosing")
        return chees_init(tune.trajectory_length)

    def _used(self, log_length: float, tune) -> float:
        """T for the next iterations: exp(log_length), floored, then capped (the floor may exceed the cap)."""
        length = math.exp(log_length)
        if self.length_floor and tune.longest_scale is not None:
            length = min(max(length, LENGTH_FLOOR_FACTOR * tune.longest_scale), self.max_leapfrog * tune.mean_step_size)
        return length

    def update(self, state: ChEESState, transition, params, tune):
        if transition.start.shape[0] == 1:
            # one chain: the criterion is zero, its computed value rounding, which Adam's normalisation would turn
            # into full-size steps (T random-walked from 1.5 to 1.1-1.8 over 500 iterations on bench_peers' GEBM)
            state = state._replace(count=state.count + 1)
        else:
            gradient = float(chees_gradient(transition, params.trajectory_time))
            state = chees_update(state, gradient, tune.mean_step_size, self.max_leapfrog)
        return state, tune._replace(trajectory_length=self._used(state.log_length, tune))

    def restart(self, state: ChEESState, tune):  # a new metric, and with it a new longest scale (or None)
        return state, tune._replace(trajectory_length=self._used(state.log_length, tune))

    def final(self, state: ChEESState, tune):
        if self.length_floor and tune.step_size.shape[0] == 1 and tune.longest_scale is None:
            checks.warn("ChEES with B = 1 chain: its trajectory length T is set by the length floor, measured in "
                        "the warm-up's metric windows, and no window had the draws it needs "
                        "(kale_fast.samplers.adaptation.longest_scale_min_draws: max(64, L); for L <= 64, warm-ups "
                        "of 86-149 or >= 214 iterations have one), so T was not adapted. Run a longer "
                        "warm-up, B >= 16 chains, or HMC(step_size, n_leapfrog) with a trajectory length of your "
                        "choosing")
        return tune._replace(trajectory_length=self._used(state.log_length_avg, tune))
