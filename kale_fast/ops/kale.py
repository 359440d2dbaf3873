"""Fused KALE objective and log-mean-exp: autograd ops over the backends' kernels.

The public functions validate their arguments, flatten to the kernels' layout (1-D for kale_loss, (R, K)
rows for log_mean_exp) and run the kernels of the backend chosen for the device (kale_fast.ops._backend).
Each op has two front doors over the same kernel calls: in eager mode a torch.autograd.Function (its Python
overhead is a third of a custom op's, which matters in the launch-bound training-batch regime), and under
torch.compile a torch.library custom op with registered autograd and fake rules, which the compiler keeps
as one opaque node. Every backend, "reference" included, runs behind the same kernel contract.
Gradients are first order (the backward kernels are not themselves differentiable).
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from kale_fast.ops import _checks
from kale_fast.ops._backend import kernels, resolve, traceable_kernels
from kale_fast.reference.kale import accumulation_dtype

_FAMILY = "kale"


# --- kale_loss -------------------------------------------------------------------------------------------

def _kale_loss_forward(e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor], backend: str):
    """(loss in e_data's dtype, lse = log sum exp(-e_gen) in the accumulation dtype); inputs 1-D contiguous."""
    loss, lse = kernels(backend, _FAMILY).kale_loss_forward(e_data, e_gen, log_partition)
    return loss.to(e_data.dtype), lse


def _kale_loss_backward(grad: Tensor, e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor], lse: Tensor,
                        backend: str, backend_kernels=kernels):
    """(d e_data, d e_gen, d log_partition); the last is zero when log_partition is None."""
    return backend_kernels(backend, _FAMILY).kale_loss_backward(grad, e_data, e_gen, log_partition, lse)


class _KaleLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e_data, e_gen, log_partition, backend):
        loss, lse = _kale_loss_forward(e_data, e_gen, log_partition, backend)
        ctx.save_for_backward(e_data, e_gen, log_partition, lse)
        ctx.backend = backend
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        e_data, e_gen, log_partition, lse = ctx.saved_tensors
        grad_data, grad_gen, grad_a = _kale_loss_backward(grad, e_data, e_gen, log_partition, lse, ctx.backend)
        return grad_data, grad_gen, grad_a if log_partition is not None else None, None


@torch.library.custom_op("kale_fast::kale_loss", mutates_args=())
def _kale_loss_op(e_data: Tensor, e_gen: Tensor, log_partition: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor]:
    return _kale_loss_forward(e_data, e_gen, log_partition, backend)


@_kale_loss_op.register_fake
def _(e_data, e_gen, log_partition, backend):
    return e_data.new_empty(()), e_gen.new_empty((), dtype=accumulation_dtype(e_gen.dtype))


def _kale_loss_setup_context(ctx, inputs, output):
    e_data, e_gen, log_partition, backend = inputs
    ctx.save_for_backward(e_data, e_gen, log_partition, output[1])
    ctx.backend = backend
    ctx.mark_non_differentiable(output[1])


def _kale_loss_op_grad(ctx, grad_loss, _grad_lse):
    e_data, e_gen, log_partition, lse = ctx.saved_tensors
    grad_data, grad_gen, grad_a = _kale_loss_backward(grad_loss, e_data, e_gen, log_partition, lse, ctx.backend,
                                                 traceable_kernels)
    return grad_data, grad_gen, grad_a if log_partition is not None else None, None


torch.library.register_autograd("kale_fast::kale_loss", _kale_loss_op_grad, setup_context=_kale_loss_setup_context)


