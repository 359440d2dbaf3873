"""What every sampler shares: the chain state, results, saved state, and the `run` loop (warm-up with
step-size adaptation, thinning, progress, chunks of chains, CUDA-graph replay, resume).

A sampler subclass supplies `init_chains` (z0 -> ChainState) and `step` (one transition of all chains);
both are small and pure in the BlackJAX sense except that the fused updates reuse the state's buffers.
"""
import math
import os
import warnings
from dataclasses import dataclass, fields
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from kale_fast._io import atomic_torch_save
from kale_fast.samplers.adaptation import dual_averaging_init, dual_averaging_update
from kale_fast.samplers.diagnostics import effective_sample_size, split_rhat
from kale_fast.samplers.potentials import Potential, value_and_grad


class ChainState(NamedTuple):
    """B chains: positions z (B, L), U(z) (B,), grad U(z) (B, L), velocity (B, L) for kinetic samplers."""
    z: Tensor
    potential: Tensor
    grad: Tensor
    velocity: Optional[Tensor] = None


class Transition(NamedTuple):
    """What one step reports per chain: Metropolis acceptance probability and decision (1 and True for
    unadjusted samplers), and whether the proposal's potential was NaN or infinite."""
    accept_prob: Tensor
    accepted: Tensor
    nonfinite: Tensor


