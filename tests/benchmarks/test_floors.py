"""benchmarks/floors.py: units, caching and the floor times built from the measured rates (small sizes: these
check the arithmetic and the API other benchmarks import, not this machine's speed)."""
import pytest
import torch

from benchmarks import floors

CPU = torch.device("cpu")


def test_rates_are_positive_spreads_measured_once(monkeypatch):
    calls = []
    real = floors.interleaved_ms
    monkeypatch.setattr(floors, "_CACHE", {})
    monkeypatch.setattr(floors, "interleaved_ms", lambda fns, *a, **k: calls.append(list(fns)) or real(fns, *a, **k))
    first = floors.gemm_rate(8, 16, 4, budget_s=0.01)
    assert first["median"] > 0 and first["min"] <= first["median"] <= first["max"] and first["n"] >= 5
    assert floors.gemm_rate(8, 16, 4) == first and calls == [["gemm"]]  # cached per shape, dtype, device, threads
    floors.read_gbps(CPU, n=1 << 12, budget_s=0.01)
    floors.copy_gbps(CPU, n=1 << 12, budget_s=0.01)
    assert calls == [["gemm"], ["read"], ["copy"]]


def test_floor_times_follow_the_medians(monkeypatch):
    monkeypatch.setattr(floors, "_CACHE", {})
    threads = torch.get_num_threads()
    floors._CACHE[("copy", "cpu", threads, 1 << 25)] = dict(median=10.0)  # 10 GB/s read + written
    floors._CACHE[("gemm", "cpu", threads, 4, 5, 6, "torch.float32")] = dict(median=2.0)  # 2 GFLOP/s
    floors._CACHE[("gemm", "cpu", threads, 1, 1, 1, "torch.float32")] = dict(median=1.0)
    assert floors.streaming_floor_ms(2e7, CPU) == pytest.approx(2.0)  # 20 MB at 10 GB/s
    floors._CACHE[("exp", "cpu", threads)] = dict(median=0.5)  # 0.5 G exps per second
    assert floors.exp_floor_ms(2e7, 5e5, CPU) == pytest.approx(2.0)  # streaming bound: 1 ms of exps
    assert floors.exp_floor_ms(2e7, 2e6, CPU) == pytest.approx(4.0)  # exp bound
    assert floors.gemm_floor_ms([(4, 5, 6), (1, 1, 1)], CPU) == pytest.approx((240 / 2.0 + 2 / 1.0) / 1e6)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_gemm_rate_rejects_a_bad_shape(bad):
    with pytest.raises(ValueError, match="k must be a positive int"):
        floors.gemm_rate(2, 2, bad)
