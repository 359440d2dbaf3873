"""Samplers end to end.

1. Cheap potential (N(0, I) with a closed-form gradient, B = 4096, L = 128): kale_fast's samplers on the fused
   updates against the same samplers on the eager reference updates (backend "reference"): a careful eager
   implementation of the same algorithms, so the ratio isolates the fused updates.
2. The paper's 32x32 networks (SNGANBase32 + SNGANEnergy32, latent 100): per-iteration cost of each sampler
   against the floor (one input-only gradient of U) and against a faithful reimplementation of the authors'
   loops (benchmarks/authors_samplers.py). B = 128 and 500 on a GPU; B = 16 on CPU (full runs only).
3. GPU only: cuda_graph=True against eager on a small potential (2-D latent, 3-layer MLPs of width 128,
   B = 4096), and bf16 autocast of the networks (speed and acceptance).
4. The GEBM latent potential (gebm_rows): time per gradient inside every running sampler at B = 1, 64, 1024, eager
   and compile=True, against JAX jit's value_and_grad of the same potential and its bare GEMMs.
5. Overhead per leapfrog step: HMC with 10 leapfrog steps on a quadratic potential with a closed-form
   gradient at B = 1, L = 100 (where the arithmetic is negligible), eager and with compile=True, one thread.
Over 300 lines, on purpose: one benchmark module per op family (tests/samplers mirrors it), its five tables
sharing the timing helpers and the samplers' list.
"""
import warnings
from typing import Callable, Dict, List, Optional

import pytest
import torch

import kale_fast as kf
from benchmarks import authors_samplers as authors
from benchmarks._timing import cell, interleaved_ms, ratio_spread, scaled, spread
from kale_fast.models import MLP, SNGANBase32, SNGANEnergy32
from kale_fast.samplers import LatentPotential, value_and_grad
from kale_fast.samplers.core import Tuning

# These benchmarks time fixed step sizes on purpose (the cost of a step, not the quality of the chains): the
# end-of-run warnings about acceptance near 1 say nothing here.
warnings.filterwarnings("ignore", category=kf.samplers.SamplerWarning)
pytestmark = pytest.mark.filterwarnings("ignore::kale_fast.samplers.SamplerWarning")

TITLE = "samplers per iteration (HMC: one iteration = its leapfrog steps), float32"
STEPS_PER_TIMING = 10


class StandardGaussian:
    def __call__(self, z):
        return 0.5 * (z * z).sum(1)

    def value_and_grad(self, z):
        return 0.5 * (z * z).sum(1), z.clone()


STEP_SIZE = 0.01


def samplers(n_leapfrog: int) -> dict:
    h = STEP_SIZE
    return {"ula": lambda: kf.ULA(h), "kinetic_langevin": lambda: kf.KineticLangevin(h, 1.0),
            "mala": lambda: kf.MALA(h), "hmc": lambda: kf.HMC(h, n_leapfrog)}


def _per_iteration_ms(fns: Dict[str, Callable[[], object]], device, budget_s, **kwargs) -> Dict[str, List[float]]:
    """interleaved_ms of runs of STEPS_PER_TIMING iterations each, per iteration."""
    return {k: scaled(v, 1 / STEPS_PER_TIMING) for k, v in interleaved_ms(fns, device, budget_s, **kwargs).items()}


def _with_backend(name: str, fn: Callable) -> Callable:
    def call():
        previous = kf.get_backend()
        kf.set_backend(name)
        try:
            return fn()
        finally:
            kf.set_backend(previous)
    return call


def cheap_potential_rows(device, budget_s, progress) -> List[dict]:
    z0 = torch.randn(4096, 128, device=device)
    rows = []
    for name, make in samplers(n_leapfrog=5).items():
        run = lambda: make().run(StandardGaussian(), z0, STEPS_PER_TIMING)  # noqa: E731
        ms = _per_iteration_ms({"fused": run, "eager": _with_backend("reference", run)}, device, budget_s)
        rows.append(dict(part="cheap", sampler=name, fused_ms=spread(ms["fused"]), eager_ms=spread(ms["eager"]),
                         eager_over_fused=ratio_spread(ms["eager"], ms["fused"])))
        progress.update(1)
    return rows


