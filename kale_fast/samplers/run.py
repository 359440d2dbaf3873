"""The run loop of every sampler: checks (once per run), warm-up adaptation on Stan's windowed schedule,
sampling with thinning, progress, chunks of chains, compiled or CUDA-graph steps, and exact resume.

During a run the chains live in the metric's unit coordinates (kale_fast.samplers.metric); traces, results and
saved states are in z's coordinates.
"""
import math
import warnings
from typing import Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kale_fast.ops import integrators
from kale_fast.samplers import adaptation, checks
from kale_fast.samplers.base import Sampler, StepContext, check_count
from kale_fast.samplers.compiled import compiled_paths
from kale_fast.samplers.hmc import HMC, ChEES, eager_leapfrog
from kale_fast.samplers.metric import (Metric, MetricEstimator, check_metric, position_from_unit, position_to_unit,
                                       unit_value_and_grad)
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


class _Machinery:
    """The step functions of one run, for one metric at a time: eager fused kernels, or compiled gradient
    paths (kale_fast.samplers.compiled), optionally replayed from CUDA graphs."""

    def __init__(self, sampler: Sampler, potential, z: Tensor, generator: torch.Generator, compile: bool,
                 cuda_graph: bool):
        self.sampler, self.potential, self.generator = sampler, potential, generator
        self.kernels = integrators.kernels_for(z)
        self.compiled_value_and_grad = self.compiled_leapfrog = None
        if compile:
            paths = compiled_paths(potential)
            self.compiled_value_and_grad = paths.value_and_grad
            if isinstance(sampler, HMC):
                self.compiled_leapfrog = paths.leapfrog
                if not isinstance(sampler, ChEES):  # a fixed count runs as one chunk
                    self.compiled_leapfrog.exact_counts.add(sampler.n_leapfrog)
        self.cuda_graph = cuda_graph

    def context(self, metric: Metric) -> StepContext:
        if self.compiled_value_and_grad is not None:
            compiled = self.compiled_value_and_grad
            value_and_grad = lambda y: compiled(y, metric)  # noqa: E731
        else:
            value_and_grad = lambda y: unit_value_and_grad(self.potential, y, metric)  # noqa: E731
        leapfrog = (self.compiled_leapfrog.bind(metric) if self.compiled_leapfrog is not None
                    else eager_leapfrog(self.kernels, value_and_grad))
        return StepContext(value_and_grad, self.kernels, leapfrog, self.generator)

    def stepper(self, ctx: StepContext, state, step_size: Tensor):
        """step(state, params) for this context; captured in CUDA graphs when asked and possible."""
        eager = lambda state, params: self.sampler.step(state, params, ctx)  # noqa: E731
        if not self.cuda_graph:
            return eager
        if state.z.device.type != "cuda":
            warnings.warn("cuda_graph=True needs CUDA tensors; running the steps eagerly", stacklevel=4)
            self.cuda_graph = False
            return eager
        from kale_fast.samplers.cuda_graph import CapturedSteps

        return CapturedSteps(eager, state, step_size, self.generator)


