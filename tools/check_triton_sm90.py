"""Compile every Triton kernel of kale_fast.triton_kernels for an H100 (sm_90), ahead of time, no GPU needed.

The launches come from the package's own launch functions, called on meta tensors (no memory, any size) with
Triton's launch intercepted: each recorded launch is specialised exactly as Triton's JIT would specialise it
(its own binder: argument types, divisibility, constexprs, num_warps) and compiled for GPUTarget("cuda", 90, 32)
with Triton's bundled ptxas. So the grid, blocks and argument types checked here are the ones a GPU run uses.

Fails (exit 1) when a kernel does not compile, spills registers (ptxas -v: spill stores or loads), or takes a float scalar argument narrower than its data (TTIR signature: a float scalar
must be f64 when a pointer argument is f64 -- a Python float passed to a kernel compiles as f32), or when a
launch grid exceeds CUDA's limits. Prints one row per distinct compiled kernel and the total time.

Usage: python tools/check_triton_sm90.py [--quick]   (run from the repository root; TRITON_INTERPRET unset)
"""
import argparse
import io
import warnings
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("check_triton_sm90: unset TRITON_INTERPRET (the interpreter compiles nothing)")
# A fresh cache: every kernel really compiles (honest times, and ptxas runs, which prints what we parse).
os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="check_triton_sm90_")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

warnings.filterwarnings("ignore", message="kale_fast: C.. kernels unavailable")  # the check needs Triton only
import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime import jit as triton_jit  # noqa: E402

from kale_fast.triton_kernels import integrators, kale  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
# The launchers size their grids by the device's multiprocessors; meta tensors have no device to ask, so the
# check answers for an H100 SXM (132), and the grids and integer specialisations are those of a run there.
kale.multiprocessors = integrators.multiprocessors = lambda device: 132
GRID_LIMITS = (2**31 - 1, 65535, 65535)
META = torch.device("meta")
FLOAT_SCALARS = ("fp16", "bf16", "fp32", "fp64")


@contextmanager
def recorded_launches():
    """Collect (kernel, grid, args, kwargs) of every `kernel[grid](...)` instead of running it."""
    launches = []
    original = triton_jit.JITFunction.run

    def record(self, *args, grid, warmup, **kwargs):
        launches.append((self, tuple(grid), args, kwargs))

    triton_jit.JITFunction.run = record
    try:
        yield launches
    finally:
        triton_jit.JITFunction.run = original


def _t(shape, dtype):
    return torch.empty(shape, dtype=dtype, device=META)


def kale_cases(quick):
    sizes = [256, 1 << 20] if quick else [1, 256, 70_000, 1 << 20, (1 << 28) + 5]
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        for n in sizes:
            for a in (None, _t((), acc)):
                yield f"kale_loss n={n} A={a is not None}", lambda n=n, a=a, dtype=dtype, acc=acc: (
                    kale.kale_loss_forward(_t(n, dtype), _t(n, dtype), a),
                    kale.kale_loss_backward(_t((), acc), _t(n, dtype), _t(n, dtype), a, _t(2, acc)))
        row_shapes = [(256, 64), (1, 1 << 20)] if quick else [(256, 64), (1, 1 << 20), (4, 3_000_000),
                                                                 (1, (1 << 28) + 5), (1 << 20, 8)]
        for rows in row_shapes:
            yield f"log_mean_exp {rows}", lambda rows=rows, dtype=dtype, acc=acc: (
                kale.log_mean_exp_forward(_t(rows, dtype)),
                kale.log_mean_exp_backward(_t(rows[0], acc), _t(rows, dtype), _t(rows[0], acc)))


def integrator_cases(quick):
    shapes = [(256, 11), (64, 4096)] if quick else [(256, 11), (4096, 2), (64, 128), (64, 4096), (8, 100_000),
                                                       (1, 1 << 22), (1 << 20, 1), (1 << 20, 2)]
    for dtype in (torch.float32, torch.float64):
        for shape in shapes:
            def run(shape=shape, dtype=dtype):
                b = shape[0]
                z, chain, seed = _t(shape, dtype), _t(b, dtype), _t(1, torch.int64)
                integrators.hmc_draw_momentum(z, seed)
                integrators.leapfrog_kick_drift(z, z, z, chain, 0.5)
                integrators.hmc_trajectory_end(z, z, z, chain, z, chain, z, chain, chain, chain)
                for noise in (None, z):
                    integrators.mala_propose(z, z, chain, seed, noise)
                    integrators.ula_step(z, z, chain, seed, noise)
                    integrators.kinetic_langevin_baoa(z, z, z, chain, chain, seed, noise)
                integrators.mala_accept(z, chain, z, z, chain, z, chain, chain)
            yield f"integrators {shape}", run


