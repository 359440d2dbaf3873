"""Evaluation of a run folder, written to summary.json (atomically) beside the checkpoint, with its figures.

1. Data. Validation: toys and tabular runs have a validation split (toys: points drawn from a seed of their own);
   image runs split their held-out images in two by the run's fixed shuffle, the first half validating and the
   second half being the test set. Sample metrics compare n_eval samples with the first n_eval points of a split;
   test NLLs and the held-out KALE use every test point (n_test_total).
2. Selection on validation data (kale_fast.train.selection): every sampler's chain from the same base draws, the
   sample metric at each step count of step_grid(sampler_steps): MMD^2 (toys, tabular; the mixture toys also
   record the share of high-quality samples, which does not select), FID for images (fid_like without a feature
   network file). The lowest value gives the run's (sampler, steps): summary["selected"], the curves in
   summary["curves"] and metric-vs-steps.png.
3. Test: fresh chains (another seed) of the config's sampler for sampler_steps (the keys *_gebm, as before) and of
   the selected pair (*_selected); the base samples are those chains' starting points. Image runs score every
   sampler at sampler_steps (fid_*_gebm_<sampler>) and write image grids.
4. The verdict, GEBM (selected) vs base (kale_fast.metrics.comparison): on test NLL where the base has a density,
   else on the share of high-quality samples for the mixture toys, else on MMD^2 to test data (images: in the
   feature network's space).
A base-only run (objective ml: a flow trained alone) gets steps 1 and 3 for its base only: its test NLL, its
samples against test data, no MCMC and no verdict. The budget (kale_fast.train.selection): the validation curves
run min(n_eval, validation points, SELECTION_CHAINS) chains, the warm-ups at most as many (at most PILOT_CHAINS,
at least 16), ChEES at most
EVAL_MAX_LEAPFROG leapfrog steps per iteration. eval_time_s covers all of it, split in eval_time_split_s:
sampling, metrics, figures, feature_net (obtaining the FID feature network: training it on first use).
"""
import contextlib
import dataclasses
import io
import json
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from kale_fast._io import atomic_write_text, load_torch_file
from kale_fast.data import DataSplits, data_hash, load_data, load_images
from kale_fast.metrics import (MODE_DATASETS, energy_distance, gaussian_nll, mmd, mmd_difference, mode_scores,
                               nll_breakdown, paired_difference, reference_bandwidth, share_difference, verdict)
from kale_fast.metrics.image_scores import (FidScorer, cached_feature_network, feature_network_from_file, fid_and_kid,
                                            unit_range)
from kale_fast.train.checkpoints import check_same_data, load_run
from kale_fast.train.config import SAMPLERS, TrainConfig
from kale_fast.train.progress import stage
from kale_fast.train.plots import energy_landscape, image_panels, metric_vs_steps, scatter_samples
from kale_fast.train.run_folder import BEST, SUMMARY
from kale_fast.train.selection import (PILOT_CHAINS, SELECTION_CHAINS, chain_points, choose, curves_on,
                                       mode_guarded_quality, step_grid, tuned_sampler)

CURVES_FIGURE = "metric-vs-steps.png"
EVAL_PARTITION_SAMPLES = 20_000  # base samples of the test NLLs' Monte-Carlo A (n_partition_samples if more)
ROW_NLLS = "test-nll.csv"  # each test row's NLL: what dominates the mean


class StageClock:
    """Wall-clock seconds per named stage; CUDA is synchronised at both ends so that kernels count where they ran."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.seconds: Dict[str, float] = defaultdict(float)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] += time.perf_counter() - start


def validation_and_test(splits: DataSplits) -> Tuple[Tensor, Tensor, str]:
    """(validation data, test data, where the validation data come from)."""
    if splits.validation is not None:
        return splits.validation, splits.test, "the data set's validation split"
    half = len(splits.test) // 2
    return splits.test[:half], splits.test[half:], "the first half of the held-out images (the test set: the second)"


@torch.no_grad()
def _base_nll(gebm, held_out: Tensor) -> dict:
    """The flow base's mean negative log-likelihood (nats) of held-out data and its standard error over points."""
    nll = -gebm.base.log_prob(held_out).double()
    return dict(nll_base=nll.mean().item(), nll_base_se=(nll.std() / math.sqrt(len(nll))).item())


