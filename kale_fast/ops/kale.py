"""Fused KALE objective and log-mean-exp: autograd ops over the backends' kernels.

Users have one way in, kale_loss and log_mean_exp: they validate their arguments, flatten to the kernels' layout
(1-D for kale_loss, (R, K) rows for log_mean_exp) and run the kernels of the backend chosen for the call
(kale_fast.ops._backend). Inside, one door per regime, all over the same kernel contract (declared below with
its fake rules): under torch.compile a torch.library custom op with registered autograd and fake rules, which
the compiler keeps as one opaque node; in eager mode a torch.autograd.Function (its Python overhead a third of a
custom op's, which matters in the launch-bound training-batch regime; torch.func transforms go through it), and
for kale_loss on the C++ and CUDA backends, where no transform is active, the kernels with their autograd in C++
(kale_loss_autograd), whose backward enters no Python.
Gradients: the first-order backward runs the backend's kernels, from the forward's fp32 (fp64) results
whatever the input dtype; a backward with create_graph=True (double backward, torch.func.grad of a grad)
runs the reference backend's backward instead, written in differentiable torch ops, so that higher
derivatives are exact on every backend (eager mode; torch.compile does not support double backward).

One module of over 300 lines, on purpose: it is one op family's column (kale_loss and log_mean_exp share the
backward-backend rule, the cheap apply and the registrations), and each op's Function, custom op and rules read
best side by side.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch._functorch.utils import unwrap_dead_wrappers

from kale_fast.ops import _checks
from kale_fast.ops._backend import cpp_runs_on_cpu, resolve
from kale_fast.ops._dtypes import accumulation_dtype
from kale_fast.ops._kernels import composite_op, define_composite_implicit, kernel_op, kernels, traceable_kernels

_FAMILY = "kale"


# --- the kernel contract (schemas: csrc/op_schemas.cpp; kernels: csrc/kale.cpp, kernels/kale.cu,
# triton_kernels/kale.py, reference/kernels.py): each op's fake rule, its output shapes and dtypes ---------------

@kernel_op(_FAMILY, "kale_loss_forward")
def _(e_data, e_gen, log_partition):
    acc = accumulation_dtype(e_gen.dtype)
    return e_gen.new_empty((), dtype=acc), e_gen.new_empty((2,), dtype=acc)


@kernel_op(_FAMILY, "kale_loss_backward")
def _(grad, e_data, e_gen, log_partition, state):
    return e_data.new_empty(()).expand(e_data.shape), torch.empty_like(e_gen), state.new_empty(())


@kernel_op(_FAMILY, "log_mean_exp_forward")
def _(x):
    return x.new_empty(x.shape[:1], dtype=accumulation_dtype(x.dtype))


@kernel_op(_FAMILY, "log_mean_exp_backward")
def _(grad, x, out):
    return torch.empty_like(x)


def _backward_backend(ctx) -> str:
    """The backend of an eager backward: the forward's, or "reference" (differentiable torch ops) when grad
    mode is on, i.e. the backward was called with create_graph=True and must itself be differentiable."""
    return "reference" if torch.is_grad_enabled() else ctx.backend


def _cheap_apply(function):
    """function.apply without the Python prologue that autograd.Function.apply runs for setup_context-style
    Functions (inspect.signature(forward).bind on every call: about 70 us of a 100 us op at small sizes, measured
    on one CPU thread): where no functorch transform is active, the C-level apply that the prologue ends in, after
    the same unwrapping of dead functorch wrappers; under a transform (grad, vmap, ...), function.apply itself.
    For Functions whose forward takes every argument positionally and has no defaults, as here."""
    c_apply = super(torch.autograd.Function, function).apply

    def apply(*args):
        if torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        return c_apply(*unwrap_dead_wrappers(args))

    return apply


# --- kale_loss -------------------------------------------------------------------------------------------
# Both front doors return the loss in the accumulation dtype; kale_loss casts it to the energies' dtype
# outside them, so that the backward receives, and its kernels use, fp32 (fp64) values only.


def _kale_loss_forward(e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor], backend: str):
    """(loss, state) in the accumulation dtype: the 0-dim loss and the (2,) (max, sum) state of the log-sum-exp of
    -e_gen - A (A absent: -e_gen) that the backward needs; inputs 1-D contiguous. The C++ kernel's state with A
    holds a reference at most the max (0 where the terms allow it) in place of the max: the same log-sum-exp."""
    return kernels(backend, _FAMILY).kale_loss_forward(e_data, e_gen, log_partition)


def _kale_loss_backward(grad: Tensor, e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor], state: Tensor,
                        backend: str, backend_kernels=kernels):
    """(d e_data, d e_gen, d log_partition or None). d e_data is the constant grad / N expanded to e_data's shape
    (stride 0, as torch's own sum backward returns): nothing N-sized is written for it."""
    grad_data, grad_gen, grad_a = backend_kernels(backend, _FAMILY).kale_loss_backward(
        grad, e_data, e_gen, log_partition, state)
    return grad_data, grad_gen, grad_a if log_partition is not None else None


def _kale_loss_setup_context(ctx, inputs, output):
    e_data, e_gen, log_partition, backend = inputs
    ctx.save_for_backward(e_data, e_gen, log_partition, output[1])
    ctx.backend = backend
    ctx.mark_non_differentiable(output[1])


class _KaleLoss(torch.autograd.Function):
    """(loss, state) of the backend's kernels; state is a non-differentiable output kept for the backward.
    setup_context style, so that torch.func transforms (grad, jacrev, vmap) accept it."""

    @staticmethod
    def forward(e_data, e_gen, log_partition, backend):
        return _kale_loss_forward(e_data, e_gen, log_partition, backend)

    setup_context = staticmethod(_kale_loss_setup_context)

    @staticmethod
    def backward(ctx, grad_loss, _grad_state):
        e_data, e_gen, log_partition, state = ctx.saved_tensors
        return (*_kale_loss_backward(grad_loss, e_data, e_gen, log_partition, state, _backward_backend(ctx)), None)

    @staticmethod
    def vmap(info, in_dims, e_data, e_gen, log_partition, backend):
        """torch.func.vmap: one call per batch element (the kernels reduce one 1-D pair of energies)."""
        def element(t, dim, i):
            return t if dim is None else t.select(dim, i).contiguous()

        inputs = list(zip((e_data, e_gen, log_partition), in_dims))
        results = [_KaleLoss.apply(*[element(t, dim, i) for t, dim in inputs], backend) for i in range(info.batch_size)]
        return tuple(torch.stack(parts) for parts in zip(*results)), (0, 0)


_kale_loss_apply = _cheap_apply(_KaleLoss)


@torch.library.custom_op("kale_fast::kale_loss", mutates_args=())
def _kale_loss_op(e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor],
                  backend: str) -> Tuple[Tensor, Tensor]:
    return _kale_loss_forward(e_data, e_gen, log_partition, backend)