def specialise(kernel, args, kwargs, backend):
    """What Triton's JIT would compile for this launch: (signature, constexprs, attrs, options)."""
    kwargs = dict(kwargs, debug=kwargs.get("debug", kernel.debug) or False)
    binder = triton_jit.create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options


def compile_with_ptxas_log(kernel, signature, constexprs, attrs, options):
    """(compiled kernel, ptxas -v figures: registers, stack frame, spill store and load bytes per thread)."""
    triton.knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas's log to stdout: caught here
    log = io.StringIO()
    with redirect_stdout(log):
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=TARGET,
                                  options=options.__dict__)
    text = log.getvalue()
    figures = dict(regs=re.search(r"Used (\d+) registers", text),
                   stack=re.search(r"(\d+) bytes stack frame", text),
                   spill_stores=re.search(r"(\d+) bytes spill stores", text),
                   spill_loads=re.search(r"(\d+) bytes spill loads", text))
    missing = [name for name, match in figures.items() if match is None]
    if missing:
        raise RuntimeError(f"ptxas log lacks {missing}:\n{text}")
    return compiled, {name: int(match.group(1)) for name, match in figures.items()}


def scalar_type_problems(ttir: str) -> list:
    """Float scalar arguments narrower than f64 in a kernel that has an f64 pointer argument."""
    header = next(line for line in ttir.splitlines() if "tt.func public" in line)
    args = re.findall(r"%(\w+): ([^ ,)]+)", header)  # name: type, before any {attributes} and loc(...)
    if not any(ty == "!tt.ptr<f64>" for _, ty in args):
        return []
    return [f"{name}: {ty}" for name, ty in args if ty in ("f16", "bf16", "f32")]


def describe(kernel, constexprs, signature, options):
    """Data dtypes, warps and constexprs (by name; ints equal to 1 are constexprs too, as Triton specialises them)."""
    shown = [f"{kernel.arg_names[path[0]]}={value}" for path, value in constexprs.items()]
    dtypes = sorted({v[1:] for v in signature.values() if v.startswith("*fp") or v.startswith("*bf")})
    return f"{'/'.join(dtypes)} w{options.num_warps} " + " ".join(shown)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes (a smoke run)")
    opts = parser.parse_args()
    backend = make_backend(TARGET)
    ptxas = triton.knobs.nvidia.ptxas.path
    print(f"triton {triton.__version__}, target {TARGET}, ptxas {ptxas} (bundled with triton: {'site-packages' in str(ptxas)})")
    failures, seen, start = [], {}, time.perf_counter()
    rows = []
    for label, run in [*kale_cases(opts.quick), *integrator_cases(opts.quick)]:
        with recorded_launches() as launches:
            run()
        for kernel, grid, args, kwargs in launches:
            problems = []
            if len(grid) > 3 or any(g > limit or g < 1 for g, limit in zip(grid, GRID_LIMITS)):
                problems.append(f"grid {grid} outside CUDA's limits")
            signature, constexprs, attrs, options = specialise(kernel, args, kwargs, backend)
            key = (kernel.fn.__name__, str(sorted(signature.items())), str(sorted(constexprs.items())),
                   str(sorted(attrs.items())), options.num_warps)
            if key in seen:
                if problems:
                    failures.append(f"{label}: {kernel.fn.__name__}: {'; '.join(problems)}")
                continue
            t0 = time.perf_counter()
            try:
                compiled, usage = compile_with_ptxas_log(kernel, signature, constexprs, attrs, options)
            except Exception as error:  # report every kernel, then fail
                seen[key] = None
                failures.append(f"{label}: {kernel.fn.__name__}: compile error: {error}")
                rows.append((kernel.fn.__name__, describe(kernel, constexprs, signature, options), "-", "-", "-",
                             time.perf_counter() - t0, "COMPILE ERROR"))
                continue
            seconds = time.perf_counter() - t0
            problems += scalar_type_problems(compiled.asm["ttir"])
            if usage["spill_stores"] or usage["spill_loads"]:
                problems.append(f"spills {usage['spill_stores']} B stores, {usage['spill_loads']} B loads")
            seen[key] = compiled
            if problems:
                failures.append(f"{label}: {kernel.fn.__name__}: {'; '.join(problems)}")
            rows.append((kernel.fn.__name__, describe(kernel, constexprs, signature, options), usage["regs"],
                         usage["spill_stores"], usage["stack"], seconds, "; ".join(problems) or "ok"))
    total = time.perf_counter() - start
    print(f"{'kernel':34} {'config':70} {'regs':>4} {'spill':>5} {'stack':>5} {'secs':>6}  status")
    for name, config, regs, spill, stack, seconds, status in rows:
        print(f"{name:34} {config[:70]:70} {regs:>4} {spill:>5} {stack:>5} {seconds:6.2f}  {status}")
    print(f"{len(rows)} kernels compiled in {total:.1f} s (triton {triton.__version__})")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