@torch.no_grad()
def test_nll(gebm, held_out, log_partition, log_partition_se) -> dict:
    """Negative log-likelihoods (nats) of held-out data under the flow base and under the GEBM, with standard
    errors (over test points; the GEBM's adds the Monte-Carlo error of A in quadrature), and the verdict on them
    (paired over test points: the GEBM's NLL minus the base's is E(x) + A)."""
    log_p_base = gebm.base.log_prob(held_out)
    log_q = log_p_base - gebm.energies(held_out) - log_partition
    comparison = paired_difference(-log_q, -log_p_base, log_partition_se.item())
    nll = dict(_base_nll(gebm, held_out), nll_gebm=comparison.a,
               nll_gebm_se=math.sqrt((log_q.std() / math.sqrt(len(log_q))).item() ** 2
                                     + log_partition_se.item() ** 2))
    return dict(nll, verdict=verdict("test NLL (nats)", comparison, lower_is_better=True))


@torch.no_grad()
def row_nlls(gebm, held_out: Tensor, log_partition: Optional[Tensor], path: Path) -> dict:
    """Each held-out row's NLL (nats) under the flow base and, with a log_partition, under the GEBM, written to
    `path` (CSV: row, the 0-based index into the test split, then nll_base[, nll_gebm]); returns their breakdowns
    (median, max, worst rows: kale_fast.metrics.nll_breakdown), which show what a mean is made of."""
    nlls = {"base": -gebm.base.log_prob(held_out)}
    if log_partition is not None:
        nlls["gebm"] = nlls["base"] + gebm.energies(held_out) + log_partition
    columns = torch.stack([torch.arange(len(held_out), dtype=torch.float64),
                           *(nll.double().cpu() for nll in nlls.values())], 1)
    buffer = io.StringIO()
    np.savetxt(buffer, columns.numpy(), delimiter=",", header=",".join(["row", *(f"nll_{k}" for k in nlls)]),
               comments="", fmt=["%d"] + ["%.6f"] * len(nlls))
    atomic_write_text(buffer.getvalue(), path)
    breakdown = {}
    for label, nll in nlls.items():
        breakdown.update(nll_breakdown(nll, label))
    return breakdown


def best_validation(run_dir: Path) -> dict:
    """The best validation score of a run that validated (best.pt): best_validation_nll or best_validation_kale,
    and best_validation_round; {} for a run that did not validate."""
    if not (run_dir / BEST).exists():
        return {}
    best = load_torch_file(run_dir / BEST, map_location="cpu")
    key = next((k for k in ("validation_nll", "validation_kale") if k in best), None)
    if key is None or not isinstance(best.get("rounds_done"), int):
        raise ValueError(f"{run_dir / BEST} holds no validation score and round: the file was altered")
    return {f"best_{key}": float(best[key]), "best_validation_round": best["rounds_done"]}


def feature_network(config: TrainConfig, image_shape: Tuple[int, ...], given: Optional[nn.Module] = None):
    """(FID feature network, metric name): `given` (a network of the caller's), else config.feature_net's file of
    weights ("fid"), else a classifier trained on the data set's labels ("fid_like")."""
    if given is not None:
        return given, "fid"
    if config.feature_net is not None:
        return feature_network_from_file(config.feature_net, image_shape), "fid"
    images, labels = load_images(config)
    return cached_feature_network(config.dataset, images, labels, Path(config.out_dir) / "feature-nets"), "fid_like"


def _vector_scores(reference: Tensor, dataset: str) -> Callable[[Tensor], Dict[str, float]]:
    """Samples -> their validation scores: mmd (its kernel's bandwidth fixed by the reference alone, so that every
    point of every curve is measured with the same kernel) and, for the mixture toys, high_quality and
    modes_covered."""
    bandwidth = reference_bandwidth(reference).item()

    def scores(samples: Tensor) -> Dict[str, float]:
        values = dict(mmd=mmd(samples, reference, bandwidth).item())
        if dataset in MODE_DATASETS:
            modes = mode_scores(samples, dataset)
            values.update(high_quality=modes["high_quality"], modes_covered=modes["modes_covered"])
        return values
    return scores