def kale_loss(e_data: Tensor, e_gen: Tensor, log_partition: Union[Tensor, float, None] = None) -> Tensor:
    """The energy's KALE loss -F(E, A), a 0-dim tensor in the energies' dtype.

    Args:
        e_data: energies E(x) of data samples, any shape (N elements), floating point.
        e_gen: energies E(B(z)) of base samples, any shape (M elements), same dtype and device as e_data.
        log_partition: A, a one-element tensor (any floating dtype, e.g. an fp32 parameter beside bf16
            energies) or a Python number; None selects the Donsker-Varadhan form.

    Returns mean(e_data) + A + mean(exp(-(e_gen + A))) - 1, or mean(e_data) + log(mean(exp(-e_gen))) when A
    is None. Differentiable in e_data, e_gen and A; accumulates in fp32 (fp64 for fp64 inputs).
    """
    _checks.floating_tensor("e_data", e_data)
    _checks.floating_tensor("e_gen", e_gen)
    _checks.same_device("e_data", e_data, "e_gen", e_gen)
    _checks.same_dtype("e_data", e_data, "e_gen", e_gen)
    acc = accumulation_dtype(e_gen.dtype)
    if log_partition is not None:
        if isinstance(log_partition, (int, float)) and not isinstance(log_partition, bool):
            log_partition = torch.tensor(float(log_partition), dtype=acc, device=e_gen.device)
        _checks.floating_tensor("log_partition", log_partition)
        _checks.same_device("log_partition", log_partition, "e_gen", e_gen)
        if log_partition.numel() != 1:
            raise ValueError(f"log_partition must be a scalar (one element), got {_checks.describe(log_partition)}")
        log_partition = log_partition.reshape(()).to(acc)
    backend = resolve(e_gen.device)
    e_data, e_gen = e_data.reshape(-1).contiguous(), e_gen.reshape(-1).contiguous()
    if torch.compiler.is_compiling():
        return _kale_loss_op(e_data, e_gen, log_partition, backend)[0]
    return _KaleLoss.apply(e_data, e_gen, log_partition, backend)


# --- log_mean_exp ----------------------------------------------------------------------------------------

def _log_mean_exp_forward(rows: Tensor, backend: str) -> Tensor:
    """(R,) log(mean(exp(rows), dim=1)) in rows' dtype; rows (R, K) contiguous."""
    return kernels(backend, _FAMILY).log_mean_exp_forward(rows).to(rows.dtype)


def _log_mean_exp_backward(grad: Tensor, rows: Tensor, out: Tensor, backend: str, backend_kernels=kernels) -> Tensor:
    acc = accumulation_dtype(rows.dtype)
    return backend_kernels(backend, _FAMILY).log_mean_exp_backward(grad.to(acc).contiguous(), rows, out.to(acc).contiguous())


class _LogMeanExpRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, backend):
        out = _log_mean_exp_forward(rows, backend)
        ctx.save_for_backward(rows, out)
        ctx.backend = backend
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        rows, out = ctx.saved_tensors
        return _log_mean_exp_backward(grad, rows, out, ctx.backend), None


@torch.library.custom_op("kale_fast::log_mean_exp_rows", mutates_args=())
def _log_mean_exp_rows_op(rows: Tensor, backend: str) -> Tensor:
    return _log_mean_exp_forward(rows, backend)


@_log_mean_exp_rows_op.register_fake
def _(rows, backend):
    return rows.new_empty((rows.shape[0],))


def _log_mean_exp_setup_context(ctx, inputs, output):
    rows, backend = inputs
    ctx.save_for_backward(rows, output)
    ctx.backend = backend


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


def log_mean_exp(x: Tensor, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False) -> Tensor:
    """Stable log(mean(exp(x))) over `dim` (every element when None), in x's dtype, fp32/fp64 accumulation.

    Shapes follow torch.logsumexp: the reduced dimensions are removed, or kept with size 1 if `keepdim`.
    """
    _checks.floating_tensor("x", x)
    if not isinstance(keepdim, bool):
        raise TypeError(f"keepdim must be a bool, got {type(keepdim).__name__}")
    dims = _reduced_dims(dim, x.dim())
    backend = resolve(x.device)
    kept = [d for d in range(x.dim()) if d not in dims]
    n_rows = math.prod([x.shape[d] for d in kept])
    rows = x.permute(kept + list(dims)).reshape(n_rows, -1).contiguous()
    if torch.compiler.is_compiling():
        out = _log_mean_exp_rows_op(rows, backend)
    else:
        out = _LogMeanExpRows.apply(rows, backend)
    if keepdim:
        return out.reshape([1 if d in dims else x.shape[d] for d in range(x.dim())])
    return out.reshape([x.shape[d] for d in kept])
