"""Training steps: kale_fast.train.Trainer against a faithful reimplementation of the authors' training step
(benchmarks/authors_train_step.py), the same networks, math and precision (fp32), side by side in one run.

1. The paper's 32x32 networks as the authors set them up (`faithful: true`: spectral norm but for the last
   layer, Xavier init, the idle network in eval mode, the clamp; latent 100, penalty 1, synthetic images):
   B = 128 on a GPU (the authors measured 24.8 ms per energy step and 11.2 ms per base step there);
   B = 16 on CPU (full runs only).
2. The toy config's MLPs (3 x 128, 2-D, B = 256).
A round of the paper's schedule is 5 energy steps and one base step; the round ratio weighs them so.
"""
import copy
from typing import List

import torch

from benchmarks._timing import cell, interleaved_ms, ratio_spread, spread
from benchmarks.authors_train_step import AuthorsTrainStep
from kale_fast.train import TrainConfig, Trainer

TITLE = "training steps, float32 (ms per step; a round = 5 energy steps + 1 base step)"


def _config(device, **values) -> TrainConfig:
    return TrainConfig.from_dict(dict(device=device.type, n_partition_samples=256, lr_energy=1e-4, lr_base=1e-4,
                                      **values))


def _rows(name: str, config: TrainConfig, data: torch.Tensor, budget_s: float) -> dict:
    torch.manual_seed(0)
    ours = Trainer.create(config, data)
    theirs = AuthorsTrainStep(copy.deepcopy(ours.gebm.base), copy.deepcopy(ours.gebm.energy), config.latent_dim,
                              config.penalty)
    device = data.device
    batch = config.batch_size
    real = lambda: data[torch.randint(0, len(data), (batch,), device=device)]  # noqa: E731
    # one round: all four steps, so the round ratio below pairs steps timed under the same load
    steps = dict(ours_energy=lambda: ours.energy_step(data), authors_energy=lambda: theirs.energy_step(real()),
                 ours_base=lambda: ours.base_step(data), authors_base=lambda: theirs.base_step(real()))
    ms = interleaved_ms(steps, device, budget_s=budget_s)
    rounds = {who: [5 * e + b for e, b in zip(ms[f"{who}_energy"], ms[f"{who}_base"])] for who in ("ours", "authors")}
    return dict(workload=name, batch=batch, **{f"{k}_ms": spread(v) for k, v in ms.items()},
                round_ours_ms=spread(rounds["ours"]), round_authors_ms=spread(rounds["authors"]),
                authors_over_ours_per_round=ratio_spread(rounds["authors"], rounds["ours"]))


def run(device: torch.device, quick: bool, progress) -> dict:
    budget_s = 0.2 if quick else 1.0
    paper_batch = 128 if device.type == "cuda" else (None if quick else 16)
    progress.reset(total=1 + (paper_batch is not None))
    generator = torch.Generator().manual_seed(0)
    rows: List[dict] = []
    toy = torch.randn(4096, 2, generator=generator).to(device)
    rows.append(_rows("toy MLP 3x128", _config(device, hidden=128, depth=3, latent_dim=2, batch_size=256,
                                                penalty=0.1), toy, budget_s))
    progress.update(1)
    if paper_batch is not None:
        images = (torch.rand(4 * paper_batch, 3, 32, 32, generator=generator) * 2 - 1).to(device)
        config = _config(device, base="sngan32", faithful=True, latent_dim=100, batch_size=paper_batch,
                         penalty=1.0)
        rows.append(_rows("paper 32x32 (SNGAN, faithful: true)", config, images, budget_s))
        progress.update(1)
    return dict(rows=rows)


def markdown(record: dict) -> str:
    lines = ["| workload | B | energy step ours / authors (ms) | base step ours / authors (ms) | "
             "round ours / authors (ms) | authors / ours per round |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['workload']} | {r['batch']} | {cell(r['ours_energy_ms'])} / {cell(r['authors_energy_ms'])} "
                     f"| {cell(r['ours_base_ms'])} / {cell(r['authors_base_ms'])} | {cell(r['round_ours_ms'])} / "
                     f"{cell(r['round_authors_ms'])} | {cell(r['authors_over_ours_per_round'], suffix='x')} |")
    return "\n".join(lines)


def test_train_steps_of_both_implementations_run(benchmark):
    """On tiny MLPs both implementations' steps run, give finite losses and update their networks (a step that
    does not train measures nothing)."""
    config = _config(torch.device("cpu"), hidden=8, depth=1, latent_dim=2, batch_size=16, penalty=0.1)
    data = torch.randn(64, 2)
    torch.manual_seed(0)
    ours = Trainer.create(config, data)
    theirs = AuthorsTrainStep(copy.deepcopy(ours.gebm.base), copy.deepcopy(ours.gebm.energy), 2, 0.1)

    def snapshot(module):
        return [p.detach().clone() for p in module.parameters()]

    def moved(module, before):
        return any(not torch.equal(p, q) for p, q in zip(module.parameters(), before))

    energy_before, base_before = snapshot(ours.gebm.energy), snapshot(ours.gebm.base)
    metrics = benchmark(lambda: ours.energy_step(data))
    assert torch.isfinite(metrics["energy_loss"]) and moved(ours.gebm.energy, energy_before)
    assert torch.isfinite(ours.base_step(data)["base_loss"]) and moved(ours.gebm.base, base_before)
    energy_before, base_before = snapshot(theirs.energy), snapshot(theirs.base)
    assert torch.isfinite(theirs.energy_step(data[:16])) and moved(theirs.energy, energy_before)
    assert torch.isfinite(theirs.base_step(data[:16])) and moved(theirs.base, base_before)
