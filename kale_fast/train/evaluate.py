"""Evaluation of a run folder: GEBM and base samples against held-out data, KALE, the log-partition, plots;
written to summary.json (atomically) beside the checkpoint."""
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch

from kale_fast._io import atomic_write_text
from kale_fast.data import data_hash
from kale_fast.metrics import energy_distance, gaussian_nll, mmd
from kale_fast.metrics.image_scores import cached_feature_network, feature_network_from_file, fid_and_kid
from kale_fast.train.config import SAMPLERS
from kale_fast.train.loop import SUMMARY, load_data, load_images, load_run, make_sampler
from kale_fast.train.plots import energy_landscape, image_grid, scatter_samples


@torch.no_grad()
def test_nll(gebm, held_out, log_partition, log_partition_se) -> dict:
    """Negative log-likelihoods (nats) of held-out data under the flow base and under the GEBM, with standard
    errors (over test points; the GEBM's adds the Monte-Carlo error of A in quadrature)."""
    log_p_base = gebm.base.log_prob(held_out)
    log_q = log_p_base - gebm.energies(held_out) - log_partition
    n = len(held_out)
    se = lambda values: (values.std() / math.sqrt(n)).item()  # noqa: E731
    return dict(nll_base=-log_p_base.mean().item(), nll_base_se=se(log_p_base), nll_gebm=-log_q.mean().item(),
                nll_gebm_se=math.sqrt(se(log_q) ** 2 + log_partition_se.item() ** 2))


def image_scores(config, gebm, held_out, base_samples, run_dir: Path, generator) -> dict:
    """FID and KID of base samples and of GEBM samples from each sampler, against held-out images; image grids
    of each. Features: config.feature_net's file, else a classifier trained on the data set's labels ("fid_like")."""
    if config.feature_net is not None:
        features, fid_name = feature_network_from_file(config.feature_net, tuple(held_out.shape[1:])), "fid"
    else:
        images, labels = load_images(config)
        features = cached_feature_network(config.dataset, images, labels, Path(config.out_dir) / "feature-nets")
        fid_name = "fid_like"
    scores = {f"{k}_base": v for k, v in fid_and_kid(held_out, base_samples, features).items()}
    image_grid(held_out, run_dir / "images-data.png", title="held-out data")
    image_grid(base_samples, run_dir / "images-base.png", title="base samples")
    for name in SAMPLERS:
        sampler = make_sampler(dataclasses.replace(config, sampler=name))
        samples, _ = gebm.sample(len(held_out), sampler, config.sampler_steps, warmup=config.sampler_steps // 2,
                                 generator=generator)
        scores.update({f"{k}_gebm_{name}": v for k, v in fid_and_kid(held_out, samples, features).items()})
        image_grid(samples, run_dir / f"images-gebm-{name}.png", title=f"GEBM samples, {name}")
    return {k.replace("fid", fid_name): v for k, v in scores.items()}


def evaluate(run_dir, device: Optional[str] = None, progress: bool = False, feature_net: Optional[str] = None) -> dict:
    """Evaluate the run folder's GEBM (its best validation state where it validated); feature_net overrides the
    config's FID feature network. Writes and returns summary.json's contents."""
    run_dir = Path(run_dir)
    config, gebm, learned_a, rounds_done = load_run(run_dir, device)
    if feature_net is not None:
        config = dataclasses.replace(config, feature_net=feature_net)
    splits = load_data(config)
    if feature_net is not None and splits.test.dim() != 4:
        raise ValueError(f"feature_net is for image runs (FID/KID); run {config.name!r} holds "
                         f"{tuple(splits.test.shape[1:])}-shaped samples, not images")
    held_out = splits.test[: config.n_eval].to(config.device)
    generator = torch.Generator(device=config.device).manual_seed(config.seed + 2)
    start = time.perf_counter()
    base_samples = gebm.base_sample(len(held_out), generator)
    gebm_samples, result = gebm.sample(len(held_out), make_sampler(config), config.sampler_steps,
                                       warmup=config.sampler_steps // 2, generator=generator, progress=progress)
    log_partition, log_partition_se = gebm.log_partition(20_000, generator=generator)
    summary = dict(
        run=config.name, dataset=config.dataset, data_hash=data_hash(splits), rounds=rounds_done, n_eval=len(held_out), sampler=config.sampler,
        sampler_steps=config.sampler_steps,
        accept_rate=result.accept_rate.mean().item(), step_size=result.step_size.mean().item(),
        mmd_base=mmd(base_samples, held_out).item(), mmd_gebm=mmd(gebm_samples, held_out).item(),
        energy_distance_base=energy_distance(base_samples, held_out).item(),
        energy_distance_gebm=energy_distance(gebm_samples, held_out).item(),
        kale_held_out=gebm.kale(held_out, generator=generator).item(),
        log_partition_learned=float(learned_a), log_partition_mc=log_partition.item(),
        log_partition_mc_se=log_partition_se.item(), eval_time_s=time.perf_counter() - start)
    if hasattr(gebm.base, "log_prob"):
        summary.update(test_nll(gebm, held_out, log_partition, log_partition_se))
        summary.update(gaussian_nll(splits.train, held_out.cpu()))
    if held_out.dim() == 4:
        summary.update(image_scores(config, gebm, held_out, base_samples, run_dir, generator))
    else:
        scatter_samples({"held-out data": held_out, "base samples": base_samples, "GEBM samples": gebm_samples},
                        run_dir / "samples.png")
    if held_out.dim() == 2 and held_out.shape[1] == 2:
        energy_landscape(gebm.energies, held_out, run_dir / "energy.png")
    atomic_write_text(json.dumps(summary, indent=1) + "\n", run_dir / SUMMARY)
    return summary