@_kale_loss_op.register_fake
def _(e_data, e_gen, log_partition, backend):
    acc = accumulation_dtype(e_gen.dtype)
    return e_data.new_empty((), dtype=acc), e_gen.new_empty((2,), dtype=acc)


def _kale_loss_op_grad(ctx, grad_loss, _grad_state):
    e_data, e_gen, log_partition, state = ctx.saved_tensors
    return (*_kale_loss_backward(grad_loss, e_data, e_gen, log_partition, state, ctx.backend, traceable_kernels),
            None)


torch.library.register_autograd("kale_fast::kale_loss", _kale_loss_op_grad, setup_context=_kale_loss_setup_context)


# The eager door of the C++ and CUDA backends where no torch.func transform is active: the kernels with their
# autograd in C++ (csrc/kale_autograd.cpp), whose backward enters no Python; a Python autograd.Function's forward,
# setup_context and backward cost more than the kernels at training-batch sizes. Its create_graph=True backward
# calls the reference's differentiable closed forms through kale_loss_backward_differentiable.
_kale_loss_autograd = composite_op("kale_loss_autograd", lambda e_data, e_gen, log_partition: e_gen.new_empty(
    (), dtype=accumulation_dtype(e_gen.dtype)))
_CPP_AUTOGRAD_BACKENDS = ("cpp", "cuda") if _kale_loss_autograd is not None else ()
# The same door for kale_loss's most common eager call (no A, the C++ backend by keyword or in force), entered from
# Python without the checks, backend resolution and torch.ops call below (csrc/kale_autograd.cpp: it returns None
# for any other call, e.g. CUDA or (N, 1) energies); None in older builds.
try:
    from kale_fast._C import kale_loss_eager as _kale_loss_eager
