"""kale_fast's samplers against BlackJAX and NumPyro (HMC, MALA, NUTS, BlackJAX's ChEES; each with its own
adaptation), one thread each, on three targets (benchmarks/peers/targets.py) and B = 1, 64, 1024 chains.

Per (target, B, library, configuration): warm-up/adaptation timed with its JIT compilation (first repeat; later
repeats reuse the compiled functions), then N draws per chain timed alone; per (chain, draw, dim) trace the
minimum over coordinates of ArviZ's bulk ESS and of its tail ESS, ESS/s = ESS / sampling seconds, ranked two
ways: by bulk ESS alone, and by the smaller of bulk and tail ESS (ArviZ reports both; Vehtari et al. 2021 ask
for both: anti-correlated draws lift bulk ESS above the number of draws and leave quantiles and variances no
better estimated, so bulk alone favours a sampler that estimates means well and tails poorly); errors of the
pooled means and variances against the known moments (gaussian) or a long NUTS reference (logistic, gebm;
benchmarks/results/reference/peers.json, made once by `python -m benchmarks.bench_peers --reference`).
Each configuration runs REPEATS times, configurations round-robin within a repeat.

Opt-in: `python -m benchmarks --ops peers` (needs `pip install -r benchmarks/requirements-peers.txt`).
This module imports without JAX; its JAX tests are skipped without it.
Over 300 lines, on purpose: the peer comparison with the tests that its numbers are comparable (the same
potential and moments in torch, NumPy and JAX) kept beside the code they check.
"""
import argparse
import functools
import json
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch

from benchmarks.peers import run_kale, targets  # benchmarks.peers sets XLA_FLAGS before anything imports jax
from benchmarks.peers.common import Sizes, bulk_ess, moment_errors, tail_ess

TITLE = ("samplers against BlackJAX and NumPyro: ESS/s (ArviZ bulk and tail ESS, min over coordinates), 1 thread "
         "each, fp32")
REFERENCE = Path(__file__).resolve().parent / "results" / "reference" / "peers.json"
# Draws per chain: enough for stable bulk-ESS estimates (B = 1: 2000 draws of one chain; B >= 64: >= 6400
# draws in all) while the full run stays near 15 minutes on 2 shared cores.
FULL_SIZES = {1: Sizes(warmup=500, draws=2000), 64: Sizes(warmup=300, draws=300), 1024: Sizes(warmup=150, draws=100)}
# --quick is a smoke run: JIT compilation of the 6 JAX configurations dominates it.
QUICK_SIZES = {4: Sizes(warmup=100, draws=100)}
FULL_REPEATS, QUICK_REPEATS = 3, 1
QUICK_TARGETS = ("gaussian",)
# Long-run reference: NumPyro NUTS (default window adaptation), this many vectorised chains and steps each.
REFERENCE_CHAINS, REFERENCE_WARMUP, REFERENCE_DRAWS = 8, 1000, 5000


@functools.lru_cache(maxsize=None)
def target(name: str) -> targets.Target:
    return targets.TARGETS[name]()


@functools.lru_cache(maxsize=None)
def jax_log_density(name: str) -> Callable:
    """One JAX function object per target, so the JAX runners' compiled functions are reused across repeats."""
    return targets.jax_log_density(target(name))


def _jax_runner(module_name: str) -> Callable:
    def run(config, target_name, z0, sizes, seed):
        import importlib

        module = importlib.import_module(f"benchmarks.peers.{module_name}")
        return module.run(config, jax_log_density(target_name), z0, sizes, seed)
    return run


def libraries() -> Dict[str, tuple]:
    """library -> (configuration names, run(config, target name, z0 (B, L), sizes, seed) -> Outcome)."""
    from benchmarks.peers import run_blackjax, run_numpyro  # import no JAX at module level

    return {"kale_fast": (tuple(run_kale.configs()), lambda c, t, *rest: run_kale.run(c, target(t), *rest)),
            "blackjax": (run_blackjax.CONFIGS, _jax_runner("run_blackjax")),
            "numpyro": (run_numpyro.CONFIGS, _jax_runner("run_numpyro"))}


# --- reference moments ----------------------------------------------------------------------------------------