@dataclass
class SamplerState:
    """Everything a run needs to continue exactly: chains (velocity included), step sizes and RNG state.
    Warm-up adaptation completes within one run, so its averaged step is already in step_size."""
    sampler: str
    chains: ChainState
    step_size: Tensor
    generator_state: Tensor

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write atomically (a temporary file renamed over `path`), so a crash never leaves half a file."""
        atomic_torch_save({f.name: getattr(self, f.name) for f in fields(self)}, path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location=None) -> "SamplerState":
        data = torch.load(path, map_location=map_location, weights_only=False)
        data["chains"] = ChainState(*data["chains"])
        return cls(**data)


@dataclass
class SampleResult:
    """The outcome of `Sampler.run`. Acceptance and non-finite counts cover the sampling steps, not warm-up.

    z (B, L) final states; accept_rate (B,); step_size (B,) the (frozen) step sizes; potential (B,) U at z;
    n_nonfinite (B,) proposals whose potential was NaN or infinite (rejected by MALA and HMC); trace (T, B, L)
    and potential_trace (T, B) every `thin`-th state, or None; state, to continue with `run(..., state=...)`.
    """
    z: Tensor
    accept_rate: Tensor
    step_size: Tensor
    potential: Tensor
    n_nonfinite: Tensor
    trace: Optional[Tensor]
    potential_trace: Optional[Tensor]
    state: Optional[SamplerState]

    def _trace(self) -> Tensor:
        if self.trace is None:
            raise ValueError("this result has no trace: run the sampler with thin >= 1")
        return self.trace

    def rhat(self) -> Tensor:
        """Split R-hat per latent coordinate (L,)."""
        return split_rhat(self._trace())

    def ess(self) -> Tensor:
        """Effective sample size per latent coordinate (L,), over all chains."""
        return effective_sample_size(self._trace())

    def to_arviz(self):
        """An arviz.InferenceData with posterior z (chain, draw, dim) and the potential as a sample statistic."""
        try:
            import arviz
        except ImportError as error:
            raise ImportError("to_arviz needs ArviZ: pip install arviz") from error
        trace = self._trace().detach().cpu()
        return arviz.from_dict(posterior={"z": trace.transpose(0, 1).numpy()},
                               sample_stats={"potential": self.potential_trace.detach().cpu().T.numpy()})

    @staticmethod
    def concatenate(results: List["SampleResult"]) -> "SampleResult":
        """Join results of chunks of chains (the state is not kept: chunked runs resume chunk by chunk)."""
        def cat(name, dim):
            parts = [getattr(r, name) for r in results]
            return None if parts[0] is None else torch.cat(parts, dim=dim)

        return SampleResult(z=cat("z", 0), accept_rate=cat("accept_rate", 0), step_size=cat("step_size", 0),
                            potential=cat("potential", 0), n_nonfinite=cat("n_nonfinite", 0), trace=cat("trace", 1),
                            potential_trace=cat("potential_trace", 1), state=None)


def _check_count(name: str, value, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value) -> Union[float, Tensor]:
    if isinstance(value, Tensor):
        if value.dim() != 1 or not value.is_floating_point():
            raise ValueError(f"{name} must be a positive float or a (B,) floating tensor, got shape "
                             f"{tuple(value.shape)}, dtype {value.dtype}")
        if not bool(torch.all(torch.isfinite(value) & (value > 0))):
            raise ValueError(f"{name} must be finite and > 0 for every chain")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive float or a (B,) floating tensor, got {value!r}")
    return float(value)


class Sampler:
    """Base of ULA, MALA, HMC and KineticLangevin.

    step_size: a float or a (B,) tensor (one per chain), textbook convention (see each sampler). Samplers with
    a Metropolis test adapt it during warm-up when adapt_step_size=True, by dual averaging towards
    target_accept, then freeze it. Adaptation is shared across chains by default: the chains target one
    distribution, so the acceptance averaged over B chains is a far less noisy signal than one chain's
    (per-chain HMC adaptation overshoots the target acceptance, see tests/test_samplers.py);
    per_chain_adaptation=True adapts each chain on its own, for chains that target different scales.
    """

    name = "sampler"
    default_target_accept: Optional[float] = None

    def __init__(self, step_size: Union[float, Tensor], *, adapt_step_size: bool = False,
                 target_accept: Optional[float] = None, per_chain_adaptation: bool = False):
        self.step_size = _check_positive("step_size", step_size)
        if adapt_step_size and self.default_target_accept is None:
            raise ValueError(f"{type(self).__name__} has no Metropolis test, so no acceptance rate to adapt to")
        target = self.default_target_accept if target_accept is None else target_accept
        if target is not None and not 0 < target < 1:
            raise ValueError(f"target_accept must be in (0, 1), got {target!r}")
        self.adapt_step_size, self.target_accept = bool(adapt_step_size), target
        self.per_chain_adaptation = bool(per_chain_adaptation)

    # --- what a sampler defines ---------------------------------------------------------------------------

    def init_chains(self, potential: Potential, z: Tensor, generator: torch.Generator) -> ChainState:
        value, grad = value_and_grad(potential, z)
        return ChainState(z, value, grad)

    def step(self, potential: Potential, chains: ChainState, step_size: Tensor, generator: torch.Generator
             ) -> Tuple[ChainState, Transition]:
        raise NotImplementedError

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self, potential: Potential, z0: Optional[Tensor], n_steps: int, *, warmup: int = 0, thin: int = 0,
            progress: bool = False, cuda_graph: bool = False, generator: Optional[torch.Generator] = None,
            chunk_size: Optional[int] = None, state: Optional[SamplerState] = None) -> SampleResult:
        """Run B chains from z0 (B, L): `warmup` steps (adapting the step size when enabled, then freezing its
        average), then `n_steps` sampling steps. `thin` >= 1 keeps every thin-th sampling state in the trace.
        `chunk_size` runs the chains in chunks of that many to bound memory. `state` (a previous result's
        .state, or SamplerState.load) continues a run exactly, in place of z0 (a further warm-up adapts from
        its step sizes). Randomness comes from
        `generator`, or from one seeded by torch's global generator, so torch.manual_seed repeats a run.
        """
        _check_count("n_steps", n_steps, 0)
        _check_count("warmup", warmup, 0)
        _check_count("thin", thin, 0)
        if not callable(potential):
            raise TypeError(f"potential must be callable, z (B, L) -> (B,), got {type(potential).__name__}")
        if state is not None:
            if z0 is not None:
                raise ValueError("a resumed run takes its chains from `state`: pass z0=None")
            if state.sampler != self.name:
                raise ValueError(f"state comes from a {state.sampler} run, not {self.name}")
        else:
            self._check_z0(z0)
            if chunk_size is not None:
                _check_count("chunk_size", chunk_size, 1)
                if z0.shape[0] > chunk_size:
                    return SampleResult.concatenate([
                        self.run(potential, chunk, n_steps, warmup=warmup, thin=thin, progress=progress,
                                 cuda_graph=cuda_graph, generator=generator) for chunk in z0.split(chunk_size)])
        device = z0.device if state is None else state.chains.z.device
        if generator is None:  # drawn from the global generator: torch.manual_seed repeats the run
            generator = torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
        if state is not None:
            generator.set_state(state.generator_state)
            chains, step_size = state.chains, state.step_size
        else:
            chains = self._initial_chains(potential, z0.detach().clone(), generator)
            step_size = self._per_chain_step_size(z0)
        adaptation = dual_averaging_init(step_size) if self.adapt_step_size and warmup else None
        step = self._maybe_captured_step(potential, chains, step_size, generator, cuda_graph)
        accepted = torch.zeros_like(chains.potential)
        nonfinite = torch.zeros(chains.potential.shape, dtype=torch.long, device=device)
        traces, potential_traces = [], []
        total = warmup + n_steps
        with torch.no_grad(), tqdm(total=total, disable=not progress, desc=type(self).__name__) as bar:
            for i in range(total):
                chains, transition = step(chains, step_size)
                if i < warmup:
                    if adaptation is not None:
                        adaptation = dual_averaging_update(adaptation, transition.accept_prob, self.target_accept,
                                                           self.per_chain_adaptation)
                        last = i == warmup - 1
                        step_size = torch.exp(adaptation.log_step_avg if last else adaptation.log_step)
                        adaptation = None if last else adaptation
                else:
                    accepted += transition.accepted
                    nonfinite += transition.nonfinite
                    done = i - warmup + 1
                    if thin and done % thin == 0:
                        traces.append(chains.z.clone())
                        potential_traces.append(chains.potential.clone())
                if progress and (i % 10 == 0 or i == total - 1):  # reading these synchronises: only with a bar
                    bar.set_postfix(accept=f"{transition.accept_prob.mean().item():.3f}",
                                    step=f"{step_size.mean().item():.3g}")
                bar.update(1)
        saved = SamplerState(self.name, chains, step_size, generator.get_state())
        return SampleResult(
            z=chains.z, accept_rate=accepted / max(n_steps, 1), step_size=step_size, potential=chains.potential,
            n_nonfinite=nonfinite, trace=torch.stack(traces) if traces else None,
            potential_trace=torch.stack(potential_traces) if potential_traces else None, state=saved)

    # --- helpers ----------------------------------------------------------------------------------------

    @staticmethod
    def _check_z0(z0) -> None:
        if not isinstance(z0, Tensor):
            raise TypeError(f"z0 must be a (B, L) tensor, got {type(z0).__name__}")
        if z0.dim() != 2 or z0.dtype not in (torch.float32, torch.float64) or z0.numel() == 0:
            raise ValueError(f"z0 must be a non-empty (B, L) fp32 or fp64 tensor, got shape {tuple(z0.shape)}, "
                             f"dtype {z0.dtype}")
        if not bool(torch.isfinite(z0).all()):
            raise ValueError("z0 must be finite (it holds NaN or infinite entries)")

    def _initial_chains(self, potential: Potential, z: Tensor, generator: torch.Generator) -> ChainState:
        chains = self.init_chains(potential, z, generator)
        if chains.potential.shape != z.shape[:1]:
            raise ValueError(f"potential must return one value per chain, shape ({z.shape[0]},); "
                             f"got shape {tuple(chains.potential.shape)}")
        if chains.grad.shape != z.shape:
            raise ValueError(f"the potential's gradient must have z's shape {tuple(z.shape)}, "
                             f"got {tuple(chains.grad.shape)}")
        chains = ChainState(*(None if t is None else t.to(z.dtype).contiguous() for t in chains))
        if not bool(torch.isfinite(chains.potential).all()):
            raise ValueError("the potential is NaN or infinite at z0 for chains "
                             f"{torch.nonzero(~torch.isfinite(chains.potential)).flatten().tolist()[:10]}")
        return chains

    def _per_chain_step_size(self, z0: Tensor) -> Tensor:
        if isinstance(self.step_size, Tensor):
            if self.step_size.shape != z0.shape[:1] or self.step_size.device != z0.device:
                raise ValueError(f"a per-chain step_size must have shape ({z0.shape[0]},) and z0's device "
                                 f"{z0.device}, got shape {tuple(self.step_size.shape)} on {self.step_size.device}")
            return self.step_size.to(z0.dtype).clone()
        return torch.full(z0.shape[:1], self.step_size, dtype=z0.dtype, device=z0.device)

    def _maybe_captured_step(self, potential, chains, step_size, generator, cuda_graph):
        eager = lambda chains, step_size: self.step(potential, chains, step_size, generator)  # noqa: E731
        if not cuda_graph:
            return eager
        if chains.z.device.type != "cuda":
            warnings.warn("cuda_graph=True needs CUDA tensors; running the steps eagerly", stacklevel=3)
            return eager
        try:
            return _CapturedStep(eager, chains, step_size, generator)
        except Exception as error:  # capture is impossible for this potential: say so and go on eagerly
            warnings.warn(f"CUDA-graph capture failed, running the steps eagerly: {error}", stacklevel=3)
            return eager


class _CapturedStep:
    """One sampler step captured as a CUDA graph over static buffers, then replayed: the potential's forward
    and backward and the fused updates launch as one graph. The step sizes are copied into their static
    buffer before each replay, so warm-up adaptation works as in eager mode."""

    def __init__(self, eager_step, chains: ChainState, step_size: Tensor, generator: torch.Generator):
        self.static_chains = ChainState(*(None if t is None else t.clone() for t in chains))
        self.static_step = step_size.clone()
        graph = torch.cuda.CUDAGraph()
        if hasattr(graph, "register_generator_state"):
            graph.register_generator_state(generator)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuBLAS handles, Triton compiles)
            for _ in range(2):
                eager_step(ChainState(*(None if t is None else t.clone() for t in self.static_chains)), self.static_step)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            new_chains, self.transition = eager_step(self.static_chains, self.static_step)
            for target, value in zip(self.static_chains, new_chains):
                if target is not None and value is not target:
                    target.copy_(value)
        self.graph = graph

    def __call__(self, chains: ChainState, step_size: Tensor) -> Tuple[ChainState, Transition]:
        if chains is not self.static_chains:
            for target, value in zip(self.static_chains, chains):
                if target is not None and value is not target:
                    target.copy_(value)
        if step_size is not self.static_step:
            self.static_step.copy_(step_size)
        self.graph.replay()
        return self.static_chains, self.transition
