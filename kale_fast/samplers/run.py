"""The run loop of every sampler: checks (once per run), warm-up adaptation on Stan's windowed schedule,
sampling with thinning, progress, chunks of chains, and exact resume. It knows samplers only through their
interface (kale_fast.samplers.base): init/step, the adaptations they declare, and for the compiled path
draws/algebra_step, which it runs k whole iterations per compiled call (kale_fast.samplers.compiled).

During a run the chains live in the metric's unit coordinates (kale_fast.samplers.metric); traces, results and
saved states are in z's coordinates.
"""
import contextlib
import itertools
import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kale_fast.samplers import adaptation, checks
from kale_fast.samplers.compiled import Report, chunk_iterations, compiled_iterations, compiled_paths, loops
from kale_fast.samplers.context import build_context
from kale_fast.samplers.core import Tuning, check_count
from kale_fast.samplers.cuda_graph import CapturedSteps
from kale_fast.samplers.leapfrog import CompiledLeapfrog
from kale_fast.samplers.metric import Metric, MetricEstimator, check_metric, position_from_unit, position_to_unit
from kale_fast.samplers.state import (SampleResult, SamplerState, chains_from_unit, chains_to_unit,
                                      check_saved_state)


def _check_z0(z0) -> Tensor:
    if not isinstance(z0, Tensor):
        raise TypeError(f"z0 must be a (B, L) floating-point tensor, got {type(z0).__name__}")
    if z0.dim() != 2 or z0.shape[0] == 0 or z0.shape[1] == 0 or z0.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"z0 must be a non-empty (B, L) fp32 or fp64 tensor, got shape {tuple(z0.shape)}, "
                         f"dtype {z0.dtype}")
    if not bool(torch.isfinite(z0).all()):
        raise ValueError("z0 must be finite")
    return z0


class _Engine:
    """How one run advances its chains: eager steps (fused kernels, optionally replayed from CUDA graphs) or, with
    compile=True, k whole compiled iterations per call where the sampler allows it, else eager steps around a
    compiled potential and leapfrog."""

    def __init__(self, sampler, potential, z: Tensor, generator: torch.Generator, compile: bool, cuda_graph: bool):
        self.sampler, self.potential, self.z, self.generator = sampler, potential, z, generator
        self.compile = compile
        if cuda_graph and z.device.type != "cuda":
            warnings.warn("cuda_graph=True needs CUDA tensors; running the steps eagerly", stacklevel=4)
            cuda_graph = False
        self.cuda_graph = cuda_graph
        mode = "reduce-overhead" if cuda_graph else None  # on CUDA, compiled iterations replay as CUDA graphs
        looped = loops(sampler, z, mode)
        self.chunk = chunk_iterations(sampler, z, mode, looped) if compile else 0
        self.aligned = not looped  # unrolled chunks start at multiples of their length
        self.iterations = None
        if self.chunk:
            paths = compiled_paths(potential, CompiledLeapfrog)
            self.iterations = compiled_iterations(paths, sampler, potential, mode)
        self.metric = self._step = None

    def set_metric(self, metric: Metric, chains, step_size: Tensor) -> None:
        self.metric, self._step = metric, None
        if self.cuda_graph and self.iterations is None and chains is not None:
            self._step = CapturedSteps(self._eager_step(), chains, step_size, self.generator)

    def _eager_step(self):
        ctx = build_context(self.potential, self.z, generator=self.generator, metric=self.metric,
                            compile=self.compile)
        return lambda state, params: self.sampler.step(state, params, ctx)

    def step(self, chains, params):
        """One eager step under the current metric (its context made at first use: runs of whole compiled
        iterations need none)."""
        if self._step is None:
            self._step = self._eager_step()
        return self._step(chains, params)

    def whole_iterations(self, rules: tuple, adapting: bool) -> bool:
        """Whether iterations run compiled whole: where the sampler allows it and every adaptation is traceable
        (or, sampling, frozen: then left out of the graph)."""
        return self.iterations is not None and (not adapting or _traceable(rules))

    def advance(self, chains, tune: Tuning, states: tuple, rules: tuple, k: int, iteration: int,
                adapting: bool) -> Tuple[object, Tuning, tuple, Report]:
        """k iterations from `iteration` on, with the adaptation rules applied when adapting:
        (chains, tune, adaptation states, Report)."""
        if self.whole_iterations(rules, adapting):
            params = [self.sampler.params(tune, iteration + i, adapting)
                      for i in range(k if self.sampler.leapfrog_count_varies else 1)]
            if _traceable(rules):  # frozen while sampling, in the graph warm-up shares
                return self.iterations(chains, tune, states, rules, adapting, self.metric, k, params, self.generator)
            chains, tune, _, report = self.iterations(chains, tune, (), (), adapting, self.metric, k, params,
                                                      self.generator)
            return chains, tune, states, report
        reports = []
        for i in range(k):
            params = self.sampler.params(tune, iteration + i, adapting)
            chains, transition = self.step(chains, params)
            if adapting:
                updated = []
                for rule, state in zip(rules, states):
                    state, tune = rule.update(state, transition, params, tune)
                    updated.append(state)
                states = tuple(updated)
            reports.append(Report.of_step(chains, transition))
        return chains, tune, states, reports[0] if k == 1 else Report(*map(torch.cat, zip(*reports)))