def evaluate(run_dir, device: Optional[str] = None, progress: bool = False,
             feature_net: Union[str, nn.Module, None] = None) -> dict:
    """Evaluate the run folder's GEBM (its best validation state where it validated); feature_net overrides the
    config's FID feature network: a file of weights (see image_scores.feature_network_from_file) or a network
    built in the caller's script (an nn.Module mapping [0, 1] images (B, C, H, W) to features (B, F), with
    `num_features` F). Writes and returns summary.json's contents. `progress`: a bar per stage on a terminal, a
    line per stage elsewhere (stderr). A base-only run (objective ml) is evaluated as a base: no MCMC, no verdict
    about an energy that was never trained."""
    start = time.perf_counter()
    run_dir = Path(run_dir)
    config, gebm, learned_a, rounds_done, trained_on = load_run(run_dir, device)
    given_net = feature_net if isinstance(feature_net, nn.Module) else None
    if given_net is not None and not isinstance(getattr(given_net, "num_features", None), int):
        raise TypeError("feature_net: a network given to evaluate needs an int attribute num_features (the "
                        "length of its feature vectors), as torchmetrics' FID requires")
    if feature_net is not None and given_net is None:
        config = dataclasses.replace(config, feature_net=str(feature_net))
    splits = load_data(config)
    evaluated_on = data_hash(splits)
    check_same_data(trained_on, evaluated_on, f"run {run_dir}")  # a data file changed since training: refused
    images = splits.test.dim() == 4
    if feature_net is not None and not images:
        raise ValueError(f"feature_net is for image runs (FID/KID); run {config.name!r} holds "
                         f"{tuple(splits.test.shape[1:])}-shaped samples, not images")
    clock = StageClock(config.device)
    validation, test, validation_source = validation_and_test(splits)
    validation = validation[: min(config.n_eval, SELECTION_CHAINS)].to(config.device)
    test = test.to(config.device)
    n = min(config.n_eval, len(test))
    test_reference = test[:n]
    summary = dict(run=config.name, dataset=config.dataset, data_hash=evaluated_on, rounds=rounds_done,
                   n_test_total=len(test), n_eval=n)
    if config.objective == "ml":
        summary.update(_evaluate_base_only(gebm, config, splits, test, test_reference, clock, progress, run_dir))
    else:
        summary.update(_evaluate_gebm(gebm, config, learned_a, splits, validation, validation_source, test,
                                      test_reference, images, given_net, clock, progress, run_dir))
    summary.update(best_validation(run_dir))
    summary["eval_time_split_s"] = dict(clock.seconds)
    summary["eval_time_s"] = time.perf_counter() - start
    atomic_write_text(json.dumps(summary, indent=1) + "\n", run_dir / SUMMARY)
    return summary


def _evaluate_base_only(gebm, config: TrainConfig, splits: DataSplits, test: Tensor, test_reference: Tensor,
                        clock: StageClock, progress: bool, run_dir: Path) -> dict:
    """A flow trained alone (objective ml): its test NLL, the Gaussian floor, and its samples against test data."""
    summary = dict(evaluated="base only (objective: ml): no energy was trained, so no MCMC and no GEBM verdict")
    with stage("eval: base NLL and samples", 2, progress) as bar, clock("metrics"):
        summary.update(_base_nll(gebm, test))
        summary.update(row_nlls(gebm, test, None, run_dir / ROW_NLLS))
        summary.update(gaussian_nll(splits.train, test.cpu()))
        bar.update(1)
        base_samples = gebm.base_sample(len(test_reference), torch.Generator(device=config.device)
                                        .manual_seed(config.seed + 5))
        summary.update(mmd_base=mmd(base_samples, test_reference).item(),
                       energy_distance_base=energy_distance(base_samples, test_reference).item())
        bar.update(1)
    with clock("figures"):
        scatter_samples({"held-out data": test_reference, "base samples": base_samples}, run_dir / "samples.png")
    return summary


