"""Which implementation runs an op: `set_backend`, the `KALE_FAST_BACKEND` variable, what "auto" picks, and
the kernels of each backend.

Every backend implements one kernel contract: the ops of `KERNEL_OPS`, whose schemas csrc/op_schemas.cpp
defines once under torch.ops.kale_fast. The C++ extension registers its kernels for the CPU key (csrc/) and,
where torch has CUDA, for the CUDA key (kernels/); this module registers their fake rules, and Triton for the
CUDA key of the ops in `TRITON_ON_CUDA`. The "triton" and "reference" backends are Python modules with the
same functions; under torch.compile they run as custom ops `kale_fast::<backend>_<op>` with the same schemas
and fake rules, so that every backend traces as opaque nodes.

Availability is settled once at import (cheap checks only; Triton itself is imported at its first launch),
so that `resolve` is plain dictionary work that torch.compile traces without a graph break.
"""
import contextlib
import importlib
import importlib.util
import os
import types
import warnings
from typing import Dict, Iterator, Optional, Union

import torch

from kale_fast.reference.kale import accumulation_dtype

BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")

# The kernel contract, per op family (kale_fast/ops/<family>.py wraps them).
KERNEL_OPS = {
    "kale": ("kale_loss_forward", "kale_loss_backward", "log_mean_exp_forward", "log_mean_exp_backward"),
    "integrators": ("hmc_draw_momentum", "leapfrog_kick_drift", "hmc_trajectory_end", "mala_propose", "mala_accept",
                    "ula_step", "kinetic_langevin_baoa"),
}

# Served on CUDA tensors by Triton kernels by design: the CUDA C++ kernels (kernels/) cover the KALE ops and the
# two leapfrog updates. Every other op must have a CUDA C++ kernel (tools/check_cuda_registrations.py checks).
TRITON_ON_CUDA = ("hmc_draw_momentum", "mala_propose", "mala_accept", "ula_step", "kinetic_langevin_baoa")

# What "auto" runs, per device type, first available wins. CPU: the C++ kernels beat eager PyTorch at every
# size measured (benchmarks/RESULTS.md). CUDA: Triton first; no H100 run has yet compared it with the CUDA
# kernels, so this order is a default, not a measurement (see RESULTS.md).
AUTO_ORDER = {"cpu": ("cpp", "reference"), "cuda": ("triton", "cuda", "reference")}

_PYTHON_BACKEND_MODULES = {"triton": "kale_fast.triton_kernels.{family}", "reference": "kale_fast.reference.kernels"}


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
    elif not has_cuda_kernel("kale_loss_forward"):  # checked before Triton is registered for the CUDA key
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


def _checked(name: object, source: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"{source} must be a str, one of {BACKENDS}; got {type(name).__name__}")
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}; got {name!r}")
    return name


# Checked when first used (get_backend, resolve), not here: a bad variable must not make `import kale_fast` (and
# so the CLI, which reports errors in one line) fail with a traceback.
_current = os.environ.get("KALE_FAST_BACKEND", "auto")
_ENVIRONMENT = "the environment variable KALE_FAST_BACKEND"


def set_backend(name: str) -> None:
    """Choose the implementation of every fused op: "auto" (default), "reference", "cpp", "triton" or "cuda".

    The choice is read when an op is called (or traced, under torch.compile).
    """
    global _current
    _current = _checked(name, "backend")


def get_backend(device: Optional[Union[str, torch.device]] = None) -> str:
    """The name last given to `set_backend` (or KALE_FAST_BACKEND), "auto" by default; given a device, the
    concrete backend that runs there (what "auto" resolves to, e.g. get_backend("cpu") -> "cpp")."""
    if device is None:
        return _checked(_current, _ENVIRONMENT)
    return resolve(torch.device(device))


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """`with kf.use_backend("reference"):` runs the block on that backend, then restores the previous one."""
    previous = _current
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def resolve(device: torch.device) -> str:
    """The concrete backend that runs an op on `device`; raises RuntimeError when the chosen one cannot."""
    device_type = device.type
    if _current == "auto":
        for candidate in AUTO_ORDER.get(device_type, ("reference",)):
            if _AVAILABILITY[candidate].get(device_type, "") is None:
                return candidate
    if _current not in _AVAILABILITY:  # set_backend checks its names: this one came from the environment
        _checked(_current, _ENVIRONMENT)
    reason = _AVAILABILITY[_current].get(device_type, f"no kernels for {device_type} tensors")
    if reason is not None:
        raise RuntimeError(f"kale_fast backend {_current!r} cannot run on a {device_type} tensor: {reason}")
    return _current


