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
from kale_fast.samplers.metric import (Metric, gradient_from_unit, gradient_to_unit, position_from_unit,
                                       position_to_unit)
from kale_fast.samplers.summary import Summary, summarize, to_inference_data


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
    unadjusted samplers, which have no test), and whether the step diverged (kale_fast.samplers.checks: a NaN
    or infinite energy or gradient, or for MALA and HMC an energy error above DIVERGENCE_THRESHOLD)."""
    accept_prob: Tensor
    accepted: Tensor
    divergent: Tensor


def chains_to_unit(chains, metric: Metric):
    """A chain state re-expressed in the metric's unit coordinates (new tensors)."""
    return type(chains)(**{name: position_to_unit(metric, value) if name in POSITION_FIELDS else
                           gradient_to_unit(metric, value) if name in GRADIENT_FIELDS else value.clone()
                           for name, value in chains._asdict().items()})


def chains_from_unit(chains, metric: Metric):
    """A chain state in z's coordinates from the metric's unit coordinates (may share unchanged tensors)."""
    return type(chains)(**{name: position_from_unit(metric, value) if name in POSITION_FIELDS else
                           gradient_from_unit(metric, value) if name in GRADIENT_FIELDS else value
                           for name, value in chains._asdict().items()})


_FORMAT, _FORMATS_READ = "kale_fast.SamplerState/3", ("kale_fast.SamplerState/2", "kale_fast.SamplerState/3")