def _evaluate_gebm(gebm, config: TrainConfig, learned_a, splits: DataSplits, validation: Tensor,
                   validation_source: str, test: Tensor, test_reference: Tensor, images: bool,
                   given_net: Optional[nn.Module], clock: StageClock, progress: bool, run_dir: Path) -> dict:
    """Steps 2-4 of the module docstring: selection on validation data, test samples and metrics, the verdict."""
    n = len(test_reference)
    mixture = config.dataset in MODE_DATASETS
    if images:
        with clock("feature_net"):
            features, fid_name = feature_network(config, tuple(test.shape[1:]), given_net)
        with clock("metrics"):
            fid = FidScorer(validation, features)
        scores, metric_key, metric_name = (lambda samples: dict(fid=fid(samples))), "fid", fid_name
    else:
        scores, metric_key, metric_name = _vector_scores(validation, config.dataset), "mmd", "mmd"

    # Selection on validation data.
    grid = step_grid(config.sampler_steps)
    z_validation = gebm.latent(len(validation), torch.Generator(device=config.device).manual_seed(config.seed + 2))
    samplers = {}
    with stage(f"eval: tuning {len(SAMPLERS)} samplers ({config.sampler_steps // 2} warm-up steps)", len(SAMPLERS),
               progress) as bar, clock("sampling"):
        for name in SAMPLERS:
            samplers[name] = tuned_sampler(gebm, config, name,
                                           torch.Generator(device=config.device).manual_seed(config.seed + 3),
                                           n_chains=min(PILOT_CHAINS, max(len(validation), 16)))
            bar.update(1)
    with stage(f"eval: validation curves ({len(validation)} chains, steps {grid})", len(SAMPLERS) * len(grid),
               progress) as bar:
        curves = curves_on(gebm, samplers, z_validation, grid, config.seed + 4, scores, clock, bar)
    if mixture:  # what users look at there; MMD^2 at n_eval points cannot resolve these curves (docs/evaluation.md)
        metric_key = metric_name = "high_quality"
        selected = choose(mode_guarded_quality(curves), grid, higher_is_better=True)
    else:
        selected = choose({name: values[metric_key] for name, values in curves.items()}, grid)

    # Test samples: the config's sampler at sampler_steps, the selected pair, every sampler for image runs.
    wanted = defaultdict(set)
    for name in SAMPLERS if images else (config.sampler,):
        wanted[name].add(config.sampler_steps)
    wanted[selected.sampler].add(selected.steps)
    z_test = gebm.latent(n, torch.Generator(device=config.device).manual_seed(config.seed + 5))
    points = {}
    with stage(f"eval: test chains ({n} chains)", len(wanted), progress) as bar, clock("sampling"):
        for name, steps in wanted.items():
            generator = torch.Generator(device=config.device).manual_seed(config.seed + 6)
            points.update({(name, p.steps): p for p in chain_points(gebm, samplers[name], z_test, sorted(steps),
                                                                    generator)})
            bar.update(1)
        with torch.no_grad():
            base_samples = gebm.base(z_test)
    gebm_point = points[(config.sampler, config.sampler_steps)]
    selected_samples = points[(selected.sampler, selected.steps)].samples

    summary = dict(
        n_validation=len(validation), validation_data=validation_source, sampler=config.sampler,
        sampler_steps=config.sampler_steps, accept_rate=gebm_point.accept_rate,
        step_size=float(samplers[config.sampler].step_size),
        selected=dict(sampler=selected.sampler, steps=selected.steps, metric=metric_name,
                      validation_value=selected.value),
        curves=dict(steps=grid, **{metric_name if key == metric_key else key: {name: values[key]
                                                                              for name, values in curves.items()}
                                   for key in curves[SAMPLERS[0]]}))
    with stage("eval: test metrics and figures", 3, progress) as bar:
        with clock("metrics"):
            if images:
                summary.update(_image_scores(test_reference, base_samples, points, selected_samples, features,
                                             fid_name, config, run_dir))
            else:
                for label, samples in (("base", base_samples), ("gebm", gebm_point.samples),
                                       ("selected", selected_samples)):
                    summary[f"mmd_{label}"] = mmd(samples, test_reference).item()
                    summary[f"energy_distance_{label}"] = energy_distance(samples, test_reference).item()
                    if mixture:
                        summary[f"modes_{label}"] = mode_scores(samples, config.dataset)
            bar.update(1)
            generator = torch.Generator(device=config.device).manual_seed(config.seed + 7)
            summary["kale_held_out"] = gebm.kale(test, generator=generator).item()
            log_partition, log_partition_se = gebm.log_partition(
                max(EVAL_PARTITION_SAMPLES, config.n_partition_samples), generator=generator)
            summary.update(log_partition_learned=float(learned_a), log_partition_mc=log_partition.item(),
                           log_partition_mc_se=log_partition_se.item())
            if hasattr(gebm.base, "log_prob"):
                summary.update(test_nll(gebm, test, log_partition, log_partition_se))
                summary.update(row_nlls(gebm, test, log_partition, run_dir / ROW_NLLS))
                summary.update(gaussian_nll(splits.train, test.cpu()))
            else:
                summary["verdict"] = _sample_verdict(summary, test_reference, selected_samples, base_samples,
                                                     features if images else None, metric_name)
                summary["verdict"]["text"] += f"; GEBM samples: {selected.sampler}, {selected.steps} steps"
                summary["verdict"]["samples"] = (f"{selected.sampler}, {selected.steps} steps (selected on "
                                                 f"validation data)")
            bar.update(1)
        with clock("figures"):
            _figures(summary, grid, metric_name, selected, test, test_reference, base_samples, selected_samples,
                     gebm, images, run_dir)
        bar.update(1)
    return summary


