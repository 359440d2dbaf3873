"""kale_fast: fused kernels, samplers and training for Generalized Energy-Based Models trained with KALE."""
from kale_fast.ops import get_backend, kale_loss, log_mean_exp, set_backend

__version__ = "0.1.0"

__all__ = ["get_backend", "kale_loss", "log_mean_exp", "set_backend"]
