"""Timing and memory helpers shared by the benchmarks: medians after warm-up, device events on GPUs."""
import statistics
import time
from typing import Callable, Optional

import torch


def median_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 0.5, max_repeat: int = 100) -> float:
    """Median wall time of fn() in milliseconds, after warm-up; on CUDA with events (triton.testing.do_bench)."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=int(budget_s * 1000), return_mode="median")
    for _ in range(3):
        fn()
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 5 or (len(times) < max_repeat and time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def peak_extra_mib(fn: Callable[[], object], device: torch.device) -> Optional[float]:
    """Peak device memory fn() allocates beyond what was allocated before it, in MiB; None on CPU, whose
    allocator keeps no statistics."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def copy_bandwidth_gbps(device: torch.device, n: int = 1 << 28) -> Optional[float]:
    """Device-to-device copy bandwidth (bytes read + bytes written per second), the ceiling of streaming ops."""
    if device.type != "cuda":
        return None
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / ms / 1e6
