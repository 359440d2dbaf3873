"""The leapfrog integrator of HMC and ChEES, in its three forms, all with one contract:
`leapfrog(y, p, grad, step_size, n) -> (y, p, U(y), grad U(y))`, n steps of step h (B,) from (y, p) with grad
U(y) known, the first step opening with a half kick, the result taken before the closing half kick.

- eager_leapfrog: the fused kick-drift kernel, in place on p (a tensor the caller owns) and on a copy of y;
- algebra_leapfrog: the same updates as tensor algebra (kale_fast.reference.integrators), which torch.compile
  fuses with the potential; the body of compiled whole iterations (kale_fast.samplers.compiled);
- CompiledLeapfrog: compiled chunks of algebra steps for eager iterations of a length that varies (ChEES's
  warm-up, and its runs off the CPU) or is too long to unroll into one graph.

The potential's own whole trajectory (kale_fast.samplers.metric.UnitPotential.leapfrog: a LatentPotential of
Linear + activation stacks runs kale_fast::mlp_leapfrog, one op for all n steps) is tried first: by
algebra_leapfrog itself, and around the other two by fused_first (kale_fast.samplers.context). Where it runs, p
is not updated in place (new tensors are returned) and CompiledLeapfrog compiles nothing.
"""
from typing import Callable, Dict, Tuple, Union

import torch
from torch import Tensor

from kale_fast.reference import integrators as reference
from kale_fast.samplers.compiled import compile_function, metric_arguments, potential_reference
from kale_fast.samplers.core import ValueAndGrad
from kale_fast.samplers.metric import Metric, unit_value_and_grad

# Longest chunk of leapfrog steps unrolled into one compiled graph. Compile time grows with the unrolled length
# (a ChEES run that compiled chunks of up to 512 steps did not finish a 200-iteration warm-up in 9 minutes on a
# 100-D Gaussian) while the per-call overhead it saves is already under 10% of a step at 16.
MAX_UNROLLED_STEPS = 16


def fused_first(fused: Callable, leapfrog: Callable) -> Callable:
    """`leapfrog` with the potential's whole trajectory tried first: fused (UnitPotential.leapfrog) runs it as one
    call or returns None where it cannot, and then `leapfrog` takes the steps (eager_leapfrog or
    CompiledLeapfrog.bind's; compiled whole iterations try it in algebra_leapfrog)."""
    def leapfrog_or_fused(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: int):
        result = fused(y, p, grad, step_size, n)
        return leapfrog(y, p, grad, step_size, n) if result is None else result
    return leapfrog_or_fused


def eager_leapfrog(kernels, value_and_grad: ValueAndGrad) -> Callable:
    def leapfrog(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: int):
        y = y.clone()
        for i in range(n):
            kernels.leapfrog_kick_drift(y, p, grad, step_size, 0.5 if i == 0 else 1.0)
            value, grad = value_and_grad(y)
        return y, p, value, grad
    return leapfrog


def algebra_leapfrog(value_and_grad: ValueAndGrad, y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor,
                     n: Union[int, Tensor], first_kick=0.5):
    """n steps as tensor algebra (new tensors, nothing in place). first_kick: the first step's kick fraction, a
    float or a 0-d tensor (a tensor keeps one compiled chunk for opening and later chunks). n: an int (the steps
    unrolled), or a 0-d int64 tensor >= 1 (the steps after the first run as a torch while_loop: one compiled
    graph for any count, ChEES's whole iterations). A whole trajectory (first_kick 0.5) on a value_and_grad
    with a `leapfrog` (kale_fast.samplers.metric.UnitPotential) is that one call where it runs."""
    fused = getattr(value_and_grad, "leapfrog", None)  # UnitPotential's: a whole trajectory as one op
    if fused is not None and not isinstance(first_kick, Tensor) and first_kick == 0.5:
        result = fused(y, p, grad, step_size, n)
        if result is not None:
            return result
    if isinstance(n, Tensor):
        return _looped_leapfrog(value_and_grad, y, p, grad, step_size, n, first_kick)
    for i in range(n):
        y, p = reference.leapfrog_kick_drift(y, p, grad, step_size, first_kick if i == 0 else 1.0)
        value, grad = value_and_grad(y)
    return y, p, value, grad