except ImportError:
    _kale_loss_eager = None
define_composite_implicit(
    "kale_loss_backward_differentiable",
    "(Tensor grad, Tensor e_data, Tensor e_gen, Tensor? log_partition, Tensor state) -> (Tensor, Tensor, Tensor)",
    lambda *args: kernels("reference", _FAMILY).kale_loss_backward(*args))


def kale_loss(e_data: Tensor, e_gen: Tensor, log_partition: Union[Tensor, float, None] = None, *,
              backend: Optional[str] = None) -> Tensor:
    """The energy's KALE loss -F(E, A), a 0-dim tensor in the energies' dtype.

    Args:
        e_data: energies E(x) of data samples, one per sample: (N,) or (N, 1), floating point.
        e_gen: energies E(B(z)) of base samples, (M,) or (M, 1), same dtype and device as e_data.
        log_partition: A, a one-element tensor (any floating dtype, e.g. an fp32 parameter beside bf16
            energies) or a Python number; None selects the Donsker-Varadhan form.
        backend: the implementation for this call ("auto", "reference", "cpp", "triton", "cuda"); None: the one
            in force (kf.backend blocks, kf.set_backend).

    Returns mean(e_data) + A + mean(exp(-(e_gen + A))) - 1, or mean(e_data) + log(mean(exp(-e_gen))) when A
    is None. Differentiable in e_data, e_gen and A; accumulates in fp32 (fp64 for fp64 inputs).
    """
    if (log_partition is None and _kale_loss_eager is not None and not torch.compiler.is_compiling()
            and cpp_runs_on_cpu(backend) and not torch._C._are_functorch_transforms_active()
            and not torch._C._is_torch_function_mode_enabled()):
        loss = _kale_loss_eager(e_data, e_gen)  # None unless 1-D CPU energies, the common case
        if loss is not None:
            return loss
    if not _common_energies(e_data, e_gen):  # the checks in full, naming what is wrong
        _check_energies(e_data, e_gen)
    acc = accumulation_dtype(e_gen.dtype)
    if log_partition is not None and not (isinstance(log_partition, Tensor) and log_partition.dim() == 0
                                          and log_partition.dtype == acc and log_partition.device == e_gen.device):
        if isinstance(log_partition, (int, float)) and not isinstance(log_partition, bool):
            log_partition = torch.tensor(float(log_partition), dtype=acc, device=e_gen.device)
        _checks.floating_tensor("log_partition", log_partition)
        _checks.same_device("log_partition", log_partition, "e_gen", e_gen)
        if log_partition.numel() != 1:
            raise ValueError(f"log_partition must be a scalar (one element), got {_checks.describe(log_partition)}")
        log_partition = log_partition.reshape(()).to(acc)
    backend = resolve(e_gen.device, backend)
    # (1-D inputs, the common case, skip the reshape: a new view per call costs more than the kernels at N ~ 1e3)
    e_data = (e_data if e_data.dim() == 1 else e_data.reshape(-1)).contiguous()
    e_gen = (e_gen if e_gen.dim() == 1 else e_gen.reshape(-1)).contiguous()
    if torch.compiler.is_compiling():
        loss = _kale_loss_op(e_data, e_gen, log_partition, backend)[0]
    elif backend in _CPP_AUTOGRAD_BACKENDS and not torch._C._are_functorch_transforms_active():
        loss = _kale_loss_autograd(e_data, e_gen, log_partition)
    else:
        loss = _kale_loss_apply(e_data, e_gen, log_partition, backend)[0]
    return loss if loss.dtype == e_data.dtype else loss.to(e_data.dtype)


