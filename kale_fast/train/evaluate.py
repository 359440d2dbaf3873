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
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from kale_fast._io import atomic_write_text
from kale_fast.data import DataSplits, data_hash, load_data
from kale_fast.metrics import MODE_DATASETS, energy_distance, gaussian_nll, mmd, mode_scores
from kale_fast.metrics.image_scores import FidScorer
from kale_fast.train.checkpoints import check_same_data, load_run
from kale_fast.train.config import SAMPLERS, TrainConfig
from kale_fast.train.eval_report import write_figures
from kale_fast.train.eval_scores import (base_nll, best_validation, feature_network, image_set_scores, row_nlls,
                                         sample_verdict, test_nll, vector_scores)
from kale_fast.train.progress import stage
from kale_fast.train.plots import scatter_samples
from kale_fast.train.run_folder import SUMMARY
from kale_fast.train.selection import (PILOT_CHAINS, SELECTION_CHAINS, chain_points, choose, curves_on,
                                       mode_guarded_quality, step_grid, tuned_sampler)

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
        config = config.replace(feature_net=str(feature_net))
    splits = load_data(config.data, config.run.seed)
    evaluated_on = data_hash(splits)
    check_same_data(trained_on, evaluated_on, f"run {run_dir}")  # a data file changed since training: refused
    images = splits.test.dim() == 4
    if feature_net is not None and not images:
        raise ValueError(f"feature_net is for image runs (FID/KID); run {config.run.name!r} holds "
                         f"{tuple(splits.test.shape[1:])}-shaped samples, not images")
    clock = StageClock(config.run.device)
    validation, test, validation_source = validation_and_test(splits)
    validation = validation[: min(config.sampling.n_eval, SELECTION_CHAINS)].to(config.run.device)
    test = test.to(config.run.device)
    n = min(config.sampling.n_eval, len(test))
    test_reference = test[:n]
    summary = dict(run=config.run.name, dataset=config.data.dataset, data_hash=evaluated_on, rounds=rounds_done,
                   n_test_total=len(test), n_eval=n)
    if config.objective.objective == "ml":
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
        summary.update(base_nll(gebm, test))
        summary.update(row_nlls(gebm, test, None, run_dir / ROW_NLLS))
        summary.update(gaussian_nll(splits.train, test.cpu()))
        bar.update(1)
        base_samples = gebm.base_sample(len(test_reference), torch.Generator(device=config.run.device)
                                        .manual_seed(config.run.seed + 5))
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
    sampling, device, seed = config.sampling, config.run.device, config.run.seed
    mixture = config.data.dataset in MODE_DATASETS
    if images:
        with clock("feature_net"):
            features, fid_name = feature_network(sampling.feature_net, config.data,
                                                 Path(config.run.out_dir) / "feature-nets", tuple(test.shape[1:]),
                                                 given_net)
        with clock("metrics"):
            fid = FidScorer(validation, features)
        scores, metric_key, metric_name = (lambda samples: dict(fid=fid(samples))), "fid", fid_name
    else:
        scores, metric_key, metric_name = vector_scores(validation, config.data.dataset), "mmd", "mmd"

    # Selection on validation data.
    grid = step_grid(sampling.sampler_steps)
    z_validation = gebm.latent(len(validation), torch.Generator(device=device).manual_seed(seed + 2))
    samplers = {}
    with stage(f"eval: tuning {len(SAMPLERS)} samplers ({sampling.sampler_steps // 2} warm-up steps)", len(SAMPLERS),
               progress) as bar, clock("sampling"):
        for name in SAMPLERS:
            samplers[name] = tuned_sampler(gebm, sampling, name,
                                           torch.Generator(device=device).manual_seed(seed + 3),
                                           n_chains=min(PILOT_CHAINS, max(len(validation), 16)))
            bar.update(1)
    with stage(f"eval: validation curves ({len(validation)} chains, steps {grid})", len(SAMPLERS) * len(grid),
               progress) as bar:
        curves = curves_on(gebm, samplers, z_validation, grid, seed + 4, scores, clock, bar)
    if mixture:  # what users look at there; MMD^2 at n_eval points cannot resolve these curves (docs/evaluation.md)
        metric_key = metric_name = "high_quality"
        selected = choose(mode_guarded_quality(curves), grid, higher_is_better=True)
    else:
        selected = choose({name: values[metric_key] for name, values in curves.items()}, grid)

    # Test samples: the config's sampler at sampler_steps, the selected pair, every sampler for image runs.
    wanted = defaultdict(set)
    for name in SAMPLERS if images else (sampling.sampler,):
        wanted[name].add(sampling.sampler_steps)
    wanted[selected.sampler].add(selected.steps)
    z_test = gebm.latent(n, torch.Generator(device=device).manual_seed(seed + 5))
    points = {}
    with stage(f"eval: test chains ({n} chains)", len(wanted), progress) as bar, clock("sampling"):
        for name, steps in wanted.items():
            generator = torch.Generator(device=device).manual_seed(seed + 6)
            points.update({(name, p.steps): p for p in chain_points(gebm, samplers[name], z_test, sorted(steps),
                                                                    generator)})
            bar.update(1)
        with torch.no_grad():
            base_samples = gebm.base(z_test)
    gebm_point = points[(sampling.sampler, sampling.sampler_steps)]
    selected_samples = points[(selected.sampler, selected.steps)].samples

    summary = dict(
        n_validation=len(validation), validation_data=validation_source, sampler=sampling.sampler,
        sampler_steps=sampling.sampler_steps, accept_rate=gebm_point.accept_rate,
        step_size=float(samplers[sampling.sampler].step_size),
        selected=dict(sampler=selected.sampler, steps=selected.steps, metric=metric_name,
                      validation_value=selected.value),
        curves=dict(steps=grid, **{metric_name if key == metric_key else key: {name: values[key]
                                                                              for name, values in curves.items()}
                                   for key in curves[SAMPLERS[0]]}))
    with stage("eval: test metrics and figures", 3, progress) as bar:
        with clock("metrics"):
            if images:
                summary.update(image_set_scores(test_reference, base_samples, points, selected_samples, features,
                                                fid_name, sampling.sampler_steps, seed, run_dir))
            else:
                for label, samples in (("base", base_samples), ("gebm", gebm_point.samples),
                                       ("selected", selected_samples)):
                    summary[f"mmd_{label}"] = mmd(samples, test_reference).item()
                    summary[f"energy_distance_{label}"] = energy_distance(samples, test_reference).item()
                    if mixture:
                        summary[f"modes_{label}"] = mode_scores(samples, config.data.dataset)
            bar.update(1)
            generator = torch.Generator(device=device).manual_seed(seed + 7)
            summary["kale_held_out"] = gebm.kale(test, generator=generator).item()
            log_partition, log_partition_se = gebm.log_partition(
                max(EVAL_PARTITION_SAMPLES, config.objective.n_partition_samples), generator=generator)
            summary.update(log_partition_learned=float(learned_a), log_partition_mc=log_partition.item(),
                           log_partition_mc_se=log_partition_se.item())
            if hasattr(gebm.base, "log_prob"):
                summary.update(test_nll(gebm, test, log_partition, log_partition_se))
                summary.update(row_nlls(gebm, test, log_partition, run_dir / ROW_NLLS))
                summary.update(gaussian_nll(splits.train, test.cpu()))
            else:
                summary["verdict"] = sample_verdict(summary, test_reference, selected_samples, base_samples,
                                                     features if images else None, metric_name)
                summary["verdict"]["text"] += f"; GEBM samples: {selected.sampler}, {selected.steps} steps"
                summary["verdict"]["samples"] = (f"{selected.sampler}, {selected.steps} steps (selected on "
                                                 f"validation data)")
            bar.update(1)
        with clock("figures"):
            write_figures(summary, grid, metric_name, selected, test, test_reference, base_samples,
                          selected_samples, gebm, images, run_dir)
        bar.update(1)
    return summary


