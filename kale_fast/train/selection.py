"""The sampler and the number of MCMC steps of a run's GEBM samples, chosen on validation data.

Every sampler is tuned first: a warm-up run of sampler_steps // 2 iterations from prior draws adapts what it adapts
(step size, metric, trajectory length; ULA and kinetic Langevin: MALA's warm-up, as the `sample` verb), and the
sampler is then frozen at those values. The measured chains start
afresh from prior draws z0 with the frozen sampler, so that "k steps" counts every transition the samples went
through and 0 steps are the base samples B(z0). One chain run per sampler is continued exactly segment by segment
(Sampler.run(state=...)) and its states are read at each step count of the grid: a curve costs one chain, not one
per grid point. Chains of every sampler start from the same z0 (common random numbers), so all curves share their
0-step point.
"""
import dataclasses
import math
from typing import Callable, Dict, Iterator, List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor

from kale_fast.models import GEBM
from kale_fast.samplers import LatentPotential
from kale_fast.samplers.base import Sampler
from kale_fast.train.config import SamplingConfig
from kale_fast.train.sampling import UNADJUSTED, make_sampler, unadjusted_sampler

STEP_GRID = (0, 10, 25, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)


def step_grid(max_steps: int) -> List[int]:
    """The step counts of the curves: STEP_GRID's below max_steps, then max_steps itself."""
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    return [s for s in STEP_GRID if s < max_steps] + [max_steps]


# The evaluation's budget (docs/evaluation.md, "What evaluation costs"): fixed counts, so that a run's evaluation is
# reproducible and scales with the data only through n_eval and the validation split's size.
PILOT_CHAINS = 256       # the warm-ups average over chains: this many pin the adaptation down, more only cost time
SELECTION_CHAINS = 1000  # the validation curves: at most this many chains (a share of 0.98 to +-0.5%)
EVAL_MAX_LEAPFROG = 10   # ChEES's leapfrog steps per iteration in evaluation (HMC: 5); uncapped it took 170 on the
                         # fine-tuned 8-Gaussians energy, 80 times HMC's cost for the same 100 iterations


def _capped(sampler: Sampler) -> Sampler:
    """The sampler with at most EVAL_MAX_LEAPFROG leapfrog steps per iteration (ChEES; the others are unchanged)."""
    if hasattr(sampler, "max_leapfrog"):
        sampler.max_leapfrog = min(sampler.max_leapfrog, EVAL_MAX_LEAPFROG)
    return sampler


def tuned_sampler(gebm: GEBM, sampling: SamplingConfig, name: str, generator: torch.Generator,
                  n_chains: int = PILOT_CHAINS) -> Sampler:
    """Sampler `name` frozen at what a warm-up of sampling.sampler_steps // 2 iterations of n_chains chains adapted
    (with no warm-up: as configured). ULA and kinetic Langevin, which have no acceptance rate to adapt to, take
    their step and metric from a MALA warm-up by the `sample` verb's rule (kale_fast.train.sampling). ChEES runs
    at most EVAL_MAX_LEAPFROG leapfrog steps per iteration, in its warm-up and after."""
    sampling = dataclasses.replace(sampling, sampler=name)
    warmup = sampling.sampler_steps // 2
    if warmup == 0:
        return _capped(make_sampler(sampling))
    warming = _capped(make_sampler(dataclasses.replace(sampling, sampler="mala") if name in UNADJUSTED else sampling))
    _, pilot = gebm.sample(n_chains, warming, 0, warmup=warmup, generator=generator)
    return unadjusted_sampler(name, pilot)[0] if name in UNADJUSTED else _capped(make_sampler(sampling, tuned=pilot))


class ChainPoint(NamedTuple):
    steps: int
    samples: Tensor      # B(z) of the chains after `steps` steps, (n, ...)
    accept_rate: float   # mean over chains and over the steps so far (1 for unadjusted samplers); nan at 0 steps


def chain_points(gebm: GEBM, sampler: Sampler, z0: Tensor, steps: Sequence[int],
                 generator: torch.Generator) -> Iterator[ChainPoint]:
    """The samples of chains started at z0 (n, latent_dim) after each of `steps` (increasing) steps: one chain
    run, continued segment by segment; yields as it goes (the caller scores a point before the next is run)."""
    if list(steps) != sorted(set(steps)) or steps[0] < 0:
        raise ValueError(f"steps must be distinct, increasing and >= 0, got {list(steps)}")
    potential = LatentPotential(gebm.base, gebm.energy)
    result, done, accepted = None, 0, 0.0
    for k in steps:
        if k > done:
            result = sampler.run(potential, z0 if result is None else None, k - done, generator=generator,
                                 state=None if result is None else result.state)
            accepted += result.accept_rate.mean().item() * (k - done)
            done = k
        with torch.no_grad():
            samples = gebm.base(z0 if result is None else result.z)
        yield ChainPoint(k, samples, accepted / k if k else float("nan"))


class Selection(NamedTuple):
    sampler: str
    steps: int
    value: float  # the validation metric there


def choose(curves: Dict[str, Sequence[float]], steps: Sequence[int], higher_is_better: bool = False) -> Selection:
    """The (sampler, steps) of the lowest value (the highest with higher_is_better) over the curves (one value per
    step count per sampler); ties go to fewer steps, then to the sampler listed first."""
    sign = -1.0 if higher_is_better else 1.0
    candidates: List[Tuple[float, int, int, str]] = [
        (sign * value, k, order, name) for order, (name, values) in enumerate(curves.items())
        for k, value in zip(steps, values)]
    signed, k, _, name = min(candidates)
    return Selection(name, k, sign * signed)


def mode_guarded_quality(curves: Dict[str, Dict[str, List[float]]]) -> Dict[str, List[float]]:
    """Per sampler, the high-quality share at each step count, or -inf where the samples cover fewer modes than
    the base samples (step 0) do: the mixture toys' selection metric, which collapsing onto fewer modes cannot
    win."""
    return {name: [quality if covered >= values["modes_covered"][0] else -math.inf
                   for quality, covered in zip(values["high_quality"], values["modes_covered"])]
            for name, values in curves.items()}


def curves_on(gebm: GEBM, samplers: Dict[str, Sampler], z0: Tensor, steps: Sequence[int], seed: int,
              scores: Callable[[Tensor], Dict[str, float]], clock, bar=None) -> Dict[str, Dict[str, List[float]]]:
    """Per sampler, per score name: the scores of its chain's samples at each step count. Each chain draws its
    randomness from a generator seeded with `seed`; `clock` (a StageClock) times sampling and scoring apart;
    `bar` (kale_fast.train.progress.stage's), if given, advances by one per point scored."""
    curves = {}
    for name, sampler in samplers.items():
        generator = torch.Generator(device=z0.device).manual_seed(seed)
        points = chain_points(gebm, sampler, z0, steps, generator)
        values: Dict[str, List[float]] = {}
        for _ in steps:
            with clock("sampling"):
                point = next(points)
            with clock("metrics"):
                for key, value in scores(point.samples).items():
                    values.setdefault(key, []).append(value)
            if bar is not None:
                bar.update(1)
        curves[name] = values
    return curves