def _traceable(rules: tuple) -> bool:
    return all(rule.traceable for rule in rules)


def _segments(total: int, boundaries: List[int], chunk: int, first: int, aligned: bool):
    """[start, end) runs of a run's `total` iterations that end on every boundary (both counted from the run's
    start), for a chain at absolute iteration `first`, of at most `chunk` iterations. aligned (unrolled compiled
    chunks, whose graph differs with their length): chunks of exactly `chunk` iterations that start at multiples
    of `chunk` in the absolute count, single iterations elsewhere, so where the calls fall depends on the absolute
    iteration, not on where a run started: a run resumed from any state makes the unbroken run's calls from the
    next multiple of `chunk` on, and single iterations before it where the unbroken run made part of a chunk
    (bit-equal to the chunk's: tests/samplers/test_compiled_resume.py). Not aligned (eager steps, the while_loop,
    which computes every iteration with the same code): as long as fits."""
    stops = sorted(set(boundaries) | {total})
    i = 0
    while i < total:
        stop = next(s for s in stops if s > i)
        if aligned:
            k = chunk if (first + i) % chunk == 0 and i + chunk <= stop else 1
        else:
            k = min(chunk, stop - i)
        yield i, i + k
        i += k


class _Tally:
    """Per-chain counts (1, B) of reports' rows (k, B), added in batches: a report's rows are kept (as the tensors
    the step returned) and summed every FLUSH_ROWS rows and at the end, instead of one in-place addition per
    report, which cost an eager op (about 6 us here) per iteration and count. With CUDA graphs the reports are
    buffers the next replay overwrites: counted at once. Counts are integers, so the sums are exact either way."""

    FLUSH_ROWS = 64

    def __init__(self, n_chains: int, dtype: torch.dtype, device: torch.device, deferred: bool):
        self.shape, self.dtype, self.device, self.deferred = (1, n_chains), dtype, device, deferred
        # deferred: made by the first flush (one eager op less per count and run)
        self.total: Optional[Tensor] = None if deferred else self._zeros()
        self.pending: List[Tensor] = []
        self.rows = 0

    def add(self, rows: Tensor) -> None:
        if not self.deferred:
            self.total += rows if rows.shape[0] == 1 else rows.sum(0, keepdim=True)
            return
        self.pending.append(rows)
        self.rows += rows.shape[0]
        if self.rows >= self.FLUSH_ROWS:
            self.flush()

    def flush(self) -> Tensor:
        """The counts so far, (1, B)."""
        if self.pending:
            rows = self.pending[0] if len(self.pending) == 1 else torch.cat(self.pending)
            counts = rows.sum(0, keepdim=True, dtype=self.dtype)
            self.total = counts if self.total is None else self.total + counts
            self.pending, self.rows = [], 0
        if self.total is None:
            self.total = self._zeros()
        return self.total

    def _zeros(self) -> Tensor:
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)


