"""kale_loss forward + backward: the fused op against plain PyTorch, eager and under torch.compile, and against this
machine's floor (benchmarks/floors.py: reading both inputs and writing both gradients once, at the copy rate),
beside which the table shows the exp-inclusive floor (the larger of that and one exp per generated energy at
torch.exp's rate: the op cannot evaluate fewer), so that a reader sees which bounds it.

The PyTorch baseline is the formula as a user writes it, `plain_kale_loss` (the textbook one-liner, which is what
kale_fast.reference was until it gained guards against overflow and against losing 1/M at large |E|; they cost
2.2x at 2^10 in eager mode and nothing measurable at 2^20, so timing them would flatter the fused op).
`measure` serves the runner (python -m benchmarks); the test functions are pytest-benchmark cases (and, with
--benchmark-disable as in `make test`, a check that every variant still runs).
"""
import functools
import math
from typing import Callable, Dict, List

import pytest
import torch

import kale_fast as kf
from benchmarks import floors
from benchmarks._timing import cell, interleaved_ms, peak_extra_mib, ratio_spread, scaled, spread
from kale_fast import reference
from kale_fast.ops._backend import _AVAILABILITY

OP = "kale_loss"
TITLE = "kale_loss forward + backward, float32"


def plain_kale_loss(e_data: torch.Tensor, e_gen: torch.Tensor) -> torch.Tensor:
    """The Donsker-Varadhan KALE loss in plain PyTorch, as a user writes it: the eager and compiled baseline."""
    return e_data.mean() + torch.logsumexp(-e_gen, dim=0) - math.log(e_gen.numel())


