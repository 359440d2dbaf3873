"""Plain-PyTorch implementations of every op: the oracle of the tests and the baseline of the benchmarks.

Imports only torch. Each function here has a fused twin in kale_fast.ops with the same signature;
kale_fast.reference.kernels wraps them in the kernel contract of the fused backends (the "reference" backend).
"""
from kale_fast.reference import integrators, mlp_potential
from kale_fast.reference.kale import kale_loss, log_mean_exp

__all__ = ["integrators", "kale_loss", "log_mean_exp", "mlp_potential"]
