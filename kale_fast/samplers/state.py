"""The samplers' states, per-step reports, saved states and results.

Shapes: B chains of L latent coordinates; positions, gradients and velocities (B, L); per-chain values (B,).
"""
import math
import os
from dataclasses import dataclass
from typing import List, NamedTuple, Optional, Union

import torch
from torch import Tensor

from kale_fast._io import atomic_torch_save, load_torch_file
from kale_fast.samplers import diagnostics
from kale_fast.samplers.metric import Metric


class ChainState(NamedTuple):
    """ULA, MALA and HMC chains: positions z, U(z) and grad U(z)."""
    z: Tensor
    potential: Tensor
    grad: Tensor


class KineticChainState(NamedTuple):
    """Kinetic Langevin chains: ChainState's fields and the velocity, kept across steps."""
    z: Tensor
    potential: Tensor
    grad: Tensor
    velocity: Tensor


# Which fields move like positions (z = S y), like gradients (grad_y = S^T grad_z), or not at all.
POSITION_FIELDS, GRADIENT_FIELDS = ("z", "velocity"), ("grad",)


class Transition(NamedTuple):
    """What one step reports per chain (B,): Metropolis acceptance probability and decision (1 and True for
    unadjusted samplers, which have no test), and whether the proposal's potential was NaN or infinite."""
    accept_prob: Tensor
    accepted: Tensor
    nonfinite: Tensor


@dataclass
class SamplerState:
    """Everything a run needs to continue exactly: the chains (in z's coordinates), the adapted step sizes (B,),
    metric and trajectory length, the number of transitions done and the RNG state."""
    sampler: str
    chains: Union[ChainState, KineticChainState]
    step_size: Tensor
    metric: Metric
    trajectory_length: Optional[float]
    iteration: int
    generator_state: Tensor

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write atomically (a temporary file renamed over `path`), as tensors and plain data only."""
        atomic_torch_save(dict(format="kale_fast.SamplerState/2", sampler=self.sampler,
                               chains=self.chains._asdict(), step_size=self.step_size,
                               metric=self.metric._asdict(), trajectory_length=self.trajectory_length,
                               iteration=self.iteration, generator_state=self.generator_state), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location=None) -> "SamplerState":
        """Read a saved state without executing code from the file (torch.load with weights_only=True)."""
        try:
            data = load_torch_file(path, map_location=map_location)
        except (OSError, EOFError, RuntimeError, ValueError) as error:
            raise ValueError(f"{path} is not a readable sampler state ({type(error).__name__}: {error})") from error
        if not isinstance(data, dict) or data.get("format") != "kale_fast.SamplerState/2":
            raise ValueError(f"{path} is not a sampler state written by SamplerState.save of this version "
                             "(saved states of kale_fast 0.1 cannot be resumed: run the chains again)")
        fields = data["chains"]
        chains = (KineticChainState if "velocity" in fields else ChainState)(**fields)
        return cls(data["sampler"], chains, data["step_size"], Metric(**data["metric"]), data["trajectory_length"],
                   data["iteration"], data["generator_state"])


@dataclass
class SampleResult:
    """The outcome of `Sampler.run`. Acceptance and non-finite counts cover the sampling steps, not warm-up.

    z (B, L) final states; accept_rate (B,) (1 for unadjusted samplers); step_size (B,) the step sizes used
    for sampling (in the metric's units); potential (B,) U at z; n_nonfinite (B,) proposals whose potential was
    NaN or infinite (rejected by MALA and HMC); trace (B, T, L) every `thin`-th state, in ArviZ's (chain, draw,
    dim) layout, and potential_trace (B, T), or None; metric and trajectory_length as adapted (HMC/ChEES);
    state, to continue with `run(..., state=...)`.
    """
    z: Tensor
    accept_rate: Tensor
    step_size: Tensor
    potential: Tensor
    n_nonfinite: Tensor
    trace: Optional[Tensor]
    potential_trace: Optional[Tensor]
    metric: Metric
    trajectory_length: Optional[float]
    state: Optional[SamplerState]

    def _trace(self) -> Tensor:
        if self.trace is None:
            raise ValueError("this result has no trace: run the sampler with thin >= 1")
        return self.trace

    def rhat(self) -> Tensor:
        """Rank-normalised split R-hat per latent coordinate (L,) (Vehtari et al. 2021)."""
        return diagnostics.rhat(self._trace())

    def ess(self, method: str = "bulk") -> Tensor:
        """Effective sample size per latent coordinate (L,) over all chains: "bulk" or "tail"."""
        if method not in ("bulk", "tail"):
            raise ValueError(f"method must be 'bulk' or 'tail', got {method!r}")
        return (diagnostics.ess_bulk if method == "bulk" else diagnostics.ess_tail)(self._trace())

    def to_arviz(self):
        """ArviZ's data object: posterior z (chain, draw, dim) and the potential as a sample statistic."""
        return diagnostics.to_inference_data(self._trace(), {"potential": self.potential_trace})

    @staticmethod
    def concatenate(results: List["SampleResult"]) -> "SampleResult":
        """Join results of chunks of chains (the state is not kept: chunked runs resume chunk by chunk; the
        metric and trajectory length are the first chunk's, each chunk having adapted its own)."""
        def cat(name):
            parts = [getattr(r, name) for r in results]
            return None if parts[0] is None else torch.cat(parts, dim=0)

        first = results[0]
        return SampleResult(z=cat("z"), accept_rate=cat("accept_rate"), step_size=cat("step_size"),
                            potential=cat("potential"), n_nonfinite=cat("n_nonfinite"), trace=cat("trace"),
                            potential_trace=cat("potential_trace"), metric=first.metric,
                            trajectory_length=first.trajectory_length, state=None)


def check_saved_state(state: SamplerState, sampler_name: str) -> None:
    """A resumed state must come from this sampler and hold finite chains and valid step sizes."""
    if not isinstance(state, SamplerState):
        raise TypeError(f"state must be a SamplerState (a result's .state or SamplerState.load), got "
                        f"{type(state).__name__}")
    if state.sampler != sampler_name:
        raise ValueError(f"state comes from a {state.sampler} run, not {sampler_name}")
    z = state.chains.z
    if not isinstance(z, Tensor) or z.dim() != 2 or not z.is_floating_point():
        raise ValueError("state.chains.z must be a floating (B, L) tensor")
    for name, value in state.chains._asdict().items():
        expected = z.shape if value.dim() == 2 else z.shape[:1]
        if not isinstance(value, Tensor) or value.shape != expected or not bool(torch.isfinite(value).all()):
            raise ValueError(f"state.chains.{name} must be a finite tensor of shape {tuple(expected)}")
    step = state.step_size
    if (not isinstance(step, Tensor) or step.shape != z.shape[:1]
            or not bool(torch.all(torch.isfinite(step) & (step > 0)))):
        raise ValueError(f"state.step_size must be a ({z.shape[0]},) tensor of finite positive step sizes")
    length = state.trajectory_length
    if length is not None and not (isinstance(length, float) and math.isfinite(length) and length > 0):
        raise ValueError(f"state.trajectory_length must be None or a positive float, got {length!r}")
    if not isinstance(state.iteration, int) or state.iteration < 0:
        raise ValueError(f"state.iteration must be an int >= 0, got {state.iteration!r}")
