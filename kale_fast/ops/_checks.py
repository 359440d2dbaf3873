"""Argument checks shared by the ops: each raises a TypeError/ValueError naming the argument."""
import torch


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def floating_tensor(name: str, value: object, allow_empty: bool = False) -> torch.Tensor:
    """`value` itself, once it is a non-empty floating-point tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (fp16, bf16, fp32 or fp64), got {describe(value)}")
    if not allow_empty and value.numel() == 0:
        raise ValueError(f"{name} must have at least one element, got {describe(value)}")
    return value


def same_device(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if value.device != other.device:
        raise ValueError(f"{name} and {other_name} must be on one device: {name} has {describe(value)}, "
                         f"{other_name} has {describe(other)}")


def same_dtype(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if value.dtype != other.dtype:
        raise TypeError(f"{name} and {other_name} must have one dtype: {name} has {describe(value)}, "
                        f"{other_name} has {describe(other)}")