def _python_kernel(backend: str, family: str, op: str):
    """The function `op` of a Python backend's module, imported at the first call (Triton is heavy)."""
    module_name = _PYTHON_BACKEND_MODULES[backend].format(family=family)

    def call(*args):
        return getattr(importlib.import_module(module_name), op)(*args)

    call.__name__ = f"{backend}_{op}"
    return call


def kernels(backend: str, family: str):
    """The kernel functions of one op family for a concrete backend, called eagerly (no fake rules needed)."""
    if backend in ("cpp", "cuda"):
        return torch.ops.kale_fast  # the dispatcher picks the CPU or CUDA kernel from the tensors' device
    if backend in _PYTHON_BACKEND_MODULES:
        return importlib.import_module(_PYTHON_BACKEND_MODULES[backend].format(family=family))
    raise ValueError(f"no kernels for backend {backend!r}")


def traceable_kernels(backend: str, family: str):
    """The kernels of `kernels(backend, family)` as ops of torch.ops.kale_fast with fake rules, for code that
    torch.compile traces (and for backward formulas, which AOTAutograd traces)."""
    if backend in ("cpp", "cuda"):
        return torch.ops.kale_fast
    if _TRACEABLE is None:
        raise RuntimeError(f"kale_fast: the {backend!r} kernels cannot run under torch.compile without the C++ "
                           f"extension, which defines the op schemas: {_AVAILABILITY['cpp']['cpu']}")
    return _TRACEABLE[backend][family]


# --- registrations on the schemas of kale_fast._C ---------------------------------------------------------

def _metropolis_outputs(z: torch.Tensor):
    return z.new_empty(z.shape[:1]), z.new_empty(z.shape[:1], dtype=torch.bool)


# Output metadata of every kernel op (shapes and dtypes only), for torch.compile's fake tensors.
_FAKES = {
    "kale_loss_forward": lambda e_data, e_gen, log_partition: (
        e_gen.new_empty((), dtype=accumulation_dtype(e_gen.dtype)),
        e_gen.new_empty((2,), dtype=accumulation_dtype(e_gen.dtype))),
    "kale_loss_backward": lambda grad, e_data, e_gen, log_partition, state: (
        e_data.new_empty(()).expand(e_data.shape), torch.empty_like(e_gen), state.new_empty(())),
    "log_mean_exp_forward": lambda x: x.new_empty(x.shape[:1], dtype=accumulation_dtype(x.dtype)),
    "log_mean_exp_backward": lambda grad, x, out: torch.empty_like(x),
    "hmc_draw_momentum": lambda z, seed: (torch.empty_like(z), z.new_empty(z.shape[:1])),
    "leapfrog_kick_drift": lambda z, p, grad, step_size, kick_fraction: None,
    "hmc_trajectory_end": lambda z, *args: _metropolis_outputs(z),
    "mala_propose": lambda z, grad, step_size, seed, noise: torch.empty_like(z),
    "mala_accept": lambda z, *args: (*_metropolis_outputs(z), z.new_empty(z.shape[:1])),
    "ula_step": lambda z, grad, step_size, seed, noise: None,
    "kinetic_langevin_baoa": lambda z, v, grad, step_size, friction, seed, noise: None,
}


def _register(library: torch.library.Library):
    """Fake rules of the kernel ops, Triton for the CUDA key of TRITON_ON_CUDA, and the traceable ops of the
    Python backends; returns {backend: {family: namespace}} of the latter."""
    traceable = {backend: {} for backend in _PYTHON_BACKEND_MODULES}
    for family, ops in KERNEL_OPS.items():
        for backend in _PYTHON_BACKEND_MODULES:
            traceable[backend][family] = types.SimpleNamespace()
        for op in ops:
            torch.library.register_fake(f"kale_fast::{op}", _FAKES[op], lib=library)
            if op in TRITON_ON_CUDA:
                library.impl(op, _python_kernel("triton", family, op), "CUDA")
            schema = str(getattr(torch.ops.kale_fast, op).default._schema)
            for backend in _PYTHON_BACKEND_MODULES:
                name = f"{backend}_{op}"
                library.define(name + schema[schema.index("("):])
                library.impl(name, _python_kernel(backend, family, op), "CompositeExplicitAutograd")
                torch.library.register_fake(f"kale_fast::{name}", _FAKES[op], lib=library)
                setattr(traceable[backend][family], op, getattr(torch.ops.kale_fast, name))
    return traceable


_LIBRARY = torch.library.Library("kale_fast", "FRAGMENT")  # kept alive: registrations last as long as it does
_TRACEABLE = _register(_LIBRARY) if _AVAILABILITY["cpp"]["cpu"] is None else None
