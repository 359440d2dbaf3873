"""The compiled path of the samplers (`run(..., compile=True)`): torch.compile of the gradient path.

What is compiled is what costs per gradient: the potential's value and gradient in the metric's coordinates
and, for HMC, whole runs of leapfrog steps. Measured on the CPU (B = 1, L = 100, quadratic potential, 1 thread):
the fused kick-drift kernels as opaque custom ops inside a compiled trajectory cost 21 us per leapfrog step, as
each op call crosses the dispatcher from Python, while the same updates written as tensor algebra
(kale_fast.reference.integrators), which the compiler fuses with the potential into one loop, cost 2 us. So the
compiled leapfrog uses the reference updates, and the fused kernels remain the eager path's. Every compiled call
costs about 10-20 us of its own on the CPU, so HMC trajectories are compiled as chunks of leapfrog steps: n steps
run as one call when n is the sampler's fixed count, else as the binary decomposition of n (at most log2 n + 1
calls; ChEES varies n from iteration to iteration). The metric's tensors are arguments, so a new metric after a
warm-up window does not recompile.
"""
import weakref
from typing import Callable, Dict, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from kale_fast.reference import integrators as reference
from kale_fast.samplers.metric import Metric, unit_value_and_grad


def _compile(fn: Callable, name: str) -> Callable:
    """torch.compile of fn under a code object of its own. TorchDynamo keeps one cache (of at most 8 entries) per
    code object: without this, every potential's value-and-gradient and every chunk length of every potential
    would share one cache and overflow it. Shapes become dynamic after a first change (the default)."""
    fn.__code__ = fn.__code__.replace(co_name=name)
    return torch.compile(fn, fullgraph=True)


def compiled_value_and_grad(potential) -> Callable[[Tensor, Metric], Tuple[Tensor, Tensor]]:
    """(y, metric) -> (U_y(y), grad U_y(y)), compiled."""
    def value_and_grad(y: Tensor, scale: Optional[Tensor], cholesky: Optional[Tensor]):
        return unit_value_and_grad(potential, y, Metric(scale, cholesky))
    compiled = _compile(value_and_grad, "unit_value_and_grad")
    return lambda y, metric: compiled(y, metric.scale, metric.cholesky)


class CompiledLeapfrog:
    """n leapfrog steps as compiled chunks; the same contract as kale_fast.samplers.hmc.eager_leapfrog, except
    that p is not updated in place (new tensors are returned). `exact_counts` are run as one chunk."""

    def __init__(self, potential):
        self.potential = potential
        self.exact_counts = set()
        self.chunks: Dict[int, Callable] = {}
        self._kicks: Dict[Tuple[torch.device, torch.dtype], Tuple[Tensor, Tensor]] = {}

    def _chunk(self, count: int) -> Callable:
        if count not in self.chunks:
            potential = self.potential

            def chunk(y, p, grad, step_size, first_kick, scale, cholesky):
                metric = Metric(scale, cholesky)
                for i in range(count):
                    y, p = reference.leapfrog_kick_drift(y, p, grad, step_size, first_kick if i == 0 else 1.0)
                    value, grad = unit_value_and_grad(potential, y, metric)
                return y, p, value, grad

            self.chunks[count] = _compile(chunk, f"leapfrog_chunk_{count}")
        return self.chunks[count]

    def counts(self, n: int):
        """The chunk lengths that make n steps: n itself for a fixed count, else powers of two, largest first."""
        if n in self.exact_counts:
            return [n]
        return [1 << bit for bit in reversed(range(n.bit_length())) if n >> bit & 1]

    def _kick_fractions(self, like: Tensor) -> Tuple[Tensor, Tensor]:
        """0-d tensors 0.5 and 1.0: the opening kick's fraction is an argument, not a constant, so that one
        compiled chunk serves both the opening and later chunks."""
        key = (like.device, like.dtype)
        if key not in self._kicks:
            self._kicks[key] = (torch.tensor(0.5, dtype=like.dtype, device=like.device),
                                torch.tensor(1.0, dtype=like.dtype, device=like.device))
        return self._kicks[key]

    def half_kick(self, like: Tensor) -> Tensor:
        return self._kick_fractions(like)[0]

    def full_kick(self, like: Tensor) -> Tensor:
        return self._kick_fractions(like)[1]

    def bind(self, metric: Metric):
        """The leapfrog function for one metric: (y, p, grad, h, n) -> (y, p, U(y), grad U(y))."""
        def leapfrog(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: int):
            first_kick = self.half_kick(y)
            for count in self.counts(n):
                y, p, value, grad = self._chunk(count)(y, p, grad, step_size, first_kick, metric.scale,
                                                       metric.cholesky)
                first_kick = self.full_kick(y)
            return y, p, value, grad
        return leapfrog


class CompiledPaths(NamedTuple):
    value_and_grad: Callable[[Tensor, Metric], Tuple[Tensor, Tensor]]
    leapfrog: CompiledLeapfrog


# Compiled paths outlive a run, so that a warm-up run followed by a sampling run (or many short runs) of one
# potential compile once; a potential that cannot be weakly referenced (a bound method) compiles per run.
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_paths(potential) -> CompiledPaths:
    """The compiled value-and-gradient and leapfrog of a potential, made at its first use."""
    try:
        return _CACHE[potential]
    except (KeyError, TypeError):
        pass
    paths = CompiledPaths(compiled_value_and_grad(potential), CompiledLeapfrog(potential))
    try:
        _CACHE[potential] = paths
    except TypeError:
        pass
    return paths