def _figures(summary: dict, grid, metric_name: str, selected, test: Tensor, test_reference: Tensor,
             base_samples: Tensor, selected_samples: Tensor, gebm, images: bool, run_dir: Path) -> None:
    """metric-vs-steps.png (binomial error bars on shares); samples.png (vectors: each set's scores in its title,
    the verdict under them); energy.png (2-D data: the data over it, the clamped region marked)."""
    curves = summary["curves"][metric_name]
    errors = ({name: [math.sqrt(max(p * (1 - p), 0.0) / summary["n_validation"]) for p in values]
               for name, values in curves.items()} if metric_name == "high_quality" else None)
    metric_vs_steps(grid, curves, run_dir / CURVES_FIGURE,
                    {"mmd": "MMD^2 (lower is better)", "high_quality": "share within 3 sd of a mode (higher is better)"
                     }.get(metric_name, metric_name.replace("_", "-").upper()),
                    (selected.sampler, selected.steps), errors)
    if not images:
        scores = lambda label: (f": {summary[f'modes_{label}']['high_quality']:.1%} within 3 sd of a mode"  # noqa: E731
                                if f"modes_{label}" in summary else f": MMD^2 {summary[f'mmd_{label}']:.2g}")
        scatter_samples({"held-out data": test_reference, f"base samples{scores('base')}": base_samples,
                         f"GEBM ({selected.sampler}, {selected.steps} steps){scores('selected')}": selected_samples},
                        run_dir / "samples.png", caption=summary.get("verdict", {}).get("text"))
    if test.dim() == 2 and test.shape[1] == 2:
        energy_landscape(gebm.energies, test_reference, run_dir / "energy.png",
                         floor=getattr(gebm.energy, "floor", None))