def run_chains(sampler: Sampler, potential, z0: Optional[Tensor], n_steps: int, *, warmup: int = 0, thin: int = 0,
               progress: bool = False, compile: bool = False, cuda_graph: bool = False,
               generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None,
               state: Optional[SamplerState] = None) -> SampleResult:
    """Run B chains from z0 (B, L): `warmup` steps that adapt what the sampler adapts (metric, step size,
    trajectory length; then frozen), then `n_steps` sampling steps.

    thin >= 1 keeps every thin-th sampling state in the trace, (B, T, L). chunk_size runs the chains in chunks
    of that many to bound memory. compile=True runs the gradient path through torch.compile
    (kale_fast.samplers.compiled: worth it when the potential is cheap or B small); cuda_graph=True replays
    each step from a CUDA graph (CUDA tensors only). `state` (a previous result's .state, or SamplerState.load)
    continues a run exactly, in place of z0; a further warm-up adapts again from its values. Randomness comes
    from `generator`, or from one seeded by torch's global generator, so torch.manual_seed repeats a run.
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
    if generator is None:  # drawn from the global generator: torch.manual_seed repeats the run
        generator = torch.Generator(device=z.device).manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
    machinery = _Machinery(sampler, potential, z, generator, compile, cuda_graph)

    if state is not None:
        generator.set_state(state.generator_state)
        metric = check_metric(state.metric, z)
        step_size = state.step_size.to(z.dtype).clone()
        trajectory_length, iteration = state.trajectory_length, state.iteration
        ctx = machinery.context(metric)
        chains = state.resume_chains(metric)
    else:
        metric = check_metric(sampler.metric, z) if isinstance(sampler.metric, Metric) else Metric()
        step_size = _initial_step_size(sampler, z)
        trajectory_length, iteration = sampler.initial_trajectory_length(step_size), 0
        ctx = machinery.context(metric)
        chains = sampler.init(ctx, position_to_unit(metric, z))
        _check_initial_potential(chains, z)
    step = machinery.stepper(ctx, chains, step_size)

    adapt_metric = isinstance(sampler.metric, str) and sampler.metric != "identity"
    windows = adaptation.metric_windows(warmup) if adapt_metric else []
    window_ends = {end for _, end in windows}
    estimator = None
    dual_averaging = adaptation.dual_averaging_init(step_size) if checks.adapts_step_size(sampler, warmup) else None
    chees = adaptation.chees_init(trajectory_length) if isinstance(sampler, ChEES) and warmup else None
    # ChEES sets its leapfrog count on the host from the mean step size: read once per change, not per step.
    host_mean_step = (lambda: float(step_size.mean())) if isinstance(sampler, ChEES) else (lambda: math.nan)
    mean_step = host_mean_step()

    accepted = torch.zeros_like(chains.potential)
    divergent = torch.zeros(chains.potential.shape, dtype=torch.long, device=z.device)
    divergent_warmup = torch.zeros_like(divergent)
    start_z, start_potential = z, chains.potential  # for the end-of-run checks (never modified in place)
    traces, potential_traces = [], []
    total = warmup + n_steps
    with torch.no_grad(), tqdm(total=total, disable=not progress, desc=type(sampler).__name__) as bar:
        for i in range(total):
            adapting = i < warmup
            params = sampler.params(step_size, mean_step, trajectory_length, iteration, adapting)
            chains, transition = step(chains, params)
            iteration += 1
            if adapting:
                divergent_warmup += transition.divergent
                if dual_averaging is not None:
                    dual_averaging = adaptation.dual_averaging_update(
                        dual_averaging, sampler.acceptance_statistic(transition), sampler.target_accept)
                    step_size = torch.exp(dual_averaging.log_step)
                    mean_step = host_mean_step()
                if chees is not None:
                    gradient = float(adaptation.chees_gradient(transition, params.trajectory_time))
                    chees = adaptation.chees_update(chees, gradient, mean_step, sampler.max_leapfrog)
                    trajectory_length = math.exp(chees.log_length)
                if any(start <= i < end for start, end in windows):
                    if estimator is None:
                        estimator = MetricEstimator(sampler.metric, z.shape[1], z.device)
                    estimator.update(position_from_unit(metric, chains.z))
                if i + 1 in window_ends:  # a new metric: chains re-expressed, step-size adaptation restarts
                    new_metric = estimator.metric(z.dtype) or metric  # None: no finite draw
                    chains = chains_to_unit(chains_from_unit(chains, metric), new_metric)
                    metric, estimator = new_metric, None
                    ctx = machinery.context(metric)
                    step = machinery.stepper(ctx, chains, step_size)
                    if dual_averaging is not None:
                        step_size = torch.exp(dual_averaging.log_step_avg)
                        dual_averaging = adaptation.dual_averaging_init(step_size)
                        mean_step = host_mean_step()
                if i == warmup - 1:  # end of warm-up: the averaged values are kept
                    if dual_averaging is not None:
                        step_size = torch.exp(dual_averaging.log_step_avg)
                        mean_step = host_mean_step()
                    if chees is not None:
                        trajectory_length = math.exp(chees.log_length_avg)
                    dual_averaging = chees = None
            else:
                accepted += transition.accepted
                divergent += transition.divergent
                done = i - warmup + 1
                if thin and done % thin == 0:
                    traces.append(position_from_unit(metric, chains.z).clone())
                    potential_traces.append(chains.potential.clone())
            if progress and (i % 10 == 0 or i == total - 1):  # reading these synchronises: only with a bar
                accept = (f"{transition.accept_prob.mean().item():.3f}" if sampler.default_target_accept is not None
                          else "unadjusted")  # ULA, kinetic Langevin: no Metropolis test, no acceptance rate
                bar.set_postfix(accept=accept, step=f"{step_size.mean().item():.3g}")
            bar.update(1)

    unit = type(chains)(*(t.clone() for t in chains))
    final = chains_from_unit(unit, metric)
    saved = SamplerState(sampler.name, final, step_size, metric, trajectory_length, iteration, generator.get_state(),
                         unit)
    result = SampleResult(
        z=final.z, accept_rate=accepted / max(n_steps, 1), step_size=step_size, potential=final.potential,
        n_divergent=divergent, n_divergent_warmup=divergent_warmup,
        trace=torch.stack(traces, dim=1) if traces else None,
        potential_trace=torch.stack(potential_traces, dim=1) if potential_traces else None, metric=metric,
        trajectory_length=trajectory_length, state=saved)
    checks.warn_about_run(sampler, potential, result, warmup, n_steps, start_z, start_potential)
    return result


def _initial_step_size(sampler: Sampler, z: Tensor) -> Tensor:
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