def paper_network_rows(device, batch_sizes, budget_s, progress) -> List[dict]:
    torch.manual_seed(0)
    base = SNGANBase32().to(device).eval()
    energy = SNGANEnergy32(spectral_norm_head=False).to(device).eval()  # the authors' energy
    potential = LatentPotential(base, energy)
    authors_potential = lambda z: 0.5 * (z * z).sum(1) + energy(base(z))  # noqa: E731
    rows = []
    for b in batch_sizes:
        z0 = torch.randn(b, 100, device=device)
        grad0 = authors._grad(authors_potential, z0)
        h = STEP_SIZE  # the same step as ours, in each of their samplers' own parameter
        theirs = {
            "ula": lambda: authors.ula_step(authors_potential, z0, authors.ula_gamma(h)),
            "kinetic_langevin": lambda: authors.kinetic_step(authors_potential, z0, torch.randn_like(z0),
                                                             authors.leapfrog_lambda(h), 1.0),
            "mala": lambda: authors.mala_step(authors_potential, z0, grad0, authors.mala_gamma(h)),
            "hmc": lambda: authors.hmc_step(authors_potential, z0, grad0, authors.leapfrog_lambda(h), n_leapfrog=2),
        }
        for name, make in samplers(n_leapfrog=2).items():
            # one round: the floor (one input gradient), ours (per iteration), theirs (one iteration per call)
            ms = interleaved_ms({"floor": lambda: value_and_grad(potential, z0),
                                 "ours": lambda: make().run(potential, z0, STEPS_PER_TIMING),
                                 "authors": theirs[name]}, device, budget_s, min_rounds=3)
            ms["ours"] = scaled(ms["ours"], 1 / STEPS_PER_TIMING)
            gradients = 2 if name == "hmc" else 1
            rows.append(dict(part="paper", batch=b, sampler=name, ours_ms=spread(ms["ours"]),
                             authors_ms=spread(ms["authors"]), floor_ms=spread(ms["floor"]),
                             authors_over_ours=ratio_spread(ms["authors"], ms["ours"]),
                             per_gradient_over_floor=ratio_spread(scaled(ms["ours"], 1 / gradients), ms["floor"])))
            progress.update(1)
    return rows


def gpu_only_rows(device, budget_s, progress) -> List[dict]:
    torch.manual_seed(0)
    small = LatentPotential(MLP(2, 2, (128, 128)).to(device), MLP(2, 1, (128, 128)).to(device))
    z0 = torch.randn(4096, 2, device=device)
    ms = _per_iteration_ms({"eager": lambda: kf.ULA(0.01).run(small, z0, STEPS_PER_TIMING),
                            "graph": lambda: kf.ULA(0.01).run(small, z0, STEPS_PER_TIMING, cuda_graph=True)},
                           device, budget_s)
    rows = [dict(part="cuda_graph", sampler="ula", eager_ms=spread(ms["eager"]), graph_ms=spread(ms["graph"]),
                 eager_over_graph=ratio_spread(ms["eager"], ms["graph"]))]
    base, energy = SNGANBase32().to(device).eval(), SNGANEnergy32().to(device).eval()
    z0 = torch.randn(500, 100, device=device)
    potentials = {str(dtype): LatentPotential(base, energy, autocast=dtype) for dtype in (None, torch.bfloat16)}
    ms = _per_iteration_ms({k: (lambda p=p: kf.MALA(0.01).run(p, z0, STEPS_PER_TIMING)) for k, p in potentials.items()},
                           device, budget_s)
    for dtype, potential in potentials.items():
        accept = kf.MALA(0.01).run(potential, z0, 50).accept_rate.mean().item()
        rows.append(dict(part="autocast", sampler="mala", dtype=dtype, ms=spread(ms[dtype]), accept_rate=accept))
    progress.update(1)
    return rows


OVERHEAD_LEAPFROG, OVERHEAD_ITERATIONS = 10, 200


