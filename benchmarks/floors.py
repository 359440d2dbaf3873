"""This machine's floors, measured by the suite itself: what the hardware allows at the thread count the benchmark
runs (the runner sets one CPU thread unless told otherwise), for benchmarks to report a floor ratio beside each
figure (measured time / floor time: 1.0 is at the floor, 2.0 twice above it).

Each rate is a spread over interleaved repeats (benchmarks/_timing.py: median, q1, q3, min, max, n) in the unit its
name says; each is measured once per process and argument set, then reused (the first call costs about a second):

    read_gbps(device)               bytes read per second by a streaming reduction (sum of a 128 MiB fp32 vector)
    copy_gbps(device)               bytes read + bytes written per second by a copy (128 MiB each way on CPU)
    exp_rate(device)                G exp evaluations per second (torch.exp, fp32, on a cache-resident buffer:
                                    per core on CPU, where the runner uses one thread)
    gemm_rate(m, n, k, device)      GFLOP/s of an (m, k) @ (k, n) fp32 matmul, 2 m n k FLOP per product
    measure(device)                 read, copy and exp rates in one dict (JSON-ready)

and the floor times built from them (milliseconds, from the medians):

    streaming_floor_ms(n_bytes, device)    moving n_bytes (read + written) at the copy rate
    exp_floor_ms(n_bytes, n_exps, device)  the larger of that and n_exps exps at torch.exp's rate: what bounds an
                                           op that must also evaluate n_exps exps (an exp-bound op shows it)
    gemm_floor_ms(shapes, device)          a sequence of (m, n, k) products, each at its own measured rate

A floor is a property of this machine and this torch build (torch's exp and GEMM are the yardsticks), not of the
implementation measured against it; a fused kernel may beat torch's exp rate, which then shows as a ratio below 1.
"""
from typing import Dict, Iterable, Optional, Tuple

import torch

from benchmarks._timing import interleaved_ms, spread

_CACHE: Dict[tuple, dict] = {}


def _cached(key: tuple, measure_fn) -> dict:
    """A copy of the cached spread for key, measured by measure_fn() the first time."""
    if key not in _CACHE:
        _CACHE[key] = measure_fn()
    return dict(_CACHE[key])


def _key(name: str, device: torch.device, *args) -> tuple:
    return (name, str(torch.device(device)), torch.get_num_threads(), *args)


def _stream_elements(device: torch.device, n: Optional[int]) -> int:
    """Elements of a streaming measurement: far beyond the last-level cache (32 MiB here), 128 MiB of fp32 on
    CPU, 1 GiB on a GPU (tens of MiB of L2 and high bandwidth need more to reach steady state)."""
    if n is not None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        return n
    return 1 << (28 if torch.device(device).type == "cuda" else 25)


def _rate(n_units: float, ms: list) -> dict:
    """Spread of n_units / time in units per nanosecond (= G units per second) over the samples in ms."""
    return spread([n_units / t / 1e6 for t in ms])


def read_gbps(device: torch.device = torch.device("cpu"), n: Optional[int] = None, budget_s: float = 0.5) -> dict:
    """Bytes read per second (GB/s) by torch.sum over n fp32 elements (default: well beyond the caches)."""
    device = torch.device(device)
    n = _stream_elements(device, n)

    def measure() -> dict:
        x = torch.rand(n, device=device)  # not zeros: no benchmark runs on zero pages
        return _rate(4 * n, interleaved_ms({"read": lambda: x.sum()}, device, budget_s=budget_s)["read"])

    return _cached(_key("read", device, n), measure)


def copy_gbps(device: torch.device = torch.device("cpu"), n: Optional[int] = None, budget_s: float = 0.5) -> dict:
    """Bytes read + bytes written per second (GB/s) by a copy of n fp32 elements into an allocated buffer."""
    device = torch.device(device)
    n = _stream_elements(device, n)

    def measure() -> dict:
        src = torch.rand(n, device=device)
        dst = torch.rand(n, device=device)  # touched once here, so the copy pays no first-touch page faults
        return _rate(2 * 4 * n, interleaved_ms({"copy": lambda: dst.copy_(src)}, device, budget_s=budget_s)["copy"])

    return _cached(_key("copy", device, n), measure)


def exp_rate(device: torch.device = torch.device("cpu"), budget_s: float = 0.5) -> dict:
    """G exp evaluations per second of torch.exp in fp32 on a buffer that stays in cache (CPU: 16 Ki elements,
    64 KiB in and out, run on one core since torch parallelises only above 32 Ki elements; GPU: 2^26 elements,
    enough to fill the device, so there it is bounded by bandwidth unless exp is slower)."""
    device = torch.device(device)
    n = 1 << (26 if device.type == "cuda" else 14)

    def measure() -> dict:
        x = -10 * torch.rand(n, device=device)  # arguments in [-10, 0]: the range of the KALE op's exps
        out = torch.empty_like(x)
        return _rate(n, interleaved_ms({"exp": lambda: torch.exp(x, out=out)}, device, budget_s=budget_s)["exp"])

    return _cached(_key("exp", device), measure)


def _positive_int(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def gemm_rate(m: int, n: int, k: int, device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
              budget_s: float = 0.3) -> dict:
    """GFLOP/s of torch.mm of an (m, k) by a (k, n) matrix into a preallocated (m, n) output (2 m n k FLOP per
    product), in `dtype` (fp32 by default), at the current torch thread count."""
    m, n, k = (_positive_int(name, v) for name, v in (("m", m), ("n", n), ("k", k)))
    device = torch.device(device)

    def measure() -> dict:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        ms = interleaved_ms({"gemm": lambda: torch.mm(a, b, out=out)}, device, budget_s=budget_s)["gemm"]
        return _rate(2 * m * n * k, ms)

    return _cached(_key("gemm", device, m, n, k, str(dtype)), measure)


def streaming_floor_ms(n_bytes: float, device: torch.device = torch.device("cpu")) -> float:
    """Milliseconds to move n_bytes (bytes read + bytes written, in equal parts as a copy does) at the median copy
    rate: the floor of a streaming op that reads its inputs and writes its outputs once."""
    return n_bytes / copy_gbps(device)["median"] / 1e6


def exp_floor_ms(n_bytes: float, n_exps: float, device: torch.device = torch.device("cpu")) -> float:
    """Milliseconds of the larger bound of an op that moves n_bytes and evaluates n_exps exps: the streaming floor,
    or n_exps at the median exp rate (torch.exp's, on this device and thread count)."""
    return max(streaming_floor_ms(n_bytes, device), n_exps / exp_rate(device)["median"] / 1e6)


def gemm_floor_ms(shapes: Iterable[Tuple[int, int, int]], device: torch.device = torch.device("cpu"),
                  dtype: torch.dtype = torch.float32) -> float:
    """Milliseconds of a sequence of (m, n, k) products, each at its own median measured rate: the GEMM floor
    of a network's forward or backward (the FLOP floor at the rate torch reaches at those shapes)."""
    return sum(2 * m * n * k / gemm_rate(m, n, k, device, dtype)["median"] / 1e6 for m, n, k in shapes)


def measure(device: torch.device = torch.device("cpu")) -> dict:
    """The streaming and exp floors of `device` at the current thread count, JSON-ready: read_gbps, copy_gbps,
    exp_rate (spreads) and the thread count they hold for."""
    return dict(read_gbps=read_gbps(device), copy_gbps=copy_gbps(device), exp_rate=exp_rate(device),
                threads=torch.get_num_threads())
