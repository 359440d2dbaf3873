"""Reference KALE objective and log-mean-exp, written as the math reads (DESIGN.md)."""
from typing import Optional, Sequence, Union

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for everything else (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def mean_without_overflow(x: torch.Tensor) -> torch.Tensor:
    """mean(x) over all elements, in the accumulation dtype, finite wherever the mean of finite values is: fp16,
    bf16 and fp32 are summed in fp64 (no overflow at any count); fp64 falls back to the mean of x * 2^-64 (an
    exact scaling, except for values below 2^-958, which cannot show in a mean that large) where the plain
    mean overflows."""
    if x.dtype != torch.float64:
        return torch.mean(x, dtype=torch.float64).to(accumulation_dtype(x.dtype))
    plain = torch.mean(x)
    return torch.where(torch.isfinite(plain), plain, torch.mean(x * 2.0**-64) * 2.0**64)


def shift_of(x: torch.Tensor, dims=None) -> torch.Tensor:
    """The max of x over dims (kept), detached, and 0 where it is not finite: the shift that makes exp(x - shift)
    <= 1 (torch.logsumexp's rule). Detached because the functions below are invariant to it: their gradients are
    then exp(x - shift) / sum exactly, where logsumexp's backward, exp(x - lse), loses log n when |lse| is large."""
    m = (x.amax() if dims is None else x.amax(dim=dims, keepdim=True)).detach()
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def kale_loss(e_data: torch.Tensor, e_gen: torch.Tensor, log_partition: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The energy's loss -F(E, A); 0-dim, in the inputs' dtype.

    With A: mean(e_data) + A + mean(exp(-(e_gen + A))) - 1. Without (Donsker-Varadhan):
    mean(e_data) + log(mean(exp(-e_gen))). The means do not overflow where they are finite.
    """
    out_dtype, acc = e_data.dtype, accumulation_dtype(e_gen.dtype)
    e_data, e_gen = e_data.to(acc).flatten(), e_gen.to(acc).flatten()
    if log_partition is None:
        m = shift_of(-e_gen)
        loss = (mean_without_overflow(e_data) + m) + torch.log(torch.mean(torch.exp(-e_gen - m)))
    else:
        a = log_partition.to(acc).reshape(())
        loss = mean_without_overflow(e_data) + a + mean_without_overflow(torch.exp(-(e_gen + a))) - 1
    return loss.to(out_dtype)


def log_mean_exp(
    x: torch.Tensor, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False
) -> torch.Tensor:
    """log(mean(exp(x))) over `dim` (all elements when None), accumulated in fp32/fp64."""
    x_acc = x.to(accumulation_dtype(x.dtype))
    dims = tuple(range(x.dim())) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    m = shift_of(x_acc, dims)
    out = torch.log(torch.mean(torch.exp(x_acc - m), dim=dims, keepdim=True)) + m
    return (out if keepdim else out.squeeze(dims) if dims else out).to(x.dtype)
