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
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from kale_fast.reference import integrators as reference
from kale_fast.samplers.metric import Metric, unit_value_and_grad


def _compile(fn: Callable) -> Callable:
    return torch.compile(fn, fullgraph=True, dynamic=False)


def compiled_value_and_grad(potential) -> Callable[[Tensor, Metric], Tuple[Tensor, Tensor]]:
    """(y, metric) -> (U_y(y), grad U_y(y)), compiled once per run."""
    def value_and_grad(y: Tensor, scale: Optional[Tensor], cholesky: Optional[Tensor]):
        return unit_value_and_grad(potential, y, Metric(scale, cholesky))
    compiled = _compile(value_and_grad)
    return lambda y, metric: compiled(y, metric.scale, metric.cholesky)


class CompiledLeapfrog:
    """n leapfrog steps as compiled chunks; the same contract as kale_fast.samplers.hmc.eager_leapfrog, except
    that it returns new tensors rather than updating y and p in place."""

    def __init__(self, potential, exact_counts=()):
        self.potential = potential
        self.exact_counts = set(exact_counts)
        self.chunks: Dict[Tuple[int, bool], Callable] = {}

    def _chunk(self, count: int, opening: bool) -> Callable:
        key = (count, opening)
        if key not in self.chunks:
            potential = self.potential

            def chunk(y, p, grad, step_size, scale, cholesky):
                metric = Metric(scale, cholesky)
                for i in range(count):
                    y, p = reference.leapfrog_kick_drift(y, p, grad, step_size, 0.5 if opening and i == 0 else 1.0)
                    value, grad = unit_value_and_grad(potential, y, metric)
                return y, p, value, grad

            self.chunks[key] = _compile(chunk)
        return self.chunks[key]

    def counts(self, n: int):
        """The chunk lengths that make n steps: n itself for a fixed count, else powers of two, largest first."""
        if n in self.exact_counts:
            return [n]
        return [1 << bit for bit in reversed(range(n.bit_length())) if n >> bit & 1]

    def bind(self, metric: Metric):
        """The leapfrog function for one metric: (y, p, grad, h, n) -> (y, p, U(y), grad U(y))."""
        def leapfrog(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: int):
            for index, count in enumerate(self.counts(n)):
                y, p, value, grad = self._chunk(count, index == 0)(y, p, grad, step_size, metric.scale,
                                                                   metric.cholesky)
            return y, p, value, grad
        return leapfrog
