"""The benchmarks' timing helpers: interleaved rounds, per-round ratios, spreads and the load warning, on injected
(deterministic) clocks and load averages."""
import types

import pytest
import torch

import benchmarks.__main__ as runner
from benchmarks import _timing

CPU = torch.device("cpu")


class FakeClock:
    """A clock that only the timed functions advance; `slowdown` scales every advance (machine load)."""

    def __init__(self):
        self.now, self.slowdown = 0.0, 1.0

    def __call__(self):
        return self.now

    def work(self, seconds):
        return lambda: setattr(self, "now", self.now + seconds * self.slowdown)


def test_rounds_interleave_the_functions_after_their_warm_up():
    calls = []
    clock = FakeClock()

    def fn(name):
        def call():
            calls.append(name)
            clock.now += 0.1
        return call

    ms = _timing.interleaved_ms({"a": fn("a"), "b": fn("b")}, CPU, budget_s=0.35, min_rounds=2, warmup=2,
                                clock=clock)
    assert calls[:4] == ["a", "a", "b", "b"]  # warm-up, each function in turn
    assert calls[4:] == ["a", "b"] * (len(calls[4:]) // 2)  # then A, B, A, B, ...
    assert len(ms["a"]) == len(ms["b"]) == len(calls[4:]) // 2 == 2  # 2 rounds of 0.2 s pass the 0.35 s budget
    assert ms["a"] == pytest.approx([100.0, 100.0])


def test_round_count_stays_within_its_bounds():
    clock = FakeClock()
    fns = {"a": clock.work(1.0)}
    assert len(_timing.interleaved_ms(fns, CPU, budget_s=100, min_rounds=3, max_rounds=7, clock=clock)["a"]) == 7
    assert len(_timing.interleaved_ms(fns, CPU, budget_s=0, min_rounds=3, max_rounds=7, clock=clock)["a"]) == 3
    with pytest.raises(ValueError, match="min_rounds"):
        _timing.interleaved_ms(fns, CPU, min_rounds=5, max_rounds=2, clock=clock)
    with pytest.raises(ValueError, match="fns"):
        _timing.interleaved_ms({}, CPU)


def test_fast_calls_are_batched_to_the_minimum_sample_duration():
    clock = FakeClock()
    calls = []

    def fast():
        calls.append(1)
        clock.now += 1e-4

    ms = _timing.interleaved_ms({"fast": fast}, CPU, budget_s=0, min_rounds=2, warmup=1, min_sample_s=1e-3,
                                clock=clock)
    assert len(calls) == 1 + 2 * 10  # one warm-up call, then 10 calls per sample
    assert ms["fast"] == pytest.approx([0.1, 0.1])


def test_ratios_per_round_cancel_a_load_that_changes_between_rounds():
    """B costs 3x A; the load doubles every round: single timings spread widely, the per-round ratio does not."""
    clock = FakeClock()
    a, b = clock.work(1.0), clock.work(3.0)

    def b_then_more_load():
        b()
        clock.slowdown *= 2

    ms = _timing.interleaved_ms({"a": a, "b": b_then_more_load}, CPU, budget_s=0, min_rounds=6, max_rounds=6,
                                warmup=1, clock=clock)
    assert _timing.is_noisy(_timing.spread(ms["a"])) and _timing.is_noisy(_timing.spread(ms["b"]))
    ratio = _timing.ratio_spread(ms["b"], ms["a"])
    assert ratio == dict(median=pytest.approx(3.0), q1=pytest.approx(3.0), q3=pytest.approx(3.0),
                         min=pytest.approx(3.0), max=pytest.approx(3.0), n=6)
    assert not _timing.is_noisy(ratio)
    with pytest.raises(ValueError, match="one sample per round"):
        _timing.ratio_spread([1.0, 2.0], [1.0])


def test_spread_quartiles_flag_and_cell():
    s = _timing.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == dict(median=3.0, q1=2.0, q3=4.0, min=1.0, max=5.0, n=5)
    assert _timing.is_noisy(s)  # IQR 2 = 67% of the median
    assert _timing.cell(s, suffix="x") == "3x [2, 4]" + _timing.NOISY_MARK
    tight = _timing.spread([9.9, 10.0, 10.0, 10.1])
    assert not _timing.is_noisy(tight) and _timing.cell(tight) == "10 [9.97, 10]"
    assert _timing.spread([7.0]) == dict(median=7.0, q1=7.0, q3=7.0, min=7.0, max=7.0, n=1)
    with pytest.raises(ValueError, match="at least one"):
        _timing.spread([])


@pytest.mark.parametrize("load, cpus, threads, when, loaded", [
    (0.5, 2, 1, "before", False), (1.0, 2, 1, "before", False), (1.5, 2, 1, "before", True),
    (1.5, 2, 2, "before", True), (3.9, 4, 1, "before", True), (1.9, 2, 1, "after", False),
    (2.5, 2, 1, "after", True)])
def test_load_warning(load, cpus, threads, when, loaded):
    warning = _timing.load_warning(load, cpus, threads, when)
    assert (warning is not None) == loaded
    if loaded:
        assert f"load average {load:.2f} on {cpus} CPUs" in warning and when in warning


def test_load_warning_rejects_a_bad_thread_count():
    with pytest.raises(ValueError, match="threads must be a positive int"):
        _timing.load_warning(0.0, 2, 0)


def test_runner_records_and_prints_the_load(monkeypatch, capsys):
    loads = iter([dict(load_average=1.6, cpus=2), dict(load_average=1.2, cpus=2)])
    monkeypatch.setattr(runner, "machine_load", lambda: next(loads))
    row = _timing.spread([1.0, 1.1, 0.9])
    fake = types.SimpleNamespace(TITLE="fake", run=lambda device, quick, progress: dict(rows=[row]),
                                 markdown=lambda record: "| ms |\n|---|\n| " + _timing.cell(record["rows"][0]) + " |")
    monkeypatch.setitem(runner.ALL_BENCHES, "fake", fake)
    record = runner.run_with_load("fake", CPU, quick=True, threads=1)
    assert record["load"]["before"] == dict(load_average=1.6, cpus=2)
    assert len(record["load"]["warnings"]) == 1 and "before" in record["load"]["warnings"][0]
    assert "WARNING (fake): machine loaded before: load average 1.60" in capsys.readouterr().err
    record.update(op="fake", env=runner.environment(CPU))
    text = runner.render(record)
    assert "Load average 1.60 before, 1.20 after, on 2 CPUs" in text and "**Warning: machine loaded before" in text
    assert "| 1 [0.95, 1.05] |" in text and record["env"]["threads"] == torch.get_num_threads()


def test_peers_targets_run_a_subset_recorded_apart(monkeypatch, tmp_path):
    calls = []
    fake = types.SimpleNamespace(TITLE="fake peers", markdown=lambda record: "",
                                 run=lambda device, quick, progress, **options: calls.append(options) or {})
    monkeypatch.setitem(runner.ALL_BENCHES, "peers", fake)
    monkeypatch.setattr(runner, "copy_gbps", lambda device: None)
    runner.main(["--device", "cpu", "--ops", "peers", "--targets", "gebm", "--quick", "--out", str(tmp_path)])
    assert calls == [dict(target_names=["gebm"])]
    assert [p.name for p in tmp_path.iterdir()] == ["peers-gebm-cpu.json"]
    with pytest.raises(SystemExit):
        runner.main(["--device", "cpu", "--ops", "peers", "kale_loss", "--targets", "gebm", "--quick"])