def overhead_rows(device, budget_s, progress) -> List[dict]:
    """Wall time per leapfrog step of HMC on a trivial potential, B = 1, L = 100: the per-step overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        potential = StandardGaussian()
        z0 = torch.randn(1, 100, device=device)
        runs = {}
        for compiled in (False, True):
            sampler = kf.HMC(0.1, OVERHEAD_LEAPFROG, metric="identity")
            state = sampler.run(potential, z0, 2, compile=compiled).state  # compiles once, outside the timing
            runs["compiled" if compiled else "eager"] = (
                lambda sampler=sampler, state=state, compiled=compiled:
                sampler.run(potential, None, OVERHEAD_ITERATIONS, state=state, compile=compiled))
        ms = interleaved_ms(runs, device, budget_s=budget_s, max_rounds=20)
        rows = [dict(part="overhead", compiled=name == "compiled",
                     us_per_leapfrog=spread(scaled(ms[name], 1e3 / (OVERHEAD_ITERATIONS * OVERHEAD_LEAPFROG))))
                for name in runs]
        progress.update(2)
    finally:
        torch.set_num_threads(threads)
    return rows



# --- 5. the GEBM latent potential: time per gradient inside a running sampler -----------------------------------

GEBM_BATCHES = (1, 64, 1024)
GEBM_LEAPFROG = 4
# Iterations per timed run (a run from a saved state, so its per-run set-up is in the figure, amortised).
GEBM_ITERATIONS = {1: 64, 64: 64, 1024: 16}


def gebm_samplers() -> Dict[str, Callable[[], kf.samplers.Sampler]]:
    """Fixed step sizes (no adaptation in the timed runs), identity metric: the figures are costs, not mixing."""
    return {"ula": lambda: kf.ULA(0.05, metric="identity"),
            "kinetic_langevin": lambda: kf.KineticLangevin(0.05, metric="identity"),
            "mala": lambda: kf.MALA(0.05, metric="identity"),
            "hmc": lambda: kf.HMC(0.05, GEBM_LEAPFROG, metric="identity"),
            "chees": lambda: kf.ChEES(0.05, trajectory_length=0.4, metric="identity", adapt_step_size=False)}


def _gradients(sampler: kf.samplers.Sampler, state, n: int) -> int:
    """Gradient evaluations of n iterations from `state` (ChEES: its leapfrog counts, from its Halton sequence)."""
    if not isinstance(sampler, kf.ChEES):
        return n * sampler.gradients_per_iteration()
    tune = Tuning(state.step_size, state.trajectory_length, float(state.step_size.mean()))
    return sum(sampler.params(tune, state.iteration + i, False).n_leapfrog for i in range(n))


def gemm_floor(potential: LatentPotential, z: torch.Tensor) -> Callable[[], object]:
    """The potential's 7 matrix products alone (4 forward, 3 input-gradient), as bare torch.mm calls."""
    weights = [m.weight.detach() for net in (potential.base, potential.energy) for m in net.modules()
               if isinstance(m, torch.nn.Linear)]
    head = weights[-1].expand(z.shape[0], -1).contiguous()  # the energy head's input gradient: a broadcast

    def products():
        h = z
        for w in weights:
            h = torch.mm(h, w.t())
        g = head
        for w in reversed(weights[:-1]):
            g = torch.mm(g, w)
        return h, g
    return products