def make_reference(name: str) -> dict:
    """Long NumPyro NUTS run of one target: pooled mean, var, skewness per coordinate, and diagnostics."""
    import arviz
    from benchmarks.peers import run_numpyro

    start = time.perf_counter()
    z0 = np.random.default_rng(12345).standard_normal((REFERENCE_CHAINS, target(name).dim))
    sizes = Sizes(REFERENCE_WARMUP, REFERENCE_DRAWS)
    outcome = run_numpyro.run("nuts", jax_log_density(name), z0, sizes, seed=12345)
    draws = outcome.trace.reshape(-1, outcome.trace.shape[-1]).astype(np.float64)
    centred = draws - draws.mean(0)
    rhat = arviz.rhat(arviz.convert_to_dataset({"z": outcome.trace.astype(np.float64)}))["z"].values
    return dict(mean=draws.mean(0).tolist(), var=draws.var(0).tolist(),
                skewness=((centred**3).mean(0) / draws.var(0) ** 1.5).tolist(),
                min_bulk_ess=float(bulk_ess(outcome.trace).min()), max_rhat=float(rhat.max()),
                sampler="numpyro NUTS (default window adaptation, diagonal mass)", chains=REFERENCE_CHAINS,
                warmup=REFERENCE_WARMUP, draws_per_chain=REFERENCE_DRAWS, seconds=time.perf_counter() - start)


def reference_moments(name: str):
    """(mean (L,), var (L,)): closed form for the gaussian, else from REFERENCE (made and stored if missing)."""
    if target(name).moments is not None:
        return target(name).moments
    stored = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    if name not in stored:
        warnings.warn(f"no reference moments for {name} in {REFERENCE}: making them (a long NUTS run)")
        stored[name] = make_reference(name)
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(stored, indent=1))
    return np.asarray(stored[name]["mean"]), np.asarray(stored[name]["var"])


# --- the run --------------------------------------------------------------------------------------------------

def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0]) if Path("/proc/loadavg").exists() else float("nan")


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("jax", "jaxlib", "blackjax", "numpyro", "arviz")}


def measure(target_names, sizes_by_batch: Dict[int, Sizes], repeats: int, progress) -> List[dict]:
    libs = libraries()
    jobs = [(lib, config) for lib, (configs, _) in libs.items() for config in configs]
    progress.reset(total=len(target_names) * len(sizes_by_batch) * repeats * len(jobs))
    rows = []
    for name in target_names:
        mean, var = reference_moments(name)
        for batch, sizes in sizes_by_batch.items():
            for repeat in range(repeats):
                z0 = np.random.default_rng(repeat).standard_normal((batch, target(name).dim)).astype(np.float32)
                for lib, config in jobs:  # round-robin within a repeat
                    outcome = libs[lib][1](config, name, z0, sizes, 1000 * repeat + 1)
                    ess, ess_tail = float(bulk_ess(outcome.trace).min()), float(tail_ess(outcome.trace).min())
                    mean_err, var_err = moment_errors(outcome.trace, mean, var)
                    rows.append(dict(target=name, batch=batch, repeat=repeat, library=lib, config=config,
                                     warmup=sizes.warmup, draws=sizes.draws, ess=ess, ess_tail=ess_tail,
                                     ess_per_s=ess / outcome.sample_s,
                                     min_ess_per_s=min(ess, ess_tail) / outcome.sample_s, warmup_s=outcome.warmup_s,
                                     sample_s=outcome.sample_s, cpu_per_wall=outcome.cpu_s / outcome.sample_s,
                                     grads_per_draw=outcome.grads_per_draw, accept=outcome.accept,
                                     mean_err=mean_err, var_err=var_err))
                    progress.update(1)
    return rows


def run(device: torch.device, quick: bool, progress, target_names=None) -> dict:
    """target_names: a subset of targets.TARGETS (default: all three; --quick: the gaussian)."""
    if device.type != "cpu":
        raise ValueError(f"the peers benchmark compares CPU samplers on one thread; got device {device}")
    affinity, threads = os.sched_getaffinity(0), torch.get_num_threads()
    load_before = load_average()
    if load_before > os.cpu_count() - 0.5:
        warnings.warn(f"load average {load_before:.2f} on {os.cpu_count()} cores: timings will be contended")
    torch.set_num_threads(1)
    os.sched_setaffinity(0, {max(affinity)})  # one core for every library, whatever threads XLA starts
    try:
        if target_names is None:
            target_names = QUICK_TARGETS if quick else tuple(targets.TARGETS)
        rows = measure(tuple(target_names), QUICK_SIZES if quick else FULL_SIZES,
                       QUICK_REPEATS if quick else FULL_REPEATS, progress)
    finally:
        os.sched_setaffinity(0, affinity)
        torch.set_num_threads(threads)
    load_after = load_average()
    if load_after > os.cpu_count() - 0.5:
        warnings.warn(f"load average {load_after:.2f} on {os.cpu_count()} cores after the run: timings contended")
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
    return dict(rows=rows, versions=versions(), load_before=load_before, load_after=load_after,
                reference={k: {f: v[f] for f in ("sampler", "chains", "warmup", "draws_per_chain", "seconds",
                                                 "min_bulk_ess", "max_rhat")} for k, v in reference.items()})