def _sample_verdict(summary: dict, reference: Tensor, gebm_samples: Tensor, base_samples: Tensor,
                    features, metric_name: str) -> dict:
    """GEBM vs base without a density: on the share of high-quality samples for the mixture toys (from the
    summary's modes_selected and modes_base), else on MMD^2 to the reference (images: in the feature network's
    space, `features`; else None)."""
    if "modes_base" in summary:
        comparison = share_difference(summary["modes_selected"]["high_quality"], summary["modes_base"]["high_quality"],
                                      len(gebm_samples), len(base_samples))
        return verdict("share of samples within 3 sd of a mode", comparison, lower_is_better=False)
    if features is not None:
        reference, gebm_samples, base_samples = (_features(x, features) for x in (reference, gebm_samples,
                                                                                   base_samples))
    blocks = max(2, min(10, len(reference) // 20))
    space = f" in the {metric_name} feature space" if features is not None else ""
    return verdict(f"MMD^2 to test data{space}", mmd_difference(reference, gebm_samples, base_samples, blocks),
                   lower_is_better=True, estimator=f"means over {blocks} blocks of {len(reference) // blocks} points")


@torch.no_grad()
def _features(images: Tensor, features) -> Tensor:
    return features(unit_range(images)).double()


def _image_scores(test: Tensor, base_samples: Tensor, points: dict, selected_samples: Tensor, features,
                  fid_name: str, config: TrainConfig, run_dir: Path) -> dict:
    """FID and KID (with its spread over subsets, seeded) of base samples, of every sampler's samples at
    sampler_steps and of the selected pair, against the test images; one figure of them side by side (images.png)."""
    sets = {"base": base_samples, "selected": selected_samples,
            **{f"gebm_{name}": points[(name, config.sampler_steps)].samples for name in SAMPLERS}}
    scores = {}
    for label, samples in sets.items():
        scores.update({f"{k.replace('fid', fid_name)}_{label}": v
                       for k, v in fid_and_kid(test, samples, features, seed=config.seed).items()})
    image_panels({"held-out data": test, "base": base_samples,
                  **{f"GEBM ({name})": sets[f"gebm_{name}"] for name in SAMPLERS}}, run_dir / "images.png")
    return scores


def summary_text(summary: dict, run_dir) -> str:
    """A few lines for people: what was chosen, the headline numbers of base and GEBM, the verdict, the files."""
    split = ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in summary["eval_time_split_s"].items())
    lines = [f"evaluated {run_dir} in {summary['eval_time_s']:.0f} s ({split}): {summary['dataset']}, round "
             f"{summary['rounds']}, {summary['n_eval']} samples against {summary['n_test_total']} test points"]
    if "evaluated" in summary:
        lines.append(f"  {summary['evaluated']}")
    if "selected" in summary:
        chosen = summary["selected"]
        lines.append(f"  chosen on validation data: {chosen['sampler']}, {chosen['steps']} MCMC steps "
                     f"({chosen['metric']} {chosen['validation_value']:.4g})")
    if "modes_base" in summary:
        share = lambda m: f"{m['high_quality']:.1%} ({m['modes_covered']} of {m['n_modes']} modes)"  # noqa: E731
        lines.append(f"  within 3 sd of a mode: base {share(summary['modes_base'])}, GEBM "
                     f"{share(summary['modes_selected'])}")
    if "mmd_base" in summary:
        gebm = f", GEBM {summary['mmd_selected']:.3g}" if "mmd_selected" in summary else ""
        lines.append(f"  MMD^2 to test data: base {summary['mmd_base']:.3g}{gebm}")
    if "nll_base" in summary:
        gebm = (f", GEBM {summary['nll_gebm']:.3f} +- {summary['nll_gebm_se']:.2g}" if "nll_gebm" in summary
                else "")
        lines.append(f"  test NLL (nats): base {summary['nll_base']:.3f} +- {summary['nll_base_se']:.2g}{gebm}, "
                     f"a Gaussian {summary['nll_gaussian']:.3f}")
    if "verdict" in summary:
        lines.append(f"  {summary['verdict']['text']}")
    written = [SUMMARY] + [name for name in ("samples.png", "images.png", "energy.png", CURVES_FIGURE,
                                             "training.png") if (Path(run_dir) / name).exists()]
    lines.append(f"  written to {run_dir}: {', '.join(written)} ({SUMMARY} holds every number)")
    return "\n".join(lines)
