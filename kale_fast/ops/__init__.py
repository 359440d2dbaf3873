"""The fused ops, one module per op family: each declares its kernel ops (fake rules, Triton-on-CUDA) beside the
autograd wrappers that users call; _backend chooses the implementation, _kernels holds the kernel contract."""
from kale_fast.ops._backend import backend, get_backend, set_backend, use_backend
from kale_fast.ops.kale import kale_loss, log_mean_exp

__all__ = ["backend", "get_backend", "kale_loss", "log_mean_exp", "set_backend", "use_backend"]
