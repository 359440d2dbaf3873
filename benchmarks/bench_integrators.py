"""The fused MCMC updates against their eager reference twins (kale_fast.reference.integrators, which draw
their noise with torch.randn) at B = 4096 chains, L = 128. The updates run in place on the same buffers
every repetition; step sizes are small so the values stay finite."""
from typing import Callable, Dict, Tuple

import pytest
import torch

from benchmarks._timing import cell, interleaved_ms, ratio_spread, spread
from kale_fast.ops import integrators as fused
from kale_fast.reference import integrators as reference

TITLE = "fused MCMC updates vs eager reference, B = 4096, L = 128, float32"


def _state(b: int, n: int, device: torch.device, seed: int = 0) -> dict:
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    p = rand(b, n)
    return dict(z=rand(b, n), p=p, grad=rand(b, n), z2=rand(b, n), grad2=rand(b, n), potential=rand(b),
                potential2=rand(b), kinetic=0.5 * (p * p).sum(1), step=torch.full((b,), 0.01, device=device),
                friction=torch.ones(b, device=device), log_u=torch.log(torch.rand(b, generator=gen, device=device)))


def cases(s: dict) -> Dict[str, Tuple[Callable, Callable]]:
    """op name -> (fused call, eager reference call) over the state s."""
    noise = lambda: torch.randn_like(s["z"])  # noqa: E731  the eager twins draw their noise separately
    return {
        "hmc_draw_momentum": (lambda: fused.hmc_draw_momentum(s["z"]),
                              lambda: (lambda p: (p, 0.5 * (p * p).sum(1)))(noise())),
        "leapfrog_kick_drift": (lambda: fused.leapfrog_kick_drift(s["z"], s["p"], s["grad"], s["step"], 1.0),
                                lambda: reference.leapfrog_kick_drift(s["z"], s["p"], s["grad"], s["step"], 1.0)),
        "hmc_trajectory_end": (
            lambda: fused.hmc_trajectory_end(s["z"], s["p"], s["grad"], s["potential"], s["z2"], s["potential2"],
                                             s["grad2"], s["kinetic"], s["step"], s["log_u"]),
            lambda: reference.hmc_trajectory_end(s["z"], s["p"], s["grad"], s["potential"], s["z2"], s["potential2"],
                                                 s["grad2"], s["kinetic"], s["step"], s["log_u"])),
        "mala_propose": (lambda: fused.mala_propose(s["z"], s["grad"], s["step"]),
                         lambda: reference.mala_propose(s["z"], s["grad"], s["step"], noise())),
        "mala_accept": (
            lambda: fused.mala_accept(s["z"], s["potential"], s["grad"], s["z2"], s["potential2"], s["grad2"],
                                      s["step"], s["log_u"]),
            lambda: reference.mala_accept(s["z"], s["potential"], s["grad"], s["z2"], s["potential2"], s["grad2"],
                                          s["step"], s["log_u"])),
        "ula_step": (lambda: fused.ula_step(s["z"], s["grad"], s["step"]),
                     lambda: reference.ula_step(s["z"], s["grad"], s["step"], noise())),
        "kinetic_langevin_baoa": (
            lambda: fused.kinetic_langevin_baoa(s["z"], s["p"], s["grad"], s["step"], s["friction"]),
            lambda: reference.kinetic_langevin_baoa(s["z"], s["p"], s["grad"], s["step"], s["friction"], noise())),
    }


def run(device: torch.device, quick: bool, progress) -> dict:
    """Per update: fused and eager timed in interleaved rounds; eager / fused per round."""
    s = _state(4096, 128, device)
    ops = cases(s)
    progress.reset(total=len(ops))
    rows = []
    with torch.no_grad():
        for name, (fused_call, eager_call) in ops.items():
            ms = interleaved_ms({"fused": fused_call, "eager": eager_call}, device, budget_s=0.2 if quick else 1.0)
            rows.append(dict(op=name, fused_ms=spread(ms["fused"]), eager_ms=spread(ms["eager"]),
                             eager_over_fused=ratio_spread(ms["eager"], ms["fused"])))
            progress.update(1)
    return dict(rows=rows)


def markdown(record: dict) -> str:
    lines = ["| update | fused ms | eager ms | eager / fused |", "|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['op']} | {cell(r['fused_ms'])} | {cell(r['eager_ms'])} | "
                     f"{cell(r['eager_over_fused'], suffix='x')} |")
    return "\n".join(lines)


@pytest.mark.parametrize("op", list(cases(_state(2, 2, torch.device("cpu")))))
@pytest.mark.parametrize("impl", ["fused", "eager"])
def test_update(benchmark, op, impl):
    """What is timed must be a real update: it writes the state in place or returns new tensors, and, repeated
    in place on one state, everything stays finite (a timing on NaNs or on a no-op measures nothing)."""
    state = _state(4096, 128, torch.device("cpu"))
    before = {k: t.clone() for k, t in state.items()}
    call = cases(state)[op][0 if impl == "fused" else 1]
    with torch.no_grad():
        out = benchmark(call)
    returned = [t for t in (out if isinstance(out, tuple) else (out,)) if t is not None]
    changed = [k for k in state if not torch.equal(state[k], before[k])]
    assert changed or returned, f"{impl} {op} neither wrote the state nor returned anything"
    assert all(bool(torch.isfinite(t).all()) for t in [*state.values(), *returned] if t.is_floating_point())
