"""The kernel contract every backend implements, and the registrations an op family makes for it.

The contract is the ops of torch.ops.kale_fast whose schemas csrc/op_schemas.cpp defines once. The C++
extension registers its kernels for the CPU key (csrc/) and, where torch has CUDA, for the CUDA key (kernels/).
Each op family (kale_fast/ops/<family>.py) declares its kernel ops beside its Python wrappers with `kernel_op`,
which registers the op's fake rule (shapes and dtypes, for torch.compile), Triton for the CUDA key where the
family says so, and the op's twins `kale_fast::reference_<op>` and `kale_fast::triton_<op>`.

Why the twins exist (they are internal, never a user's way in): the "reference" and "triton" backends are
Python modules with the kernel contract's functions; under torch.compile a Python function would be traced
into (Triton's launchers do not trace), so code that compiles calls them as these custom ops, with the same
schemas and fake rules, and every backend stays one opaque node of the graph.
"""
import importlib
import types
from typing import Callable, Dict, List

import torch

from kale_fast.ops._backend import HAS_SCHEMAS, _AVAILABILITY

# The Python backends' modules, per op family.
_PYTHON_BACKEND_MODULES = {"triton": "kale_fast.triton_kernels.{family}", "reference": "kale_fast.reference.kernels"}

# Filled by `kernel_op`: the kernel ops of each family, and those served on CUDA tensors by Triton by design
# (every other kernel op must have a CUDA C++ kernel: tools/check_cuda_registrations.py checks both).
KERNEL_OPS: Dict[str, List[str]] = {}
TRITON_ON_CUDA: List[str] = []
# Ops of csrc/op_schemas.cpp that are no kernels but compose them in C++ (kale_loss_autograd), declared by their
# family with `composite_op`: what tools/check_cuda_registrations.py expects besides KERNEL_OPS.
COMPOSITE_OPS: List[str] = []
# Ops of csrc/op_schemas.cpp with a CPU kernel only, declared by their family with `cpu_only_op`; on other devices
# the family runs its reference in torch ops (no CUDA kernel is expected).
CPU_ONLY_OPS: List[str] = []

_LIBRARY = torch.library.Library("kale_fast", "FRAGMENT")  # kept alive: registrations last as long as it does
_TRACEABLE = {backend: {} for backend in _PYTHON_BACKEND_MODULES}  # backend -> family -> namespace of ops


def _python_kernel(backend: str, family: str, op: str) -> Callable:
    """The function `op` of a Python backend's module, imported at the first call (Triton is heavy)."""
    module_name = _PYTHON_BACKEND_MODULES[backend].format(family=family)

    def call(*args):
        return getattr(importlib.import_module(module_name), op)(*args)

    call.__name__ = f"{backend}_{op}"
    return call


def kernel_op(family: str, op: str, triton_on_cuda: bool = False) -> Callable[[Callable], Callable]:
    """Decorator of the fake rule of kernel op `op` of `family` (a function of the op's arguments returning
    empty tensors of its outputs' shapes and dtypes): registers it, Triton for the CUDA key if `triton_on_cuda`,
    and the Python backends' twins of the op (module docstring)."""

    def register(fake: Callable) -> Callable:
        KERNEL_OPS.setdefault(family, []).append(op)
        if triton_on_cuda:
            TRITON_ON_CUDA.append(op)
        if not HAS_SCHEMAS:  # no extension: the Python backends run eagerly only
            return fake
        torch.library.register_fake(f"kale_fast::{op}", fake, lib=_LIBRARY)
        if triton_on_cuda:
            _LIBRARY.impl(op, _python_kernel("triton", family, op), "CUDA")
        schema = str(getattr(torch.ops.kale_fast, op).default._schema)
        for backend in _PYTHON_BACKEND_MODULES:
            name = f"{backend}_{op}"
            _LIBRARY.define(name + schema[schema.index("("):])
            _LIBRARY.impl(name, _python_kernel(backend, family, op), "CompositeExplicitAutograd")
            torch.library.register_fake(f"kale_fast::{name}", fake, lib=_LIBRARY)
            namespace = _TRACEABLE[backend].setdefault(family, types.SimpleNamespace())
            setattr(namespace, op, getattr(torch.ops.kale_fast, name))
        return fake

    return register


def composite_op(op: str, fake: Callable):
    """torch.ops.kale_fast.<op>'s default overload, an op of the extension over its kernels, with its fake rule
    registered; None where the extension does not define it (a build that predates it: the caller falls back to
    its Python path)."""
    COMPOSITE_OPS.append(op)
    if not (HAS_SCHEMAS and hasattr(torch.ops.kale_fast, op)):
        return None
    torch.library.register_fake(f"kale_fast::{op}", fake, lib=_LIBRARY)
    return getattr(torch.ops.kale_fast, op).default


def cpu_only_op(op: str, fake: Callable):
    """torch.ops.kale_fast.<op>'s default overload, an op with a CPU kernel only (csrc/), with its fake rule
    registered; None where the extension does not define it (the caller falls back to its Python path)."""
    CPU_ONLY_OPS.append(op)
    if not (HAS_SCHEMAS and hasattr(torch.ops.kale_fast, op)):
        return None
    torch.library.register_fake(f"kale_fast::{op}", fake, lib=_LIBRARY)
    return getattr(torch.ops.kale_fast, op).default


def define_composite_implicit(op: str, schema: str, function: Callable) -> None:
    """Define kale_fast::<op> (schema: its arguments and results) as `function`, run in torch ops under autograd
    (CompositeImplicitAutograd: differentiable through them, nothing opaque); for the extension's C++ to call."""
    if HAS_SCHEMAS:
        _LIBRARY.define(op + schema)
        _LIBRARY.impl(op, function, "CompositeImplicitAutograd")


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
    if not HAS_SCHEMAS:
        raise RuntimeError(f"kale_fast: the {backend!r} kernels cannot run under torch.compile without the C++ "
                           f"extension, which defines the op schemas: {_AVAILABILITY['cpp']['cpu']}")
    return _TRACEABLE[backend][family]