def _looped_leapfrog(value_and_grad: ValueAndGrad, y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: Tensor,
                     first_kick):
    """All n >= 1 steps inside the loop, the first's kick fraction chosen by the step's index: with the first step
    outside and a loop that ran zero times (n = 1), inductor's C++ code of a graph of several such iterations
    returned wrong chains (torch 2.13; tests/samplers: compiled whole iterations against their eager algebra)."""
    from torch._higher_order_ops.while_loop import while_loop  # imports torch._dynamo: not at kale_fast's import

    def body(i, y, p, value, grad):
        y, p = reference.leapfrog_kick_drift(y, p, grad, step_size, torch.where(i == 0, first_kick, 1.0))
        return (i + 1, y, p, *value_and_grad(y))

    start, value = torch.zeros_like(n), y.new_zeros(y.shape[0])  # value: a placeholder, written by the first step
    _, y, p, value, grad = while_loop(lambda i, *carry: i < n, body, (start, y, p, value, grad))
    return y, p, value, grad


def chunk_lengths(n: int):
    """The chunk lengths that make n steps: as many MAX_UNROLLED_STEPS as fit, then the rest's binary
    decomposition, largest first (so at most log2(MAX_UNROLLED_STEPS) + 1 distinct compiled chunks)."""
    full, rest = divmod(n, MAX_UNROLLED_STEPS)
    return [MAX_UNROLLED_STEPS] * full + [1 << bit for bit in reversed(range(rest.bit_length())) if rest >> bit & 1]


class CompiledLeapfrog:
    """n leapfrog steps as compiled chunks of algebra steps (the contract above; p is not updated in place)."""

    def __init__(self, potential):
        self.potential = potential_reference(potential)  # weak: kale_fast.samplers.compiled's cache holds self
        self.chunks: Dict[int, Callable] = {}
        self._kicks: Dict[Tuple[torch.device, torch.dtype], Tuple[Tensor, Tensor]] = {}

    def _chunk(self, count: int) -> Callable:
        if count not in self.chunks:
            reference = self.potential

            def chunk(y, p, grad, step_size, first_kick, scale, cholesky):
                metric, potential = Metric(scale, cholesky), reference()
                return algebra_leapfrog(lambda y: unit_value_and_grad(potential, y, metric), y, p, grad, step_size,
                                        count, first_kick)

            self.chunks[count] = compile_function(chunk, f"leapfrog_chunk_{count}")
        return self.chunks[count]

    def _kick_fractions(self, like: Tensor) -> Tuple[Tensor, Tensor]:
        """0-d tensors 0.5 and 1.0: the opening kick's fraction is an argument, not a constant."""
        key = (like.device, like.dtype)
        if key not in self._kicks:
            self._kicks[key] = (torch.tensor(0.5, dtype=like.dtype, device=like.device),
                                torch.tensor(1.0, dtype=like.dtype, device=like.device))
        return self._kicks[key]

    def bind(self, metric: Metric) -> Callable:
        """The leapfrog function for one metric: (y, p, grad, h, n) -> (y, p, U(y), grad U(y))."""
        def leapfrog(y: Tensor, p: Tensor, grad: Tensor, step_size: Tensor, n: int):
            half, full = self._kick_fractions(y)
            first_kick = half
            for count in chunk_lengths(n):
                y, p, value, grad = self._chunk(count)(y, p, grad, step_size, first_kick,
                                                       *metric_arguments(metric, y))
                first_kick = full
            return y, p, value, grad
        return leapfrog