def run_chains(sampler, potential, z0: Optional[Tensor], n_steps: int, *, warmup: int = 0, thin: int = 0,
               progress: bool = False, compile: bool = False, cuda_graph: bool = False,
               generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None,
               state: Optional[SamplerState] = None) -> SampleResult:
    """Run B chains from z0 (B, L): `warmup` steps that adapt what the sampler adapts (metric, step size,
    trajectory length; then frozen), then `n_steps` sampling steps.

    thin >= 1 keeps every thin-th sampling state in the trace, (B, T, L). chunk_size runs the chains in chunks
    of that many to bound memory. compile=True runs whole iterations through torch.compile, k per call
    (kale_fast.samplers.compiled: worth it when the potential is cheap or B small; its random draws are made
    in blocks from the generator, so its chains differ from the eager path's); cuda_graph=True replays each step
    (or compiled chunk) from a CUDA graph (CUDA tensors only). `state` (a previous result's .state, or
    SamplerState.load) continues a run exactly, in place of z0; a further warm-up adapts again from its values.
    Randomness comes from `generator`, or from one seeded by torch's global generator, so torch.manual_seed
    repeats a run; a resumed run without a generator continues from the state's and draws nothing from the
    global one.
    """
    check_count("n_steps", n_steps, 0)
    check_count("warmup", warmup, 0)
    check_count("thin", thin, 0)
    if not callable(potential):
        raise TypeError(f"potential must be callable, z (B, L) -> (B,), got {type(potential).__name__}")
    if state is not None:
        if z0 is not None:
            raise ValueError("a resumed run takes its chains from `state`: pass z0=None")
        check_saved_state(state, sampler.name)
        z = state.chains.z
    else:
        z = _check_z0(z0).detach().contiguous()
        if chunk_size is not None:
            check_count("chunk_size", chunk_size, 1)
            if z.shape[0] > chunk_size:
                return SampleResult.concatenate([
                    run_chains(sampler, potential, chunk, n_steps, warmup=warmup, thin=thin, progress=progress,
                               compile=compile, cuda_graph=cuda_graph, generator=generator)
                    for chunk in z.split(chunk_size)])
    if generator is None and state is not None:  # the state's generator state follows
        generator = torch.Generator(device=z.device)
    elif generator is None:  # drawn from the global generator: torch.manual_seed repeats the run
        generator = torch.Generator(device=z.device).manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    engine = _Engine(sampler, potential, z, generator, compile, cuda_graph)

    if state is not None:
        generator.set_state(state.generator_state)
        metric = check_metric(state.metric, z)
        tune = Tuning(state.step_size.to(z.dtype).clone(), state.trajectory_length)
        iteration = state.iteration
        chains = state.resume_chains(metric)
        engine.set_metric(metric, chains, tune.step_size)
    else:
        metric = check_metric(sampler.metric, z) if isinstance(sampler.metric, Metric) else Metric()
        tune = Tuning(_initial_step_size(sampler, z), sampler.initial_trajectory_length())
        iteration = 0
        # the first evaluation eagerly: one call is not worth a compilation of its own
        chains = sampler.init(build_context(potential, z, generator=generator, metric=metric),
                              position_to_unit(metric, z))
        _check_initial_potential(chains, z)
        engine.set_metric(metric, chains, tune.step_size)
    if sampler.host_step_size:
        tune = tune._replace(mean_step_size=float(tune.step_size.mean()))

    adapt_metric = isinstance(sampler.metric, str) and sampler.metric != "identity"
    windows = adaptation.metric_windows(warmup) if adapt_metric else []
    window_ends = {end for _, end in windows}
    estimator = None
    # The rules stay through sampling, frozen: compiled whole iterations then share one graph with warm-up.
    rules = tuple(sampler.adaptations(warmup))
    states = tuple(rule.init(tune) for rule in rules)

    # per-chain counts, (1, B)
    deferred = not engine.cuda_graph
    accepted = _Tally(z.shape[0], chains.potential.dtype, z.device, deferred)
    divergent = _Tally(z.shape[0], torch.long, z.device, deferred)
    divergent_warmup = _Tally(z.shape[0], torch.long, z.device, deferred)
    start_z, start_potential = z, chains.potential  # for the end-of-run checks (never modified in place)
    traces, potential_traces = [], []
    total = warmup + n_steps
    warmup_chunk, sampling_chunk = (engine.chunk if engine.whole_iterations(rules, adapting) else 1
                                    for adapting in (True, False))
    segments = itertools.chain(
        _segments(warmup, sorted(window_ends), warmup_chunk, iteration, engine.aligned),
        ((warmup + start, warmup + end)
         for start, end in _segments(n_steps, [], sampling_chunk, iteration + warmup, engine.aligned)))
    # tqdm only for a bar: a disabled one still costs about 40 us per run
    bar_context = tqdm(total=total, desc=type(sampler).__name__) if progress else contextlib.nullcontext()
    with torch.no_grad(), bar_context as bar:
        for start, end in segments:
            adapting = start < warmup
            chains, tune, states, report = engine.advance(chains, tune, states, rules, end - start, iteration,
                                                          adapting)
            iteration += end - start
            if adapting:
                divergent_warmup.add(report.divergent)
                for row, i in enumerate(range(start, end)):
                    if any(first <= i < last for first, last in windows):
                        if estimator is None:
                            estimator = MetricEstimator(sampler.metric, z.shape[1], z.device,
                                                        split_halves=sampler.needs_longest_scale)
                        estimator.update(position_from_unit(metric, report.z[row]))
                if end in window_ends:  # a new metric: chains re-expressed, step-size adaptation restarts
                    new_metric = estimator.metric(z.dtype) or metric  # None: no finite draw
                    chains = chains_to_unit(chains_from_unit(chains, metric), new_metric)
                    if sampler.needs_longest_scale:  # in the new metric's units; None: too few draws
                        enough = estimator.count >= adaptation.longest_scale_min_draws(z.shape[1])
                        tune = tune._replace(longest_scale=estimator.longest_scale(new_metric) if enough else None)
                    metric, estimator = new_metric, None
                    engine.set_metric(metric, chains, tune.step_size)
                    restarted = []
                    for rule, rule_state in zip(rules, states):
                        rule_state, tune = rule.restart(rule_state, tune)
                        restarted.append(rule_state)
                    states = tuple(restarted)
                if end == warmup:  # end of warm-up: the averaged values are kept
                    for rule, rule_state in zip(rules, states):
                        tune = rule.final(rule_state, tune)
            else:
                accepted.add(report.accepted)
                divergent.add(report.divergent)
                if thin:  # a report's kept rows at once (indexing copies them: reports may be reused buffers)
                    kept = [row for row, i in enumerate(range(start, end)) if (i - warmup + 1) % thin == 0]
                    if kept:
                        traces.append(position_from_unit(metric, report.z[kept]))
                        potential_traces.append(report.potential[kept])
            # reading these synchronises: only with a bar, about every 10 iterations
            if progress and ((end - 1) // 10 > (start - 1) // 10 or end == total):
                accept = (f"{report.accept_prob[-1].mean().item():.3f}" if sampler.default_target_accept is not None
                          else "unadjusted")  # ULA, kinetic Langevin: no Metropolis test, no acceptance rate
                bar.set_postfix(accept=accept, step=f"{tune.step_size.mean().item():.3g}")
            if progress:
                bar.update(end - start)

    unit = type(chains)(*(t.clone() for t in chains))
    final = chains_from_unit(unit, metric)
    step_size, trajectory_length = tune.step_size, tune.trajectory_length
    saved = SamplerState(sampler.name, final, step_size, metric, trajectory_length, iteration, generator.get_state(),
                         unit)
    result = SampleResult(
        z=final.z, accept_rate=accepted.flush()[0] / max(n_steps, 1), step_size=step_size, potential=final.potential,
        n_divergent=divergent.flush()[0], n_divergent_warmup=divergent_warmup.flush()[0],
        trace=torch.cat(traces).transpose(0, 1).contiguous() if traces else None,
        potential_trace=torch.cat(potential_traces).t().contiguous() if potential_traces else None, metric=metric,
        trajectory_length=trajectory_length, state=saved)
    checks.warn_about_run(sampler, potential, result, warmup, n_steps, start_z, start_potential)
    return result


def _initial_step_size(sampler, z: Tensor) -> Tensor:
    if isinstance(sampler.step_size, Tensor):
        if sampler.step_size.shape != z.shape[:1]:
            raise ValueError(f"a per-chain step_size must have shape ({z.shape[0]},), got "
                             f"{tuple(sampler.step_size.shape)}")
        return sampler.step_size.to(z.device, z.dtype).clone()
    return torch.full(z.shape[:1], sampler.step_size, dtype=z.dtype, device=z.device)


def _check_initial_potential(chains, z: Tensor) -> None:
    if chains.potential.shape != z.shape[:1]:
        raise ValueError(f"the potential must return one value per chain, shape ({z.shape[0]},), got "
                         f"{tuple(chains.potential.shape)}")
    if chains.grad.shape != z.shape:
        raise ValueError(f"the potential's gradient must have z's shape {tuple(z.shape)}, got "
                         f"{tuple(chains.grad.shape)}")
    if chains.potential.dtype != z.dtype or chains.grad.dtype != z.dtype:
        raise TypeError(f"the potential's value and gradient must have z's dtype {z.dtype}, got "
                        f"{chains.potential.dtype} and {chains.grad.dtype}")
    bad = ~torch.isfinite(chains.potential)
    if bool(bad.any()):
        chains_listed = torch.nonzero(bad).flatten().tolist()[:10]
        raise ValueError(f"the potential is NaN or infinite at z0 for chains {chains_listed}")