def _jax_value_and_grad(z: torch.Tensor) -> Optional[Callable[[], object]]:
    """JAX jit's value_and_grad of the same potential, batched with vmap, or None without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    from benchmarks.peers import targets

    log_density = targets.jax_log_density(targets.gebm())
    fn = jax.jit(jax.vmap(jax.value_and_grad(lambda z: -log_density(z))))
    z_jax = jnp.asarray(z.numpy())
    return lambda: jax.block_until_ready(fn(z_jax))


def gebm_rows(device, budget_s, progress, batches=GEBM_BATCHES) -> List[dict]:
    """Per gradient, in a running sampler on the GEBM latent potential of benchmarks/peers/targets.py (base MLP
    16 -> 64 -> 64, energy 64 -> 64 -> 1, SiLU), eager and compile=True, with floors measured in the same
    interleaved rounds: the potential's eager value_and_grad, JAX jit's value_and_grad (when JAX is installed)
    and its 7 bare GEMMs. One thread."""
    from benchmarks.peers import targets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        potential = targets.gebm().potential
        for b in batches:
            torch.manual_seed(0)
            z0 = torch.randn(b, targets.GEBM_LATENT, device=device)
            n = GEBM_ITERATIONS[b]
            fns, gradients = {"eager value_and_grad": lambda: value_and_grad(potential, z0),
                              "7 GEMMs": gemm_floor(potential, z0)}, {}
            jax_fn = _jax_value_and_grad(z0) if device.type == "cpu" else None
            if jax_fn is not None:
                fns["JAX value_and_grad"] = jax_fn
            for name, make in gebm_samplers().items():
                for compiled in (False, True):
                    sampler = make()
                    state = sampler.run(potential, z0, 2 * n, compile=compiled).state  # compiles outside the timing
                    key = f"{name}{' compiled' if compiled else ''}"
                    gradients[key] = _gradients(sampler, state, n)
                    fns[key] = (lambda s=sampler, st=state, c=compiled: s.run(potential, None, n, state=st, compile=c))
            ms = interleaved_ms(fns, device, budget_s, min_rounds=5, max_rounds=30)
            floor = {k: spread(scaled(ms[k], 1e3)) for k in ("eager value_and_grad", "7 GEMMs", "JAX value_and_grad")
                     if k in ms}
            for name in gebm_samplers():
                per_gradient = {c: scaled(ms[k], 1e3 / gradients[k])
                                for c, k in (("eager", name), ("compiled", f"{name} compiled"))}
                row = dict(part="gebm", batch=b, sampler=name, floors=floor,
                           eager_us=spread(per_gradient["eager"]), compiled_us=spread(per_gradient["compiled"]),
                           eager_over_compiled=ratio_spread(per_gradient["eager"], per_gradient["compiled"]),
                           compiled_over_gemms=ratio_spread(per_gradient["compiled"], scaled(ms["7 GEMMs"], 1e3)))
                if "JAX value_and_grad" in ms:
                    row["compiled_over_jax"] = ratio_spread(per_gradient["compiled"],
                                                            scaled(ms["JAX value_and_grad"], 1e3))
                rows.append(row)
            progress.update(1)
    finally:
        torch.set_num_threads(threads)
    return rows


def gebm_markdown(rows: List[dict]) -> List[str]:
    gebm = [r for r in rows if r["part"] == "gebm"]
    if not gebm:
        return []
    lines = ["", "GEBM latent potential (base 16 -> 64 -> 64, energy 64 -> 64 -> 1, SiLU), us per gradient inside a "
                 f"running sampler, 1 thread (HMC: {GEBM_LEAPFROG} leapfrog steps; ChEES: T = 0.4, h = 0.05):", "",
             "| B | sampler | eager | compiled | eager / compiled | compiled / JAX jit value_and_grad "
             "| compiled / 7 GEMMs |", "|---|---|---|---|---|---|---|"]
    for r in gebm:
        jax_ratio = cell(r["compiled_over_jax"], suffix="x") if "compiled_over_jax" in r else "-"
        lines.append(f"| {r['batch']} | {r['sampler']} | {cell(r['eager_us'])} | {cell(r['compiled_us'])} | "
                     f"{cell(r['eager_over_compiled'], suffix='x')} | {jax_ratio} | "
                     f"{cell(r['compiled_over_gemms'], suffix='x')} |")
    lines += ["", "Floors per call (us): " + "; ".join(
        f"B = {r['batch']}: " + ", ".join(f"{k} {cell(v)}" for k, v in r["floors"].items())
        for r in gebm if r["sampler"] == "ula")]
    return lines


def run(device: torch.device, quick: bool, progress) -> dict:
    budget_s = 0.2 if quick else 1.0
    paper_batches = [128, 500] if device.type == "cuda" else ([] if quick else [16])
    gebm_batches = (1, 64) if quick else GEBM_BATCHES
    progress.reset(total=6 + 4 * len(paper_batches) + (device.type == "cuda") + len(gebm_batches))
    rows = gebm_rows(device, budget_s, progress, gebm_batches)
    rows += overhead_rows(device, budget_s, progress)
    rows += cheap_potential_rows(device, budget_s, progress)
    rows += paper_network_rows(device, paper_batches, budget_s, progress)
    if device.type == "cuda":
        rows += gpu_only_rows(device, budget_s, progress)
    return dict(rows=rows)


def markdown(record: dict) -> str:
    rows = record["rows"]
    lines = ["Cheap potential, B = 4096, L = 128 (HMC: 5 leapfrog steps):", "",
             "| sampler | fused ms/iter | eager-updates ms/iter | eager / fused |", "|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {cell(r['fused_ms'])} | {cell(r['eager_ms'])} | "
              f"{cell(r['eager_over_fused'], suffix='x')} |" for r in rows if r["part"] == "cheap"]
    paper = [r for r in rows if r["part"] == "paper"]
    if paper:
        lines += ["", "Paper networks (HMC: 2 leapfrog steps per iteration):", "",
                  "| B | sampler | ours ms/iter | authors ms/iter | authors / ours | floor ms "
                  "| ours per gradient / floor |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['sampler']} | {cell(r['ours_ms'])} | {cell(r['authors_ms'])} | "
                  f"{cell(r['authors_over_ours'], suffix='x')} | {cell(r['floor_ms'])} | "
                  f"{cell(r['per_gradient_over_floor'])} |" for r in paper]
    for r in rows:
        if r["part"] == "overhead":
            lines += ["", f"Overhead, HMC ({OVERHEAD_LEAPFROG} leapfrog steps) on a quadratic potential, B = 1, "
                          f"L = 100, 1 thread, {'compile=True' if r['compiled'] else 'eager'}: "
                          f"{cell(r['us_per_leapfrog'])} us per leapfrog step"]
        if r["part"] == "cuda_graph":
            lines += ["", f"cuda_graph, small MLP potential, B = 4096: eager {cell(r['eager_ms'])} ms/step, graph "
                          f"{cell(r['graph_ms'])} ms/step, eager / graph {cell(r['eager_over_graph'], suffix='x')}"]
        if r["part"] == "autocast":
            lines += [f"MALA on the paper networks, B = 500, autocast {r['dtype']}: {cell(r['ms'])} ms/iter, "
                      f"acceptance {r['accept_rate']:.3f}"]
    return "\n".join(lines + gebm_markdown(rows))


@pytest.mark.parametrize("name", list(samplers(5)))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_sampler_on_cheap_potential(benchmark, name, backend):
    z0 = torch.randn(512, 32)
    run = _with_backend(backend, lambda: samplers(5)[name]().run(StandardGaussian(), z0, STEPS_PER_TIMING))
    result = benchmark(run)
    assert result.z.shape == z0.shape and torch.isfinite(result.z).all() and not torch.equal(result.z, z0)
