"""What every library's runner returns, and the ESS estimators and moment errors applied to all of them."""
import time
from dataclasses import dataclass
from typing import Tuple

import numpy as np


@dataclass(frozen=True)
class Sizes:
    """Steps per chain: warm-up (adaptation) and kept draws, for one number of chains."""
    warmup: int
    draws: int


@dataclass
class Outcome:
    """One run of one configuration: trace (chain, draw, dim) of the kept draws; warmup_s: adaptation wall
    seconds including JIT compilation (and, for JAX, the ahead-of-time compilation of the sampling loop);
    sample_s: wall seconds of the sampling loop alone; cpu_s: process CPU seconds of the sampling loop (about
    sample_s when one thread is used); grads_per_draw: gradient evaluations per draw and chain, where the
    library reports them; accept: mean acceptance probability (or rate) over the kept draws."""
    trace: np.ndarray
    warmup_s: float
    sample_s: float
    cpu_s: float
    grads_per_draw: float
    accept: float


class Stopwatch:
    """Wall and process-CPU seconds of a `with` block."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def _arviz_ess(trace: np.ndarray, method: str) -> np.ndarray:
    import arviz

    if trace.ndim != 3:
        raise ValueError(f"trace must be (chain, draw, dim), got shape {trace.shape}")
    dataset = arviz.convert_to_dataset({"z": np.asarray(trace, dtype=np.float64)})
    return np.asarray(arviz.ess(dataset, method=method)["z"].values)


def bulk_ess(trace: np.ndarray) -> np.ndarray:
    """ArviZ's rank-normalised bulk ESS of a (chain, draw, dim) trace, one value per coordinate (dim,): how well
    the draws estimate the centre of each marginal. Anti-correlated draws score above the number of draws."""
    return _arviz_ess(trace, "bulk")


def tail_ess(trace: np.ndarray) -> np.ndarray:
    """ArviZ's tail ESS of a (chain, draw, dim) trace, one value per coordinate (dim,): the smaller of the ESS of
    the 5% and 95% quantile estimates, how well the draws estimate each marginal's tails and spread."""
    return _arviz_ess(trace, "tail")


def moment_errors(trace: np.ndarray, mean: np.ndarray, var: np.ndarray) -> Tuple[float, float]:
    """(max over coordinates of |mean error| / reference sd, max over coordinates of |var / reference var - 1|)
    of the pooled draws of a (chain, draw, dim) trace."""
    draws = trace.reshape(-1, trace.shape[-1]).astype(np.float64)
    mean_err = np.abs(draws.mean(0) - mean) / np.sqrt(var)
    var_err = np.abs(draws.var(0) / var - 1)
    return float(mean_err.max()), float(var_err.max())
