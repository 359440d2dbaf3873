"""The numbers evaluation computes (train/evaluate.py runs them): test NLLs of a flow base and of the GEBM, each
test row's NLL (test-nll.csv), the sample scores that select a sampler (MMD^2, the mixture toys' shares; FID for
images, with the feature network that defines it), FID and KID of image sets, the verdict GEBM vs base without a
density, and the best validation score a run recorded."""
import io
import math
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from kale_fast._io import atomic_write_text, load_torch_file
from kale_fast.data import load_images
from kale_fast.metrics import (MODE_DATASETS, mmd, mmd_difference, mode_scores, nll_breakdown, paired_difference,
                               reference_bandwidth, share_difference, verdict)
from kale_fast.metrics.image_scores import (cached_feature_network, feature_network_from_file, fid_and_kid,
                                            unit_range)
from kale_fast.train.config import SAMPLERS, DataConfig
from kale_fast.train.plots import image_panels
from kale_fast.train.run_folder import BEST


@torch.no_grad()
def base_nll(gebm, held_out: Tensor) -> dict:
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
    nll = dict(base_nll(gebm, held_out), nll_gebm=comparison.a,
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


def feature_network(feature_net: Optional[str], data: DataConfig, cache_dir: Path, image_shape: Tuple[int, ...],
                    given: Optional[nn.Module] = None):
    """(FID feature network, metric name): `given` (a network of the caller's), else the file of weights
    `feature_net` (the sampling section's) ("fid"), else a classifier trained on the labels of the data section's
    image set, kept in cache_dir ("fid_like")."""
    if given is not None:
        return given, "fid"
    if feature_net is not None:
        return feature_network_from_file(feature_net, image_shape), "fid"
    images, labels = load_images(data)
    return cached_feature_network(data.dataset, images, labels, cache_dir), "fid_like"


def vector_scores(reference: Tensor, dataset: str) -> Callable[[Tensor], Dict[str, float]]:
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


def sample_verdict(summary: dict, reference: Tensor, gebm_samples: Tensor, base_samples: Tensor,
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


def image_set_scores(test: Tensor, base_samples: Tensor, points: dict, selected_samples: Tensor, features,
                     fid_name: str, sampler_steps: int, seed: int, run_dir: Path) -> dict:
    """FID and KID (with its spread over subsets, seeded by `seed`) of base samples, of every sampler's samples at
    sampler_steps and of the selected pair, against the test images; one figure of them side by side (images.png)."""
    sets = {"base": base_samples, "selected": selected_samples,
            **{f"gebm_{name}": points[(name, sampler_steps)].samples for name in SAMPLERS}}
    scores = {}
    for label, samples in sets.items():
        scores.update({f"{k.replace('fid', fid_name)}_{label}": v
                       for k, v in fid_and_kid(test, samples, features, seed=seed).items()})
    image_panels({"held-out data": test, "base": base_samples,
                  **{f"GEBM ({name})": sets[f"gebm_{name}"] for name in SAMPLERS}}, run_dir / "images.png")
    return scores
