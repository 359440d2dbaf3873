"""Which implementation runs an op: the backends, where each can run, and how one is chosen.

A call's backend is, first found: its `backend=` keyword; the innermost `with kf.backend(name):` block of the
calling thread (or asyncio task: a contextvar); the process-wide `set_backend` (or the KALE_FAST_BACKEND
variable), "auto" by default. "auto" then picks, per device type, the first available backend of AUTO_ORDER.

Availability is settled once at import (cheap checks only; Triton itself is imported at its first launch), so
that `resolve` is plain dictionary work. Under torch.compile the choice is read when the code is traced: the
keyword and the process-wide setting are guarded (a change retraces), a `with kf.backend(...)` block is read as
a constant of the trace (torch.compile cannot guard a contextvar), so a function compiled inside one keeps that
backend. All backends compute the same values to rounding; the choice is one of speed.
"""
import contextlib
import contextvars
import importlib
import importlib.util
import os
import warnings
from typing import Dict, Iterator, Optional, Union

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


def has_cuda_kernel(op: str) -> bool:
    """Whether torch.ops.kale_fast.<op> has a kernel registered for the CUDA key."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"kale_fast::{op}", "CUDA")


def _availability() -> Dict[str, Dict[str, Optional[str]]]:
    """For each backend and device type: None when it can run there, else the reason it cannot."""
    cpp = _import_error("kale_fast._C")
    if cpp is not None:
        warnings.warn(f"kale_fast: C++ kernels unavailable, CPU ops fall back to the reference: {cpp}", stacklevel=3)
    has_triton = importlib.util.find_spec("triton") is not None
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    if not torch.cuda.is_available():
        cuda_kernels = "torch has no CUDA device here"
    elif cpp is not None:
        cuda_kernels = cpp
    elif not has_cuda_kernel("kale_loss_forward"):  # a CUDA C++ kernel by design (never Triton)
        cuda_kernels = "kale_fast._C was built without its CUDA kernels (setup.py adds them only where torch has CUDA)"
    else:
        cuda_kernels = None
    no_triton = "triton is not installed"
    return {
        "reference": {"cpu": None, "cuda": None},
        "cpp": {"cpu": cpp, "cuda": "the C++ kernels run on CPU tensors only"},
        "triton": {
            "cpu": (no_triton if not has_triton else None if interpreted else
                    "Triton runs CPU tensors only through its interpreter (set TRITON_INTERPRET=1 before import)"),
            "cuda": None if has_triton else no_triton,
        },
        "cuda": {"cpu": "the CUDA kernels run on CUDA tensors only", "cuda": cuda_kernels},
    }


_AVAILABILITY = _availability()
# What "auto" resolves to per device type (the reference, available everywhere, where nothing else is).
_AUTO = {device_type: next(candidate for candidate in order if _AVAILABILITY[candidate].get(device_type, "") is None)
         for device_type, order in AUTO_ORDER.items()}
HAS_SCHEMAS = _AVAILABILITY["cpp"]["cpu"] is None  # kale_fast._C imported: torch.ops.kale_fast's schemas exist


def _checked(name: object, source: str) -> str:
    if isinstance(name, str) and (name in _AVAILABILITY or name == "auto"):
        return name
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a str, one of {BACKENDS}; got {type(name).__name__}")
    raise ValueError(f"{source} must be one of {BACKENDS}; got {name!r}")


# Checked when first used (get_backend, resolve), not here: a bad variable must not make `import kale_fast` (and
# so the CLI, which reports errors in one line) fail with a traceback.
_process_default = os.environ.get("KALE_FAST_BACKEND", "auto")
_ENVIRONMENT = "the environment variable KALE_FAST_BACKEND"
_block_choice: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("kale_fast_backend", default=None)


def _traced_block_choice() -> Optional[str]:
    """The innermost `backend` block's name, read by torch.compile once per trace (it cannot trace a contextvar)."""
    return _block_choice.get()


# What `torch.compiler.assume_constant_result` does, without the decorator's import of torch._dynamo (about 2 s,
# paid by every `import kale_fast` and so every CLI call); tests/ops/test_backend_choice.py checks that the
# decorator still sets exactly this mark.
_traced_block_choice._dynamo_marked_constant = True


def _chosen() -> str:
    """The name in force for this thread: its innermost `backend` block's, else the process-wide one."""
    block = _traced_block_choice() if torch.compiler.is_compiling() else _block_choice.get()
    return _process_default if block is None else block


def set_backend(name: str) -> None:
    """Choose, for the whole process, the implementation of every fused op: "auto" (default), "reference",
    "cpp", "triton" or "cuda". A `with kf.backend(...)` block or an op's `backend=` keyword overrides it."""
    global _process_default
    _process_default = _checked(name, "backend")


def get_backend(device: Optional[Union[str, torch.device]] = None) -> str:
    """The name in force here (the innermost `kf.backend` block's, else set_backend's or KALE_FAST_BACKEND's,
    "auto" by default); given a device, the concrete backend that runs there (e.g. get_backend("cpu") -> "cpp")."""
    if device is None:
        return _checked(_chosen(), _ENVIRONMENT)
    return resolve(torch.device(device))


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """`with kf.backend("reference"):` runs the ops called in the block, in this thread or task only, on that
    backend, then restores the previous choice."""
    token = _block_choice.set(_checked(name, "backend"))
    try:
        yield
    finally:
        _block_choice.reset(token)


use_backend = backend  # the name of kale_fast 0.1 (whose block also switched other threads)


_CPP_ON_CPU = ("cpp", "auto") if _AUTO["cpu"] == "cpp" else ()


def cpp_runs_on_cpu(name: Optional[str] = None) -> bool:
    """Whether an eager op on CPU tensors runs the C++ kernels, given its backend= keyword (None: the name in
    force): "cpp", or "auto" with the extension built. For kale_loss's fast door."""
    return (_chosen() if name is None else name) in _CPP_ON_CPU


def resolve(device: torch.device, name: Optional[str] = None) -> str:
    """The concrete backend that runs an op on `device`: `name` (an op's backend= keyword) if given, else the
    name in force; raises RuntimeError when it cannot run there."""
    source = "backend"
    if name is None:  # set_backend and backend() checked theirs: only the environment's can be bad
        name, source = _chosen(), _ENVIRONMENT
    device_type = device.type
    if name == "auto":
        return _AUTO.get(device_type, "reference")
    reason = _AVAILABILITY[_checked(name, source)].get(device_type, f"no kernels for {device_type} tensors")
    if reason is not None:
        raise RuntimeError(f"kale_fast backend {name!r} cannot run on a {device_type} tensor: {reason}")
    return name
