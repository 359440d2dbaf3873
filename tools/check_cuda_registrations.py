"""Checks, without a GPU, that kale_fast is wired for CUDA (run by tools/gpu_check.sh in the CUDA venv).

The kernel ops come from the Python op layer (kale_fast.ops._kernels.KERNEL_OPS, which kale_fast/ops/*.py
declare), with the composite ops over them (COMPOSITE_OPS), must be exactly the ops whose schemas kale_fast._C
defines (csrc/op_schemas.cpp), with the CPU-only ops (CPU_ONLY_OPS: their families run the reference in torch
ops on other devices, and none may claim a CUDA kernel). Each kernel op must have a
CUDA kernel from the extension's CUDA sources (kernels/*.cu), or, for the ops of TRITON_ON_CUDA, the Triton
kernel that its op family registers by design (kale_fast/ops/<family>.py). Every op of the namespace, the kernel
ops, the Python backends' traceable ops and the autograd front doors alike, must have a fake (Meta) rule, so that
torch.compile can trace it. Nothing runs on a device. Exit status 1 with the list of failures.
"""
import sys

import torch

import kale_fast  # noqa: F401  (registers everything)
from kale_fast.ops import _kernels


def registrations(op: str) -> dict:
    """{dispatch key or 'debug': where it was registered} from the dispatcher's dump of kale_fast::<op>."""
    table = {}
    for line in torch._C._dispatch_dump(f"kale_fast::{op}").splitlines():
        key, _, rest = line.partition(": ")
        if "registered at " in rest:
            table[key] = rest.split("registered at ", 1)[1].split(" ", 1)[0]
    return table


def main() -> int:
    failures = []
    if torch.version.cuda is None:
        failures.append(f"torch {torch.__version__} has no CUDA: run this in the CUDA venv")
    namespace = sorted(name.split("::", 1)[1] for name in torch._C._dispatch_get_all_op_names()
                       if name.startswith("kale_fast::"))
    from_schemas = {op for op in namespace if "csrc/op_schemas.cpp" in registrations(op).get("debug", "")}
    called = {op for ops in _kernels.KERNEL_OPS.values() for op in ops}
    if from_schemas != called | set(_kernels.COMPOSITE_OPS) | set(_kernels.CPU_ONLY_OPS):
        failures.append(f"csrc/op_schemas.cpp defines {sorted(from_schemas)} but the Python op layer calls "
                        f"{sorted(called)}, the composite ops {sorted(_kernels.COMPOSITE_OPS)} and the CPU-only ops "
                        f"{sorted(_kernels.CPU_ONLY_OPS)}")
    for op in sorted(_kernels.CPU_ONLY_OPS):
        cuda = registrations(op).get("CUDA", "")
        print(f"  kale_fast::{op:24s} CPU only (the reference on other devices) {'FAIL' if cuda else 'ok'}")
        if cuda:
            failures.append(f"kale_fast::{op} is declared CPU-only but has a CUDA kernel ({cuda})")
    for op in sorted(called):
        cuda = registrations(op).get("CUDA", "")
        if op in _kernels.TRITON_ON_CUDA:
            expected, ok = "Triton (kale_fast/ops/*.py)", "kale_fast/ops/" in cuda and ".py" in cuda
        else:
            expected, ok = "a CUDA kernel of kernels/*.cu", "/kernels/" in cuda and ".cu" in cuda
        print(f"  kale_fast::{op:24s} CUDA: {cuda or 'none':60s} {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"kale_fast::{op} should have {expected} for the CUDA key, has {cuda or 'none'}")
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    no_fake = [op for op in namespace if not has(f"kale_fast::{op}", "Meta")
               and not has(f"kale_fast::{op}", "CompositeImplicitAutograd")]  # these decompose when traced
    if no_fake:
        failures.append(f"ops without a fake (Meta) rule, which torch.compile cannot trace: {no_fake}")
    print(f"check_cuda_registrations: {len(called)} kernel ops ({len(called) - len(_kernels.TRITON_ON_CUDA)} CUDA C++, "
          f"{len(_kernels.TRITON_ON_CUDA)} Triton by design), {len(namespace)} ops with fake rules checked")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
