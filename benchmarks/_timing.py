"""Timing, spread, load and memory helpers shared by the benchmarks.

Every figure is a median with its spread over repeats; every ratio is formed per round of interleaved repeats
(A, B, A, B, ...), so a change of machine load during the run hits both sides of a ratio alike. A spread is a
plain dict (JSON-ready): median, q1, q3 (quartiles), min, max, n (number of repeats), in the samples' unit.
"""
import math
import os
import statistics
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence

import torch

# A figure whose interquartile range exceeds this fraction of its median is flagged as noisy.
NOISY_IQR_FRACTION = 0.25
NOISY_MARK = " !"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_ms(fns: Mapping[str, Callable[[], object]], device: torch.device, budget_s: float = 0.5,
                   min_rounds: int = 5, max_rounds: int = 100, warmup: int = 3, min_sample_s: float = 1e-3,
                   clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Milliseconds per call of each of `fns`, timed in interleaved rounds: each round times every fn once, in
    order, so sample r of every fn comes from round r (pair them up for ratios). Rounds continue until
    `budget_s` has passed (at least `min_rounds`, at most `max_rounds`).

    Each fn is first called `warmup` times (compilation, caches, allocator); from the last warm-up call, it gets
    k calls per sample, k such that a sample lasts at least `min_sample_s` (timer resolution and, on GPUs, the
    launch and synchronisation overhead). GPU work is synchronised before and after each sample. `clock` is
    injectable for tests."""
    if not fns:
        raise ValueError("fns must name at least one function to time")
    if warmup < 1 or min_rounds < 1 or max_rounds < min_rounds:
        raise ValueError(f"need warmup >= 1 and 1 <= min_rounds <= max_rounds; got warmup={warmup}, "
                         f"min_rounds={min_rounds}, max_rounds={max_rounds}")

    def timed(fn: Callable[[], object], calls: int) -> float:
        _sync(device)
        start = clock()
        for _ in range(calls):
            fn()
        _sync(device)
        return clock() - start

    calls = {}
    for name, fn in fns.items():
        for _ in range(warmup - 1):
            fn()
        last = timed(fn, 1)
        calls[name] = max(1, math.ceil(min_sample_s / last)) if last > 0 else 1
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    deadline = clock() + budget_s
    for rounds in range(1, max_rounds + 1):
        for name, fn in fns.items():
            samples[name].append(1e3 * timed(fn, calls[name]) / calls[name])
        if rounds >= min_rounds and clock() >= deadline:
            break
    return samples


def spread(samples: Sequence[float]) -> dict:
    """Median, quartiles (inclusive method), min, max and count of repeated measurements."""
    if len(samples) == 0:
        raise ValueError("spread needs at least one sample")
    values = sorted(float(v) for v in samples)
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return dict(median=median, q1=q1, q3=q3, min=values[0], max=values[-1], n=len(values))


def ratio_spread(numerator: Sequence[float], denominator: Sequence[float]) -> dict:
    """Spread of the per-round ratios numerator[r] / denominator[r] of two interleaved series (same rounds)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"interleaved series must have one sample per round each; got {len(numerator)} and "
                         f"{len(denominator)} samples")
    return spread([a / b for a, b in zip(numerator, denominator)])


def scaled(samples: Sequence[float], factor: float) -> List[float]:
    """Every sample times factor (ms per run -> ms per iteration, for instance)."""
    return [factor * v for v in samples]


def is_noisy(s: dict) -> bool:
    """Whether the spread's interquartile range exceeds NOISY_IQR_FRACTION of its median."""
    return s["median"] == 0 or (s["q3"] - s["q1"]) / abs(s["median"]) > NOISY_IQR_FRACTION


def cell(s: dict, fmt: str = ".3g", suffix: str = "") -> str:
    """A table cell: `median [q1, q3]`, with NOISY_MARK when the spread is large."""
    return (f"{s['median']:{fmt}}{suffix} [{s['q1']:{fmt}}, {s['q3']:{fmt}}]"
            + (NOISY_MARK if is_noisy(s) else ""))


SPREAD_LEGEND = (f"Each figure: median [25th, 75th percentile] over repeats after warm-up; ratios per round of "
                 f"interleaved repeats (A, B, A, B, ...), then their median and quartiles; `{NOISY_MARK.strip()}` "
                 f"marks an interquartile range above {NOISY_IQR_FRACTION:.0%} of the median.")


def load_warning(load_average: float, cpus: int, threads: int, when: str = "") -> Optional[str]:
    """A warning when other work leaves the benchmark fewer idle CPUs than its threads use, else None.
    load_average: the 1-minute load average (before the run: other work; after it: including the run's own
    threads, hence `when`), cpus: CPUs available, threads: torch threads the benchmark runs."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    busy = load_average > cpus if when == "after" else load_average + threads > cpus
    if not busy:
        return None
    return (f"machine loaded{' ' + when if when else ''}: load average {load_average:.2f} on {cpus} CPUs with "
            f"{threads} benchmark thread(s); absolute timings are contended, trust the interleaved ratios and "
            f"their spreads more than single figures")


def machine_load() -> dict:
    """The 1-minute load average and the CPUs this process may run on."""
    return dict(load_average=os.getloadavg()[0], cpus=len(os.sched_getaffinity(0)))


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak device memory fn() allocates beyond what was allocated before it, in MiB; None on CPU, whose
    allocator keeps no statistics."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20
