"""The GEBM latent potential's value and input-gradient (benchmarks/peers/targets.py: base 16 -> 64 -> 64, energy
64 -> 64 -> 1, SiLU, fp32) per call at B = 1, 64, 1024, one thread, timed in interleaved rounds:

- mlp_potential: the op (kale_fast.ops.mlp_potential, its C++ kernel on CPU) as LatentPotential calls it, the
  network checked once;
- LatentPotential.value_and_grad: the same with LatentPotential's per-call check that its modules are unchanged;
- eager autograd: torch.autograd through the networks (value_and_grad of the potential's __call__);
- compiled autograd: torch.compile of that (torch.func's grad through the networks, inductor);
- 7 GEMMs: the potential's matrix products alone as bare torch.mm calls (bench_samplers.gemm_floor);
- JAX jit: jax.jit(vmap(value_and_grad)) of the same potential, when JAX is installed (CPU only).

On a GPU the op runs its reference in torch ops (no CUDA kernel): the table then says so by its figures.
"""
from typing import Callable, Dict

import pytest
import torch

from benchmarks._timing import cell, interleaved_ms, ratio_spread, spread
from benchmarks.bench_samplers import _jax_value_and_grad, gemm_floor
from kale_fast.samplers import value_and_grad

TITLE = "mlp_potential: the GEBM latent potential's value and input-gradient per call, float32, 1 thread"
BATCHES = (1, 64, 1024)
OP = "mlp_potential"


def cases(potential, z: torch.Tensor) -> Dict[str, Callable[[], object]]:
    """name -> a call computing (U(z), grad U(z)) (or, for the floor, the potential's matrix products)."""
    stack = potential._linear_stack(z)
    if stack is None:
        raise RuntimeError("the GEBM target's LatentPotential does not run mlp_potential here")

    def op():
        with torch.no_grad():
            return stack.call_unchecked(z, potential.temperature, 1.0)

    compiled = torch.compile(lambda y: value_and_grad(potential.__call__, y), dynamic=False)
    fns = {OP: op, "LatentPotential.value_and_grad": lambda: potential.value_and_grad(z),
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
        for b in batches:
            z = torch.randn(b, targets.GEBM_LATENT, generator=torch.Generator().manual_seed(b)).to(device)
            ms = interleaved_ms(cases(potential, z), device, budget_s=0.3 if quick else 2.0, min_rounds=5,
                                max_rounds=60)
            rows.append(dict(batch=b, us={k: spread([1e3 * v for v in s]) for k, s in ms.items()},
                             over_op={k: ratio_spread(s, ms[OP]) for k, s in ms.items() if k != OP}))
            progress.update(1)
    finally:
        torch.set_num_threads(threads)
    return dict(rows=rows)


def markdown(record: dict) -> str:
    rows = record["rows"]
    names = list(rows[0]["us"])
    lines = ["us per call; in brackets below each, that time over mlp_potential's per round:", "",
             "| B | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['batch']} | " + " | ".join(cell(r["us"][k]) for k in names) + " |")
        lines.append("| | " + " | ".join("1" if k == OP else cell(r["over_op"][k], suffix="x") for k in names) + " |")
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