# --- summary --------------------------------------------------------------------------------------------------

def _spread(values: List[float]) -> str:
    med = statistics.median(values)
    return f"{med:.3g}" if len(values) == 1 else f"{med:.3g} [{min(values):.3g}, {max(values):.3g}]"


# What a run's ESS/s is ranked by: the row field, and its name in the tables.
RANKINGS = {"ess_per_s": "bulk ESS", "min_ess_per_s": "min(bulk, tail) ESS"}


def summarise(rows: List[dict], measure: str = "ess_per_s") -> List[dict]:
    """Per (target, B): each library's best configuration (highest median of `measure`, a key of RANKINGS) with
    its values per repeat and median errors, and kale_fast-best / peer-best per repeat (best over configurations
    within a repeat). (target, B) groups of rows without `measure` (older records) are left out."""
    out = []
    for key in dict.fromkeys((r["target"], r["batch"]) for r in rows):
        group = [r for r in rows if (r["target"], r["batch"]) == key]
        if any(measure not in r for r in group):
            continue
        best = {}
        for lib in dict.fromkeys(r["library"] for r in group):
            by_config = {}
            for r in group:
                if r["library"] == lib:
                    by_config.setdefault(r["config"], []).append(r)
            config, runs = max(by_config.items(), key=lambda kv: statistics.median(r[measure] for r in kv[1]))
            best[lib] = dict(config=config, ess_per_s=[r[measure] for r in runs],
                             mean_err=statistics.median(r["mean_err"] for r in runs),
                             var_err=statistics.median(r["var_err"] for r in runs))
        ratios = []
        for repeat in sorted({r["repeat"] for r in group}):
            in_repeat = [r for r in group if r["repeat"] == repeat]
            ours = max(r[measure] for r in in_repeat if r["library"] == "kale_fast")
            peers = max(r[measure] for r in in_repeat if r["library"] != "kale_fast")
            ratios.append(ours / peers)
        out.append(dict(target=key[0], batch=key[1], best=best, ratios=ratios))
    return out


