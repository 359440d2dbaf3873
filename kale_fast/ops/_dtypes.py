"""The ops' dtype policy: what every backend accumulates in and returns (kale_fast.reference states the same
rule independently, as the oracle the tests compare with)."""
import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 inputs, fp32 for everything else (fp16, bf16, fp32): the dtype the kernels sum in and in
    which kale_loss_forward and log_mean_exp_forward return their results."""
    return torch.float64 if dtype == torch.float64 else torch.float32