def _common_energies(e_data, e_gen) -> bool:
    """Whether (e_data, e_gen) are what training passes, non-empty 1-D floating tensors of one dtype and device:
    one quick test, so that the checks cost little beside kernels of a few microseconds."""
    return (isinstance(e_data, Tensor) and isinstance(e_gen, Tensor) and e_data.dim() == 1 == e_gen.dim()
            and e_data.dtype == e_gen.dtype and e_data.dtype.is_floating_point and e_data.device == e_gen.device
            and e_data.numel() > 0 < e_gen.numel())


def _check_energies(e_data, e_gen) -> None:
    _checks.floating_tensor("e_data", e_data)
    _checks.floating_tensor("e_gen", e_gen)
    _checks.same_device("e_data", e_data, "e_gen", e_gen)
    _checks.same_dtype("e_data", e_data, "e_gen", e_gen)
    for name, energies in (("e_data", e_data), ("e_gen", e_gen)):
        if any(size != 1 for size in energies.shape[1:]):  # (N, 2): an energy net with 2 outputs, not 2N energies
            raise ValueError(f"{name} must hold one energy per sample, shape (N,) or (N, 1), got "
                             f"{_checks.describe(energies)}: does the energy network end in more than one output?")


def traceable_kale_loss(e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor] = None) -> Tensor:
    """kale_loss's value in plain torch ops, for code that torch.compile traces through torch.func transforms
    (train/compiled_steps.py: the custom op above cannot be traced there, torch 2.13; at a few hundred energies
    inductor's fused loop is as fast). The stable log-sum-exp form: mean(e_data) + A + exp(log mean exp(-e_gen)
    - A) - 1, or mean(e_data) + log mean exp(-e_gen) without A (log_partition None), accumulated and returned in
    the accumulation dtype (fp32, fp64 for fp64 energies). Unlike kale_loss it does not guard the means against
    overflow for energies near the dtype's largest values."""
    acc = accumulation_dtype(e_gen.dtype)
    e_data, e_gen = e_data.to(acc), e_gen.to(acc).reshape(-1)
    log_mean = torch.logsumexp(-e_gen, 0) - math.log(e_gen.numel())
    if log_partition is None:
        return e_data.mean() + log_mean
    a = log_partition.to(acc).reshape(())
    return e_data.mean() + a + torch.exp(log_mean - a) - 1


# --- log_mean_exp ----------------------------------------------------------------------------------------

# Both front doors return the accumulation dtype (fp32, fp64 for fp64 rows); log_mean_exp casts outside them,
# so that the backward gets the forward's unrounded result and an unrounded incoming gradient.

def _log_mean_exp_forward(rows: Tensor, backend: str) -> Tensor:
    """(R,) log(mean(exp(rows), dim=1)) in the accumulation dtype; rows (R, K) contiguous."""
    return kernels(backend, _FAMILY).log_mean_exp_forward(rows)


def _log_mean_exp_backward(grad: Tensor, rows: Tensor, out: Tensor, backend: str, backend_kernels=kernels) -> Tensor:
    """d rows, in rows' dtype; grad and out (R,) in the accumulation dtype."""
    return backend_kernels(backend, _FAMILY).log_mean_exp_backward(grad.contiguous(), rows, out)


def _log_mean_exp_setup_context(ctx, inputs, output):
    rows, backend = inputs
    ctx.save_for_backward(rows, output)
    ctx.backend = backend


