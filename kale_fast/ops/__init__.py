"""Drop-in autograd ops over the fused kernels; each module registers one op family with torch.library."""
from kale_fast.ops._backend import get_backend, set_backend, use_backend
from kale_fast.ops.kale import kale_loss, log_mean_exp

__all__ = ["get_backend", "kale_loss", "log_mean_exp", "set_backend", "use_backend"]
