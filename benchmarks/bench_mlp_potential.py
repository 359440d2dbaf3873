"""The GEBM latent potential's value and input-gradient (benchmarks/peers/targets.py: base 16 -> 64 -> 64, energy
64 -> 64 -> 1, SiLU, fp32) per call at B = 1, 64, 1024, one thread, timed in interleaved rounds:

- mlp_potential: the op (kale_fast.ops.mlp_potential, its C++ kernel on CPU) as LatentPotential calls it, the
  network checked once;
- mlp_leapfrog per step: a 16-step leapfrog trajectory as one op (kale_fast.ops.mlp_potential.mlp_leapfrog, what
  HMC and ChEES run on this potential), its time divided by 16: a gradient inside a trajectory;
- LatentPotential.value_and_grad: the same with LatentPotential's per-call check that its modules are unchanged;
- eager autograd: torch.autograd through the networks (value_and_grad of the potential's __call__);
- compiled autograd: torch.compile of that (torch.func's grad through the networks, inductor);
- 7 GEMMs: the potential's matrix products alone as bare torch.mm calls (bench_samplers.gemm_floor);
- JAX jit: jax.jit(vmap(value_and_grad)) of the same potential, when JAX is installed (CPU only).

Beside them, computed rather than timed, the FLOP floor: the network's multiply-adds (forward, and backward to the
input: 2 x the sum of in x out over the layers, per row), 2 FLOP each, at the best rate torch's GEMM reaches on
this machine and thread count (benchmarks/floors.py's gemm_rate of a 1024^3 product). What an op doing those
products, with nothing else, could take at that rate; the activations' exps come on top.

CPU only: the op has no CUDA kernel, so on a GPU LatentPotential does not call it and `cases` raises.
"""
import statistics
from typing import Callable, Dict

import pytest
import torch

from benchmarks import floors
from benchmarks._timing import cell, interleaved_ms, ratio_spread, spread
from benchmarks.bench_samplers import _jax_value_and_grad, gemm_floor
from kale_fast.samplers import value_and_grad

TITLE = "mlp_potential: the GEBM latent potential's value and input-gradient per call, float32, 1 thread"
BATCHES = (1, 64, 1024)
OP = "mlp_potential"
LEAPFROG, LEAPFROG_STEPS = "mlp_leapfrog per step", 16
PEAK_GEMM = 1024  # the square product whose rate stands for the machine's GEMM peak


def cases(potential, z: torch.Tensor) -> Dict[str, Callable[[], object]]:
    """name -> a call computing (U(z), grad U(z)) (or, for the floor, the potential's matrix products)."""
    stack = potential._linear_stack(z)
    if stack is None:
        raise RuntimeError("the GEBM target's LatentPotential does not run mlp_potential here")

    def op():
        with torch.no_grad():
            return stack.call_unchecked(z, potential.temperature, 1.0)

    start = op()[1]
    momentum, steps = torch.randn_like(z), torch.tensor(LEAPFROG_STEPS)
    step_size = torch.full(z.shape[:1], 0.01, dtype=z.dtype, device=z.device)  # stays near z: no blow-up

    def leapfrog():
        with torch.no_grad():
            return stack.leapfrog_kernel(z, momentum, start, step_size, steps, None, potential.temperature, 1.0)

    compiled = torch.compile(lambda y: value_and_grad(potential.__call__, y), dynamic=False)
    fns = {OP: op, LEAPFROG: leapfrog, "LatentPotential.value_and_grad": lambda: potential.value_and_grad(z),
           "eager autograd": lambda: value_and_grad(potential.__call__, z), "compiled autograd": lambda: compiled(z),
           "7 GEMMs": gemm_floor(potential, z)}
    jax_fn = _jax_value_and_grad(z) if z.device.type == "cpu" else None
    if jax_fn is not None:
        fns["JAX jit"] = jax_fn
    return fns


def run(device: torch.device, quick: bool, progress) -> dict:
    from benchmarks.peers import targets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batches = (1, 64) if quick else BATCHES
    progress.reset(total=len(batches))
    rows = []
    try:
        potential = targets.gebm().potential
        peak = floors.gemm_rate(PEAK_GEMM, PEAK_GEMM, PEAK_GEMM, device)
        for b in batches:
            z = torch.randn(b, targets.GEBM_LATENT, generator=torch.Generator().manual_seed(b)).to(device)
            ms = interleaved_ms(cases(potential, z), device, budget_s=0.3 if quick else 2.0, min_rounds=5,
                                max_rounds=60)
            ms[LEAPFROG] = [t / LEAPFROG_STEPS for t in ms[LEAPFROG]]
            flop_floor_us = flops_per_row(potential, z) * b / peak["median"] / 1e3
            rows.append(dict(batch=b, us={k: spread([1e3 * v for v in s]) for k, s in ms.items()},
                             over_op={k: ratio_spread(s, ms[OP]) for k, s in ms.items() if k != OP},
                             flop_floor_us=flop_floor_us,
                             op_over_flop_floor=1e3 * statistics.median(ms[OP]) / flop_floor_us))
            progress.update(1)
    finally:
        torch.set_num_threads(threads)
    return dict(rows=rows, peak_gemm_gflops=peak)


def flops_per_row(potential, z: torch.Tensor) -> int:
    """FLOP of one row's value and input-gradient: 2 per multiply-add, forward and backward through every layer."""
    return sum(2 * 2 * w.numel() for w in potential._linear_stack(z).weights)


def markdown(record: dict) -> str:
    rows = record["rows"]
    names = list(rows[0]["us"])
    floor = "flop_floor_us" in rows[0]  # records before the FLOP floor column have none
    lines = [f"us per call ({LEAPFROG}: per step of a {LEAPFROG_STEPS}-step trajectory); below each, that time over "
             "mlp_potential's per round:", "",
             "| B | " + " | ".join(names) + (" | FLOP floor |" if floor else " |"),
             "|---|" + "---|" * (len(names) + floor)]
    for r in rows:
        lines.append(f"| {r['batch']} | " + " | ".join(cell(r["us"][k]) for k in names)
                     + (f" | {r['flop_floor_us']:.3g} |" if floor else " |"))
        lines.append("| | " + " | ".join("1" if k == OP else cell(r["over_op"][k], suffix="x") for k in names)
                     + (f" | op / floor {r['op_over_flop_floor']:.2f}x |" if floor else " |"))
    if floor:
        peak = record["peak_gemm_gflops"]
        lines += ["", f"FLOP floor at torch's {PEAK_GEMM}^3 GEMM rate on this machine, {peak['median']:.1f} GFLOP/s "
                  f"[{peak['min']:.1f}, {peak['max']:.1f}]."]
    return "\n".join(lines)


@pytest.mark.parametrize("batch", [1, 64])
def test_mlp_potential(benchmark, batch):
    """What is timed computes the potential: the op's value and gradient are those of eager autograd."""
    from benchmarks.peers import targets

    potential = targets.gebm().potential
    z = torch.randn(batch, targets.GEBM_LATENT)
    fns = cases(potential, z)
    value, grad = benchmark(fns[OP])
    expected_value, expected_grad = fns["eager autograd"]()
    torch.testing.assert_close(value, expected_value, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-4)