class _LogMeanExpRows(torch.autograd.Function):
    """setup_context style, so that torch.func transforms accept it."""

    @staticmethod
    def forward(rows, backend):
        return _log_mean_exp_forward(rows, backend)

    setup_context = staticmethod(_log_mean_exp_setup_context)

    @staticmethod
    def backward(ctx, grad):
        rows, out = ctx.saved_tensors
        return _log_mean_exp_backward(grad, rows, out, _backward_backend(ctx)), None

    @staticmethod
    def vmap(info, in_dims, rows, backend):
        """torch.func.vmap: the batch's rows are more rows, (B * R, K)."""
        batched = rows.movedim(in_dims[0], 0)
        out = _LogMeanExpRows.apply(batched.reshape(-1, batched.shape[-1]).contiguous(), backend)
        return out.reshape(batched.shape[:2]), 0


_log_mean_exp_rows_apply = _cheap_apply(_LogMeanExpRows)


@torch.library.custom_op("kale_fast::log_mean_exp_rows", mutates_args=())
def _log_mean_exp_rows_op(rows: Tensor, backend: str) -> Tensor:
    return _log_mean_exp_forward(rows, backend)


@_log_mean_exp_rows_op.register_fake
def _(rows, backend):
    return rows.new_empty((rows.shape[0],), dtype=accumulation_dtype(rows.dtype))


def _log_mean_exp_op_grad(ctx, grad):
    rows, out = ctx.saved_tensors
    return _log_mean_exp_backward(grad, rows, out, ctx.backend, traceable_kernels), None


torch.library.register_autograd(
    "kale_fast::log_mean_exp_rows", _log_mean_exp_op_grad, setup_context=_log_mean_exp_setup_context)


def _reduced_dims(dim: Union[int, Sequence[int], None], ndim: int) -> Tuple[int, ...]:
    """The reduced dimensions, sorted and non-negative. (No generator expressions: torch.compile traces this.)"""
    if dim is None:
        return tuple(range(ndim))
    dims = [dim] if isinstance(dim, int) and not isinstance(dim, bool) else dim
    if not isinstance(dims, (list, tuple)) or not all([isinstance(d, int) and not isinstance(d, bool) for d in dims]):
        raise TypeError(f"dim must be None, an int or a sequence of ints, got {dim!r}")
    if len(dims) == 0:
        raise ValueError("dim must name at least one dimension; use dim=None to reduce over all elements")
    rank = max(ndim, 1)  # a 0-dim tensor accepts dim 0 and -1, as in torch
    if not all([-rank <= d < rank for d in dims]):
        raise ValueError(f"dim {dim!r} is out of range for a tensor with {ndim} dimensions")
    normalized = sorted([d % rank for d in dims])
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"dim {dim!r} names a dimension twice")
    return tuple(normalized) if ndim else ()


def log_mean_exp(x: Tensor, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False, *,
                 backend: Optional[str] = None) -> Tensor:
    """Stable log(mean(exp(x))) over `dim` (every element when None), in x's dtype, fp32/fp64 accumulation.

    Shapes follow torch.logsumexp: the reduced dimensions are removed, or kept with size 1 if `keepdim`.
    `backend` names the implementation for this call (None: the one in force), as for kale_loss.
    """
    _checks.floating_tensor("x", x)
    if not isinstance(keepdim, bool):
        raise TypeError(f"keepdim must be a bool, got {type(keepdim).__name__}")
    dims = _reduced_dims(dim, x.dim())
    backend = resolve(x.device, backend)
    kept = [d for d in range(x.dim()) if d not in dims]
    n_rows = math.prod([x.shape[d] for d in kept])
    rows = x.permute(kept + list(dims)).reshape(n_rows, -1).contiguous()
    if torch.compiler.is_compiling():
        out = _log_mean_exp_rows_op(rows, backend)
    else:
        out = _log_mean_exp_rows_apply(rows, backend)
    out = out.to(x.dtype)
    if keepdim:
        return out.reshape([1 if d in dims else x.shape[d] for d in range(x.dim())])
    return out.reshape([x.shape[d] for d in kept])
