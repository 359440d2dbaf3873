"""Which implementation runs an op: `set_backend`, the `KALE_FAST_BACKEND` variable, and what "auto" picks.

Availability is settled once at import (cheap checks only; Triton itself is imported at its first launch),
so that `resolve` is plain dictionary work that torch.compile traces without a graph break.
"""
import importlib
import importlib.util
import os
import warnings
from typing import Dict, Optional

import torch

BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")

# What "auto" runs, per device type, first available wins. CPU: the C++ kernels beat eager PyTorch at every
# size measured (benchmarks/RESULTS.md). CUDA: Triton first; no H100 run has yet compared it with the CUDA
# kernels, so this order is a default, not a measurement (see RESULTS.md).
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("triton", "cuda", "reference")}


def _import_error(module: str) -> Optional[str]:
    try:
        importlib.import_module(module)
    except ImportError as error:  # the extension was not built or does not load
        return f"{module} does not import ({error}); rebuild with `pip install --no-build-isolation -e .`"
    return None


def _availability() -> Dict[str, Dict[str, Optional[str]]]:
    """For each backend and device type: None when it can run there, else the reason it cannot."""
    cpp = _import_error("kale_fast._C")
    if cpp is not None:
        warnings.warn(f"kale_fast: C++ kernels unavailable, CPU ops fall back to the reference: {cpp}", stacklevel=3)
    has_triton = importlib.util.find_spec("triton") is not None
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available():
        cuda_module = "torch has no CUDA device here"
    elif importlib.util.find_spec("kale_fast._C_cuda") is None:
        cuda_module = "kale_fast._C_cuda was not built (setup.py builds it only where torch has CUDA)"
    else:
        cuda_module = _import_error("kale_fast._C_cuda")
    no_triton = "triton is not installed"
    return {
        "reference": {"cpu": None, "cuda": None},
        "cpp": {"cpu": cpp, "cuda": "the C++ kernels run on CPU tensors only"},
        "triton": {
            "cpu": (no_triton if not has_triton else None if interpreted else
                    "Triton runs CPU tensors only through its interpreter (set TRITON_INTERPRET=1 before import)"),
            "cuda": None if has_triton else no_triton,
        },
        "cuda": {"cpu": "the CUDA kernels run on CUDA tensors only", "cuda": cuda_module},
    }


_AVAILABILITY = _availability()


def _checked(name: object, source: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a str, one of {BACKENDS}; got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}; got {name!r}")
    return name


_current = _checked(os.environ.get("KALE_FAST_BACKEND", "auto"), "the environment variable KALE_FAST_BACKEND")


def set_backend(name: str) -> None:
    """Choose the implementation of every fused op: "auto" (default), "reference", "cpp", "triton" or "cuda".

    The choice is read when an op is called (or traced, under torch.compile).
    """
    global _current
    _current = _checked(name, "backend")


def get_backend() -> str:
    """The name last given to `set_backend` (or KALE_FAST_BACKEND), "auto" by default."""
    return _current


def resolve(device: torch.device) -> str:
    """The concrete backend that runs an op on `device`; raises RuntimeError when the chosen one cannot."""
    device_type = device.type
    if _current == "auto":
        for candidate in AUTO_ORDER.get(device_type, ("reference",)):
            if _AVAILABILITY[candidate].get(device_type, "") is None:
                return candidate
    reason = _AVAILABILITY[_current].get(device_type, f"no kernels for {device_type} tensors")
    if reason is not None:
        raise RuntimeError(f"kale_fast backend {_current!r} cannot run on a {device_type} tensor: {reason}")
    return _current


class _CudaThenTriton:
    """The "cuda" backend's kernels: the CUDA module's where it has one (the KALE objective, the two leapfrog
    updates), Triton's for the rest of the family."""

    def __init__(self, family: str):
        self.family = family

    def __getattr__(self, name: str):
        try:
            return getattr(torch.ops.kale_fast_cuda, name)
        except AttributeError:
            return getattr(importlib.import_module(f"kale_fast.triton_kernels.{self.family}"), name)


def kernels(backend: str, family: str):
    """The kernel functions of one op family (named alike in every backend) for a concrete backend."""
    if backend == "cpp":
        return torch.ops.kale_fast_cpp
    if backend == "cuda":
        return _CudaThenTriton(family)
    if backend == "triton":
        return importlib.import_module(f"kale_fast.triton_kernels.{family}")
    raise ValueError(f"no kernels for backend {backend!r}")
