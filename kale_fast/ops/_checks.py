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


def updatable_in_place(updated: dict, others: dict) -> None:
    """Tensors an op writes in place (`updated`, name -> tensor) must not require grad (the kernels write
    behind autograd's back, so a graph through them would be silently wrong) and must not share memory with
    any other tensor argument (`updated` or `others`): an aliased buffer would be read after it was written
    (z is p, p is grad, ...). A constant cost per call: address ranges are compared, not elements."""
    for name, t in updated.items():
        if t.requires_grad:
            raise ValueError(f"{name} is updated in place and must not require grad ({describe(t)}, a "
                             f"{'leaf' if t.is_leaf else 'non-leaf'} tensor that requires grad): pass a detached "
                             f"tensor, e.g. {name}.detach().clone()")
    spans = {name: _memory_span(t) for name, t in {**updated, **others}.items() if t is not None}
    for name in updated:
        for other, span in spans.items():
            if other != name and span[0] == spans[name][0] and span[1] < spans[name][2] and spans[name][1] < span[2]:
                raise ValueError(f"{name} is updated in place and shares memory with {other}: pass separate "
                                 f"tensors (e.g. {other}.clone())")


def _memory_span(t: torch.Tensor):
    """(device, first byte, one past the last byte) of a tensor's elements, as laid out by its strides."""
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) + 1 if t.numel() else 0
    start = t.data_ptr() - sum((size - 1) * -stride for size, stride in zip(t.shape, t.stride()) if stride < 0) \
        * t.element_size()
    return t.device, start, start + extent * t.element_size()