@dataclass
class SamplerState:
    """Everything a run needs to continue exactly: the chains (in z's coordinates), the adapted step sizes (B,),
    metric and trajectory length, the number of transitions done and the RNG state.

    unit_chains: the same chains in the metric's unit coordinates, as the run loop holds them. A resume
    continues from these, bit for bit: re-deriving them from z (y = z / scale, or a triangular solve) differs
    from the loop's own y in the last bit, which chaotic chains amplify. None in states saved before format 3,
    which resume from z (exactly only up to that rounding).
    """
    sampler: str
    chains: Union[ChainState, KineticChainState]
    step_size: Tensor
    metric: Metric
    trajectory_length: Optional[float]
    iteration: int
    generator_state: Tensor
    unit_chains: Optional[Union[ChainState, KineticChainState]] = None

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write atomically (a temporary file renamed over `path`), as tensors and plain data only."""
        unit = None if self.unit_chains is None else self.unit_chains._asdict()
        atomic_torch_save(dict(format=_FORMAT, sampler=self.sampler, chains=self.chains._asdict(),
                               unit_chains=unit, step_size=self.step_size, metric=self.metric._asdict(),
                               trajectory_length=self.trajectory_length, iteration=self.iteration,
                               generator_state=self.generator_state), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], map_location=None) -> "SamplerState":
        """Read a saved state (formats 2 and 3) without executing code from the file (torch.load with
        weights_only=True); a file that is not one, or whose fields are not what SamplerState.save writes, is
        refused with a ValueError. Values are checked when a run resumes from the state."""
        try:
            data = load_torch_file(path, map_location=map_location)
        except (OSError, EOFError, RuntimeError, ValueError, KeyError, UnicodeDecodeError) as error:
            # KeyError, UnicodeDecodeError: what torch.load raises on a text file or other non-archive
            raise ValueError(f"{path} is not a readable sampler state ({type(error).__name__}: {error})") from None
        if not isinstance(data, dict) or data.get("format") not in _FORMATS_READ:
            raise ValueError(f"{path} is not a sampler state written by SamplerState.save of this version "
                             "(saved states of kale_fast 0.1 cannot be resumed: run the chains again)")
        try:
            return cls(data["sampler"], _chains_from_dict(data["chains"]), data["step_size"],
                       Metric(**data["metric"]), data["trajectory_length"], data["iteration"],
                       data["generator_state"],
                       None if data.get("unit_chains") is None else _chains_from_dict(data["unit_chains"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path} is a damaged sampler state: {type(error).__name__}: {error}") from None

    def resume_chains(self, metric: Metric):
        """The chains in the unit coordinates of `metric` (self.metric checked and cast by the run loop), as new
        tensors: a copy of unit_chains, or re-derived from z for states saved without them."""
        if self.unit_chains is None:
            return chains_to_unit(self.chains, metric)
        z = position_from_unit(metric, self.unit_chains.z)  # what the run that saved the state computed
        tolerance = 1e-4 if z.dtype == torch.float32 else 1e-10  # allows another device's matmul rounding
        stored = self.chains.z  # the same tensor as z: an identity metric's state as its run left it
        if z is not stored and not bool(((z - stored).abs() <= tolerance * (1 + stored.abs())).all()):
            raise ValueError("state.unit_chains do not match state.chains under state.metric (one was changed "
                             "without the other): set state.unit_chains = None to resume from state.chains")
        return type(self.unit_chains)(*(value.clone() for value in self.unit_chains))


def _chains_from_dict(fields) -> Union[ChainState, KineticChainState]:
    if not isinstance(fields, dict):
        raise TypeError(f"chains must be a dict of tensors, got {type(fields).__name__}")
    return (KineticChainState if "velocity" in fields else ChainState)(**fields)


@dataclass
class SampleResult:
    """The outcome of `Sampler.run`. Acceptance and divergence counts cover the sampling steps, not warm-up
    (n_divergent_warmup counts warm-up's).

    z (B, L) final states; accept_rate (B,) (1 for unadjusted samplers); step_size (B,) the step sizes used
    for sampling (in the metric's units); potential (B,) U at z; n_divergent (B,) divergent transitions per
    chain (kale_fast.samplers.checks: a NaN or infinite energy or gradient, or an energy error above 1000;
    MALA and HMC reject them); trace (B, T, L) every `thin`-th state, in ArviZ's (chain, draw, dim) layout, and
    potential_trace (B, T), or None; metric and trajectory_length as adapted (HMC/ChEES); state, to continue
    with `run(..., state=...)`.
    """
    z: Tensor
    accept_rate: Tensor
    step_size: Tensor
    potential: Tensor
    n_divergent: Tensor
    n_divergent_warmup: Tensor
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

    def summary(self, prob: float = 0.9) -> Summary:
        """Per latent coordinate: mean, sd, median, the central `prob` interval, and with a trace (thin >= 1)
        mcse_mean, ess_bulk, ess_tail and r_hat (ArviZ's names and algorithms); per chain: acceptance and
        divergences. print(result.summary()) shows them as a table; .columns holds the numbers. Without a trace
        the statistics are over the chains' final states."""
        draws = self.trace if self.trace is not None else self.z[:, None, :]
        return summarize(draws, self.accept_rate, self.n_divergent, self.n_divergent_warmup, prob)

    def to_arviz(self):
        """ArviZ's data object: posterior z (chain, draw, dim) and the potential as a sample statistic."""
        return to_inference_data(self._trace(), {"potential": self.potential_trace})

    @staticmethod
    def concatenate(results: List["SampleResult"]) -> "SampleResult":
        """Join results of chunks of chains (the state is not kept: chunked runs resume chunk by chunk; the
        metric and trajectory length are the first chunk's, each chunk having adapted its own)."""
        def cat(name):
            parts = [getattr(r, name) for r in results]
            return None if parts[0] is None else torch.cat(parts, dim=0)

        first = results[0]
        return SampleResult(z=cat("z"), accept_rate=cat("accept_rate"), step_size=cat("step_size"),
                            potential=cat("potential"), n_divergent=cat("n_divergent"),
                            n_divergent_warmup=cat("n_divergent_warmup"), trace=cat("trace"),
                            potential_trace=cat("potential_trace"), metric=first.metric,
                            trajectory_length=first.trajectory_length, state=None)


def check_saved_state(state: SamplerState, sampler_name: str) -> None:
    """A resumed state must come from this sampler and hold finite chains and valid step sizes."""
    if not isinstance(state, SamplerState):
        raise TypeError(f"state must be a SamplerState (a result's .state or SamplerState.load), got "
                        f"{type(state).__name__}")
    if state.sampler != sampler_name:
        raise ValueError(f"state comes from a {state.sampler} run, not {sampler_name}")
    if not isinstance(state.chains, (ChainState, KineticChainState)):
        raise ValueError(f"state.chains must be a ChainState or KineticChainState, got {type(state.chains).__name__}")
    z = state.chains.z
    if not isinstance(z, Tensor) or z.dim() != 2 or not z.is_floating_point():
        raise ValueError("state.chains.z must be a floating (B, L) tensor")
    fields = {f"state.chains.{name}": value for name, value in _chain_fields("state.chains", state.chains, z)}
    if state.unit_chains is not None:
        if type(state.unit_chains) is not type(state.chains):
            raise ValueError(f"state.unit_chains must be a {type(state.chains).__name__} like state.chains, got "
                             f"{type(state.unit_chains).__name__}")
        # a run's own state shares the fields that the metric leaves unchanged (all of them for the identity)
        chains_fields = {id(value) for value in fields.values()}
        fields.update((f"state.unit_chains.{name}", value)
                      for name, value in _chain_fields("state.unit_chains", state.unit_chains, z)
                      if id(value) not in chains_fields)
    step = state.step_size
    if not isinstance(step, Tensor) or step.shape != z.shape[:1]:
        raise ValueError(f"state.step_size must be a ({z.shape[0]},) tensor of finite positive step sizes")
    # One test of every value at once (a resumed run's fixed cost: about 5 eager ops per field tested alone);
    # the field at fault is looked for only when it fails.
    values = torch.cat([value.reshape(-1).to(z.device) for value in (*fields.values(), step)])  # (devices as before)
    if not bool(torch.isfinite(values).all() & (step > 0).all()):
        for name, value in fields.items():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must be a finite {z.dtype} tensor of shape {tuple(value.shape)}")
        raise ValueError(f"state.step_size must be a ({z.shape[0]},) tensor of finite positive step sizes")
    length = state.trajectory_length
    if length is not None and not (isinstance(length, float) and math.isfinite(length) and length > 0):
        raise ValueError(f"state.trajectory_length must be None or a positive float, got {length!r}")
    if not isinstance(state.iteration, int) or state.iteration < 0:
        raise ValueError(f"state.iteration must be an int >= 0, got {state.iteration!r}")


def _chain_fields(name: str, chains, z: Tensor):
    """(field, value) of each field of chains like z (B, L), its type, shape and dtype checked (finiteness: by
    check_saved_state)."""
    for field, value in chains._asdict().items():
        expected = z.shape if field in POSITION_FIELDS + GRADIENT_FIELDS else z.shape[:1]
        if not isinstance(value, Tensor) or value.shape != expected or value.dtype != z.dtype:
            raise ValueError(f"{name}.{field} must be a finite {z.dtype} tensor of shape {tuple(expected)}")
        yield field, value