def markdown(record: dict) -> str:
    rows, v = record["rows"], record["versions"]
    lines = [f"jax {v['jax']}, blackjax {v['blackjax']}, numpyro {v['numpyro']}, arviz {v['arviz']}; torch and XLA "
             f"on one thread, process pinned to one core; load average {record['load_before']:.2f} before, "
             f"{record['load_after']:.2f} after. ESS/s: median [min, max] over {max(r['repeat'] for r in rows) + 1} "
             "repeat(s), ESS the minimum over coordinates. Errors: max over coordinates of |mean error| / sd and "
             "|var / reference var - 1|, median over repeats. Ratio: kale_fast's best / the best peer's ESS/s, per "
             "repeat."]
    for measure, name in RANKINGS.items():
        summaries = summarise(rows, measure)
        if not summaries:
            continue
        lines += ["", f"Ranked by {name}:", "",
                  "| target | B | kale_fast best: ESS/s | mean, var err | BlackJAX best: ESS/s | mean, var err | "
                  "NumPyro best: ESS/s | mean, var err | kale_fast / best peer |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in summaries:
            cells = []
            for lib in ("kale_fast", "blackjax", "numpyro"):
                b = s["best"][lib]
                cells += [f"{b['config']}: {_spread(b['ess_per_s'])}", f"{b['mean_err']:.3f}, {b['var_err']:.3f}"]
            lines.append(f"| {s['target']} | {s['batch']} | " + " | ".join(cells) + f" | {_spread(s['ratios'])}x |")
    lines += ["", "Every configuration (medians over repeats; warm-up s of the first repeat includes JIT):", "",
              "| target | B | library | config | warm-up + draws | bulk ESS | tail ESS | bulk ESS/s | min ESS/s | "
              "sampling s | warm-up s (first) | grads/draw | accept | CPU/wall |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = dict.fromkeys((r["target"], r["batch"], r["library"], r["config"]) for r in rows)
    for key in keys:
        runs = [r for r in rows if (r["target"], r["batch"], r["library"], r["config"]) == key]
        med = lambda f: statistics.median(r[f] for r in runs)  # noqa: E731
        tailed = all("ess_tail" in r for r in runs)  # records before tail ESS have neither
        tail = f"{med('ess_tail'):.0f}" if tailed else "-"
        least = f"{med('min_ess_per_s'):.3g}" if tailed else "-"
        first = min(runs, key=lambda r: r["repeat"])
        lines.append(f"| {' | '.join(map(str, key))} | {first['warmup']} + {first['draws']} | {med('ess'):.0f} | "
                     f"{tail} | {med('ess_per_s'):.3g} | {least} | {med('sample_s'):.3g} | {first['warmup_s']:.3g} | "
                     f"{med('grads_per_draw'):.1f} | {med('accept'):.2f} | {med('cpu_per_wall'):.2f} |")
    for name, ref in record.get("reference", {}).items():
        lines.append(f"\nReference for {name}: {ref['sampler']}, {ref['chains']} chains x {ref['draws_per_chain']} "
                     f"draws after {ref['warmup']} warm-up ({ref['seconds']:.0f} s), min bulk ESS "
                     f"{ref['min_bulk_ess']:.0f}, max R-hat {ref['max_rhat']:.3f}.")
    return "\n".join(lines)


# --- tests ----------------------------------------------------------------------------------------------------

def _numpy_gebm_potential(arrays: dict, z: np.ndarray) -> np.ndarray:
    """U(z) of the GEBM target in numpy float64 (SiLU MLPs), z (B, L) -> (B,)."""
    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    h = silu(z @ arrays["w0"].T + arrays["b0"])
    x = h @ arrays["w1"].T + arrays["b1"]
    h = silu(x @ arrays["w2"].T + arrays["b2"])
    return 0.5 * (z * z).sum(1) + (h @ arrays["w3"].T + arrays["b3"])[:, 0]


@pytest.mark.parametrize("name", ["gaussian", "logistic"])
def test_closed_form_gradient_matches_autograd(name):
    """The closed-form gradients against autograd of the value, fp64 (the GEBM's gradient is autograd's)."""
    t = targets.TARGETS[name]()
    z = torch.randn(5, t.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    value, grad = t.potential.value_and_grad(z)
    z_ = z.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(t.potential(z_).sum(), z_)
    assert value.shape == (5,)
    torch.testing.assert_close(grad, expected)


def test_gebm_torch_matches_numpy():
    t = targets.gebm()
    z = np.random.default_rng(1).standard_normal((7, t.dim))
    got = t.potential(torch.as_tensor(z, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(got, _numpy_gebm_potential(t.arrays, z), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_jax_log_density_matches_torch(name):
    jax = pytest.importorskip("jax")
    t = targets.TARGETS[name]()
    z = np.random.default_rng(2).standard_normal((6, t.dim)).astype(np.float32)
    value, grad = t.potential.value_and_grad(torch.as_tensor(z))
    jax_value, jax_grad = jax.vmap(jax.value_and_grad(targets.jax_log_density(t)))(z)
    np.testing.assert_allclose(-np.asarray(jax_value), value.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(-np.asarray(jax_grad), grad.numpy(), rtol=1e-4, atol=1e-3)


def _assert_means_within_mc_error(trace: np.ndarray, sd: np.ndarray, z_bound: float = 5.0):
    """Pooled means of a (chain, draw, dim) trace of a zero-mean target within z_bound Monte-Carlo standard
    errors (sd / sqrt(bulk ESS)) on every coordinate."""
    pytest.importorskip("arviz")
    z_scores = np.abs(trace.reshape(-1, trace.shape[-1]).mean(0)) / (sd / np.sqrt(bulk_ess(trace)))
    assert z_scores.max() < z_bound, z_scores.max()


@pytest.mark.parametrize("config", [f"hmc-{run_kale.N_LEAPFROG}", f"hmc-{run_kale.N_LEAPFROG}+per-chain"])
def test_kale_runner_on_gaussian(config):
    t = targets.gaussian()
    torch.manual_seed(0)
    z0 = np.random.default_rng(0).standard_normal((32, t.dim)).astype(np.float32)
    outcome = run_kale.run(config, t, z0, Sizes(warmup=100, draws=200), seed=0)
    assert outcome.trace.shape == (32, 200, t.dim)
    assert outcome.sample_s > 0 and 0.5 < outcome.accept < 1
    _assert_means_within_mc_error(outcome.trace, np.sqrt(t.moments[1]))


def test_kale_configurations_are_listed_eager_and_compiled_and_parse_back():
    """Every kale_fast configuration, the peers' per-chain adaptation included, is listed eager and compiled and
    parses back to its factory; an unknown one is refused by name."""
    hmc = f"hmc-{run_kale.N_LEAPFROG}"
    names = run_kale.configs()
    assert sorted(names) == sorted(name + suffix for name in run_kale.CONFIGS for suffix in ("", "+compile"))
    assert run_kale.parse(f"{hmc}+per-chain") == (f"{hmc}+per-chain", False)
    assert run_kale.parse(f"{hmc}+per-chain+compile") == (f"{hmc}+per-chain", True)
    assert run_kale.CONFIGS[f"{hmc}+per-chain"]().per_chain_adaptation
    assert not run_kale.CONFIGS[hmc]().per_chain_adaptation
    with pytest.raises(ValueError, match="unknown kale_fast configuration"):
        run_kale.parse(f"{hmc}+compile+per-chain")


@pytest.mark.parametrize("module_name, n_chains", [("run_blackjax", 4), ("run_numpyro", 4), ("run_numpyro", 1)])
def test_jax_runner_nuts_on_gaussian(module_name, n_chains):
    """NUTS of each JAX library through its runner (NumPyro's one-chain path has no chain axis: tested too)."""
    pytest.importorskip("blackjax" if module_name == "run_blackjax" else "numpyro")
    import importlib

    module = importlib.import_module(f"benchmarks.peers.{module_name}")
    t = targets.gaussian()
    z0 = np.random.default_rng(0).standard_normal((n_chains, t.dim)).astype(np.float32)
    draws = 400 // n_chains
    outcome = module.run("nuts", targets.jax_log_density(t), z0, Sizes(warmup=200, draws=draws), seed=0)
    assert outcome.trace.shape == (n_chains, draws, t.dim)
    _assert_means_within_mc_error(outcome.trace, np.sqrt(t.moments[1]))
    assert moment_errors(outcome.trace, *t.moments)[1] < 0.6  # variances of 400 NUTS draws, ESS ~ 400


def test_blackjax_chees_runner_on_gaussian():
    """BlackJAX's ChEES through its runner: one adaptation over the ensemble, its jitter functions handed on to the
    sampling kernel, the parameters broadcast to every chain."""
    pytest.importorskip("blackjax")
    from benchmarks.peers import run_blackjax

    t = targets.gaussian()
    z0 = np.random.default_rng(0).standard_normal((16, t.dim)).astype(np.float32)
    outcome = run_blackjax.run("chees", targets.jax_log_density(t), z0, Sizes(warmup=200, draws=50), seed=0)
    assert outcome.trace.shape == (16, 50, t.dim) and outcome.grads_per_draw >= 1 and 0.5 < outcome.accept < 1
    _assert_means_within_mc_error(outcome.trace, np.sqrt(t.moments[1]))


def test_summary_ratio_is_per_repeat_best_over_best():
    rows = [dict(target="t", batch=1, repeat=r, library=lib, config=c, ess_per_s=v, mean_err=0.0, var_err=0.0)
            for r, lib, c, v in [(0, "kale_fast", "a", 10), (0, "kale_fast", "b", 20), (0, "numpyro", "x", 40),
                                 (0, "blackjax", "y", 50), (1, "kale_fast", "a", 30), (1, "kale_fast", "b", 10),
                                 (1, "numpyro", "x", 60), (1, "blackjax", "y", 20)]]
    (s,) = summarise(rows)
    assert s["ratios"] == [20 / 50, 30 / 60]
    assert s["best"]["kale_fast"]["config"] in ("a", "b") and s["best"]["blackjax"]["ess_per_s"] == [50, 20]


def test_summary_ranks_by_the_measure_asked_and_skips_records_without_it():
    """By min(bulk, tail) the ranking can turn around (here: the peer's high bulk ESS/s with a poor tail);
    a record made before tail ESS was measured gives no such summary."""
    rows = [dict(target="t", batch=1, repeat=0, library=lib, config="c", ess_per_s=bulk, min_ess_per_s=low,
                 mean_err=0.0, var_err=0.0)
            for lib, bulk, low in [("kale_fast", 50, 40), ("numpyro", 80, 20), ("blackjax", 70, 25)]]
    assert summarise(rows)[0]["ratios"] == [50 / 80]
    assert summarise(rows, "min_ess_per_s")[0]["ratios"] == [40 / 25]
    for r in rows:
        del r["min_ess_per_s"]
    assert summarise(rows, "min_ess_per_s") == []


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="make the long-run reference moments of the peers benchmark")
    parser.add_argument("--reference", nargs="+", choices=["logistic", "gebm"], required=True)
    for target_name in parser.parse_args().reference:
        stored = json.loads(REFERENCE.read_text()) if REFERENCE.exists() else {}
        stored[target_name] = make_reference(target_name)
        REFERENCE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE.write_text(json.dumps(stored, indent=1))
        print(target_name, {k: v for k, v in stored[target_name].items() if k not in ("mean", "var", "skewness")})
