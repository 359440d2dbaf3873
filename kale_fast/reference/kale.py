"""Reference KALE objective and log-mean-exp, written as the math reads (DESIGN.md)."""
import math
from typing import Optional, Sequence, Union

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for everything else (fp16, bf16, fp32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kale_loss(e_data: torch.Tensor, e_gen: torch.Tensor, log_partition: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The energy's loss -F(E, A); 0-dim, in the inputs' dtype.

    With A: mean(e_data) + A + mean(exp(-(e_gen + A))) - 1. Without (Donsker-Varadhan):
    mean(e_data) + log(mean(exp(-e_gen))).
    """
    out_dtype, acc = e_data.dtype, accumulation_dtype(e_gen.dtype)
    e_data, e_gen = e_data.to(acc).flatten(), e_gen.to(acc).flatten()
    if log_partition is None:
        loss = e_data.mean() + torch.logsumexp(-e_gen, dim=0) - math.log(e_gen.numel())
    else:
        a = log_partition.to(acc).reshape(())
        loss = e_data.mean() + a + torch.exp(-(e_gen + a)).mean() - 1
    return loss.to(out_dtype)


def log_mean_exp(
    x: torch.Tensor, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False
) -> torch.Tensor:
    """log(mean(exp(x))) over `dim` (all elements when None), accumulated in fp32/fp64."""
    acc = accumulation_dtype(x.dtype)
    if dim is None:
        out = torch.logsumexp(x.to(acc).reshape(-1), dim=0) - math.log(x.numel())
        out = out.reshape((1,) * x.dim()) if keepdim else out
    else:
        dims = (dim,) if isinstance(dim, int) else tuple(dim)
        count = math.prod(x.shape[d] for d in dims)
        out = torch.logsumexp(x.to(acc), dim=dims, keepdim=keepdim) - math.log(count)
    return out.to(x.dtype)