def _inputs(n: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    e_data = torch.randn(n, generator=gen, device=device, dtype=dtype).requires_grad_()
    e_gen = (2 * torch.randn(n, generator=gen, device=device, dtype=dtype)).requires_grad_()
    return e_data, e_gen


def _forward_backward(loss_fn: Callable, e_data: torch.Tensor, e_gen: torch.Tensor) -> Callable[[], object]:
    return lambda: torch.autograd.grad(loss_fn(e_data, e_gen), (e_data, e_gen))


def implementations(device: torch.device) -> Dict[str, Callable]:
    """Every variant that can run on `device`: each fused backend, eager and compiled plain PyTorch."""
    impls = {f"fused:{name}": functools.partial(kf.kale_loss, backend=name)
             for name in ("cpp", "triton", "cuda") if _AVAILABILITY[name].get(device.type) is None}
    if device.type == "cpu":
        impls.pop("fused:triton", None)  # the interpreter is a correctness tool, not a benchmark
    impls["eager"] = plain_kale_loss
    impls["compiled"] = "compiled"  # made per size by measure(), after torch._dynamo.reset()
    return impls


def measure(sizes: List[int], device: torch.device, dtype: torch.dtype = torch.float32,
            budget_s: float = 0.5, progress=None) -> List[dict]:
    """One row per size: every implementation timed in interleaved rounds (ms spread, effective GB/s spread,
    peak extra MiB), the fastest fused one by median, eager / fused and compiled / fused per round, and the
    fused time over this machine's floor (floors.streaming_floor_ms of the bytes read and written once); the
    exp-inclusive floor (floors.exp_floor_ms, one exp per element of e_gen) beside it."""
    rows = []
    for n in sizes:
        e_data, e_gen = _inputs(n, dtype, device, seed=n)
        # bytes: read both inputs once, write both gradients once
        n_bytes = 2 * (e_data.numel() + e_gen.numel()) * e_data.element_size()
        steps = {}
        for name, loss_fn in implementations(device).items():
            if loss_fn == "compiled":
                torch._dynamo.reset()
                loss_fn = torch.compile(plain_kale_loss, dynamic=False)
            steps[name] = _forward_backward(loss_fn, e_data, e_gen)
        ms = interleaved_ms(steps, device, budget_s=budget_s)
        fused = min((i for i in steps if i.startswith("fused:")), key=lambda i: spread(ms[i])["median"])
        floor_ms = floors.streaming_floor_ms(n_bytes, device)
        rows.append(dict(op=OP, n=n, dtype=str(dtype).removeprefix("torch."), fused=fused,
                         ms={i: spread(t) for i, t in ms.items()}, floor_ms=floor_ms,
                         exp_floor_ms=floors.exp_floor_ms(n_bytes, e_gen.numel(), device),
                         fused_over_floor=spread(scaled(ms[fused], 1 / floor_ms)),
                         fused_gbps=spread([n_bytes / t / 1e6 for t in ms[fused]]),
                         fused_peak_extra_mib=peak_extra_mib(steps[fused], device),
                         over_fused={i: ratio_spread(ms[i], ms[fused]) for i in ("eager", "compiled") if i in ms}))
        if progress is not None:
            progress.update(1)
    return rows


def run(device: torch.device, quick: bool, progress) -> dict:
    """The runner's entry: sizes 2^10, 2^14, 2^20 when quick, else 2^10 ... 2^26 in steps of 4x."""
    exponents = [10, 14, 20] if quick else list(range(10, 27, 2))
    sizes = [2**e for e in exponents]
    progress.reset(total=len(sizes))
    rows = measure(sizes, device, budget_s=0.2 if quick else 1.0, progress=progress)
    return dict(rows=rows, floors=floors.measure(device))


def markdown(record: dict) -> str:
    """One row per size: each implementation's time, the fastest fused one's speedups, its time over the floor,
    bandwidth and memory; a line with the floors measured."""
    rows, copy_gbps = record["rows"], record["env"]["copy_gbps"]
    impls = list(dict.fromkeys(i for r in rows for i in r["ms"]))
    header = ["N", *[f"{i} ms" for i in impls], "fastest fused", "eager / fused", "compiled / fused", "floor ms",
              "fused / floor", "exp-incl. floor ms", "fused GB/s"]
    header += ["% of copy"] if copy_gbps else []
    header.append("fused peak extra MiB")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        ratios = r["over_fused"]
        cells = [f"2^{r['n'].bit_length() - 1}", *[cell(r["ms"][i]) if i in r["ms"] else "" for i in impls],
                 r["fused"], *[cell(ratios[i], suffix="x") if i in ratios else "" for i in ("eager", "compiled")],
                 f"{r['floor_ms']:.3g}" if "floor_ms" in r else "", cell(r["fused_over_floor"], suffix="x")
                 if "fused_over_floor" in r else "",
                 f"{r['exp_floor_ms']:.3g}" if "exp_floor_ms" in r else "", cell(r["fused_gbps"])]
        cells += [f"{100 * r['fused_gbps']['median'] / copy_gbps['median']:.0f}%"] if copy_gbps else []
        peak = r["fused_peak_extra_mib"]
        cells.append("n/a (CPU)" if peak is None else f"{peak:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    measured = record.get("floors")
    if measured:  # records written before floors.py have none
        lines.append(f"\nFloors (benchmarks/floors.py, {measured['threads']} thread(s)): read "
                     f"{cell(measured['read_gbps'])} GB/s, copy {cell(measured['copy_gbps'])} GB/s (read + written), "
                     f"torch.exp {cell(measured['exp_rate'])} G/s; the floor of a size is 2 (N + M) x 4 bytes at the "
                     f"copy rate, the exp-incl. floor the larger of that and M exps at torch.exp's rate. "
                     f"Eager and compiled: `plain_kale_loss`, the textbook formula.")
    return "\n".join(lines)


@pytest.mark.parametrize("n", [2**10, 2**16, 2**20])
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_kale_loss_forward_backward(benchmark, impl, n):
    """What is timed is the whole forward + backward: the gradients are those of the reference, in float64."""
    e_data, e_gen = _inputs(n, torch.float32, torch.device("cpu"))
    step = _forward_backward(kf.kale_loss if impl == "fused" else plain_kale_loss, e_data, e_gen)
    grads = benchmark(step)
    expected = _forward_backward(reference.kale_loss, e_data.double(), e_gen.double())()
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6 / n)
    assert all(bool(g.abs().sum() > 0) for g in grads)
