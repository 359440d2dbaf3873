"""Training steps: kale_fast.train.Trainer against a faithful reimplementation of the authors' training step
(benchmarks/authors_train_step.py), the same networks, math and precision (fp32), side by side in one run; and
the Trainer's eager steps against its compiled ones (`compile: true`) and the GEMM floor.

1. The paper's 32x32 networks as the authors set them up (`faithful: true`: spectral norm but for the last
   layer, Xavier init, the idle network in eval mode, the clamp; latent 100, penalty 1, synthetic images):
   B = 128 on a GPU (the authors measured 24.8 ms per energy step and 11.2 ms per base step there);
   B = 16 on CPU (full runs only).
2. The toy config's MLPs (3 x 128, 2-D, B = 256).
A round of the paper's schedule is 5 energy steps and one base step; the round ratio weighs them so.

Eager against compiled (full runs only: compiling takes tens of seconds), on the shipped configs' networks:
configs/toy_8gaussians.yaml (MLPs 3 x 128, 2-D, B = 256, penalty 0.1; a round = 5 energy steps + 1 base step)
and configs/redwine_kale.yaml (energy MLP 3 x 128 on 11-D over a frozen batch-norm RealNVP base, B = 256;
energy_only: a round = 5 energy steps). What is timed is the loop's round, Trainer.round (batches drawn, steps,
metrics), eager and compiled interleaved: issue 16's target is rounds per second. Each row gives the compile time
(the first round, with inductor's on-disk cache as found: run twice for the warm figure), both round times, the
round ratio eager / compiled, the break-even round count (compile time / time saved per round) and the round's
GEMM floor: torch's measured fp32 GEMM rate (benchmarks/floors.py) at every product the steps' forward, penalty
(input gradient and its double backward) and parameter gradients need.
"""
import copy
import time
from typing import List, Sequence, Tuple

import torch

from benchmarks._timing import cell, interleaved_ms, ratio_spread, spread
from benchmarks.authors_train_step import AuthorsTrainStep
from benchmarks.floors import gemm_floor_ms
from kale_fast.train import TrainConfig, Trainer

TITLE = "training steps, float32 (ms per step; a round = 5 energy steps + 1 base step)"


def _config(device, **values) -> TrainConfig:
    return TrainConfig.from_dict(dict(device=device.type, n_partition_samples=256, lr_energy=1e-4, lr_base=1e-4,
                                      **values))


def _rows(name: str, config: TrainConfig, data: torch.Tensor, budget_s: float) -> dict:
    torch.manual_seed(0)
    ours = Trainer.create(config, data)
    theirs = AuthorsTrainStep(copy.deepcopy(ours.gebm.base), copy.deepcopy(ours.gebm.energy), config.model.latent_dim,
                              config.objective.penalty)
    device = data.device
    batch = config.optimiser.batch_size
    real = lambda: data[torch.randint(0, len(data), (batch,), device=device)]  # noqa: E731
    # one round: all four steps, so the round ratio below pairs steps timed under the same load
    steps = dict(ours_energy=lambda: ours.energy_step(data), authors_energy=lambda: theirs.energy_step(real()),
                 ours_base=lambda: ours.base_step(data), authors_base=lambda: theirs.base_step(real()))
    ms = interleaved_ms(steps, device, budget_s=budget_s)
    rounds = {who: [5 * e + b for e, b in zip(ms[f"{who}_energy"], ms[f"{who}_base"])] for who in ("ours", "authors")}
    return dict(workload=name, batch=batch, **{f"{k}_ms": spread(v) for k, v in ms.items()},
                round_ours_ms=spread(rounds["ours"]), round_authors_ms=spread(rounds["authors"]),
                authors_over_ours_per_round=ratio_spread(rounds["authors"], rounds["ours"]))


Shape = Tuple[int, int, int]


def _linear_widths(module: torch.nn.Module) -> List[Tuple[int, int]]:
    """(in, out) of every Linear layer, in forward order (the MLPs' and the flow's couplings')."""
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, torch.nn.Linear)]


def energy_step_gemms(widths: Sequence[Tuple[int, int]], n: int, penalty: bool) -> List[Shape]:
    """The (m, n, k) products of an energy step of an MLP energy on n real + n base rows: forward and parameter
    gradients over 2n rows (input gradients below the first layer); with the penalty, over the n interpolates: the
    forward, the input gradient (every layer), and its double backward (each of those two passes' products
    differentiated in both operands: weights and activations)."""
    shapes: List[Shape] = []
    for layer, (fan_in, fan_out) in enumerate(widths):
        shapes += [(2 * n, fan_out, fan_in), (fan_out, fan_in, 2 * n)] + ([(2 * n, fan_in, fan_out)] if layer else [])
        if penalty:
            shapes += [(n, fan_out, fan_in), (n, fan_in, fan_out),     # forward, input gradient
                       (fan_out, fan_in, n), (n, fan_out, fan_in),     # the input gradient's product, differentiated
                       (fan_out, fan_in, n)] + ([(n, fan_in, fan_out)] if layer else [])  # the forward's
    return shapes


def base_step_gemms(base_widths, energy_widths, n: int) -> List[Shape]:
    """A base step on n latents: base and energy forwards, the energy's input gradients (no parameter gradients),
    the base's parameter and input gradients."""
    shapes: List[Shape] = [(n, o, i) for i, o in [*base_widths, *energy_widths]]
    shapes += [(n, i, o) for i, o in energy_widths]
    for layer, (fan_in, fan_out) in enumerate(base_widths):
        shapes += [(fan_out, fan_in, n)] + ([(n, fan_in, fan_out)] if layer else [])
    return shapes


def _compiled_rows(name: str, config: TrainConfig, data: torch.Tensor, budget_s: float) -> dict:
    """Eager against compiled Trainers of one config, from the same initial state: whole rounds of the loop
    (Trainer.round: the batches drawn, n_iter_d energy steps, the base step unless energy_only), interleaved."""
    trainers = {}
    compile_s = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        trainer = Trainer.create(config.replace(compile=mode == "compiled", n_iter_d_init=0), data)
        start = time.perf_counter()
        trainer.round(data)  # compiles both steps
        compile_s[mode] = time.perf_counter() - start
        trainers[mode] = trainer
    ms = interleaved_ms({mode: (lambda t=t: t.round(data)) for mode, t in trainers.items()}, data.device,
                        budget_s=budget_s)
    objective, batch = config.objective, config.optimiser.batch_size
    gebm = trainers["eager"].gebm
    energy_widths = _linear_widths(gebm.energy)
    base_forward = [(batch, o, i) for i, o in _linear_widths(gebm.base)]  # the base samples, no grad
    floor_energy = gemm_floor_ms(base_forward + energy_step_gemms(energy_widths, batch, objective.penalty > 0),
                                 data.device)
    floor_base = 0.0 if objective.energy_only else gemm_floor_ms(
        base_step_gemms(_linear_widths(gebm.base), energy_widths, batch), data.device)
    saved_ms = spread(ms["eager"])["median"] - spread(ms["compiled"])["median"]
    break_even = (compile_s["compiled"] - compile_s["eager"]) * 1e3 / saved_ms if saved_ms > 0 else None
    return dict(workload=name, batch=batch, rounds_in_config=config.run.n_iter, compile_s=compile_s["compiled"],
                round_eager_ms=spread(ms["eager"]), round_compiled_ms=spread(ms["compiled"]),
                eager_over_compiled_per_round=ratio_spread(ms["eager"], ms["compiled"]),
                break_even_rounds=break_even, energy_floor_ms=floor_energy, base_floor_ms=floor_base,
                round_floor_ms=objective.n_iter_d * floor_energy + floor_base)


def _shipped_configs(device) -> List[Tuple[str, TrainConfig, torch.Tensor]]:
    """The networks and batches of configs/toy_8gaussians.yaml and configs/redwine_kale.yaml (random data of their
    shapes: the step's cost does not depend on the values; the redwine base is a fresh, frozen RealNVP)."""
    generator = torch.Generator().manual_seed(0)
    toy = _config(device, hidden=128, depth=3, latent_dim=2, batch_size=256, penalty=0.1, n_iter=2000, n_iter_d=5)
    redwine = _config(device, base="realnvp", latent_dim=11, flow_layers=5, flow_hidden=100, flow_batch_norm=True,
                      energy_only=True,
                      hidden=128, depth=3, batch_size=256, penalty=0.1, n_iter=3000, n_iter_d=5)
    return [("configs/toy_8gaussians.yaml", toy, torch.randn(4096, 2, generator=generator).to(device)),
            ("configs/redwine_kale.yaml", redwine, torch.randn(4096, 11, generator=generator).to(device))]


def run(device: torch.device, quick: bool, progress) -> dict:
    budget_s = 0.2 if quick else 1.0
    paper_batch = 128 if device.type == "cuda" else (None if quick else 16)
    shipped = [] if quick else _shipped_configs(device)
    progress.reset(total=1 + (paper_batch is not None) + len(shipped))
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
    compiled_rows = []
    for name, config, data in shipped:
        compiled_rows.append(_compiled_rows(name, config, data, 5 * budget_s))  # rounds: tens of ms each
        progress.update(1)
    return dict(rows=rows, compiled_rows=compiled_rows)


def markdown(record: dict) -> str:
    lines = ["| workload | B | energy step ours / authors (ms) | base step ours / authors (ms) | "
             "round ours / authors (ms) | authors / ours per round |", "|---|---|---|---|---|---|"]
    for r in record["rows"]:
        lines.append(f"| {r['workload']} | {r['batch']} | {cell(r['ours_energy_ms'])} / {cell(r['authors_energy_ms'])} "
                     f"| {cell(r['ours_base_ms'])} / {cell(r['authors_base_ms'])} | {cell(r['round_ours_ms'])} / "
                     f"{cell(r['round_authors_ms'])} | {cell(r['authors_over_ours_per_round'], suffix='x')} |")
    if record.get("compiled_rows"):
        lines += ["", "Eager against compiled rounds of the loop (`compile: true`: Trainer.round, n_iter_d energy "
                  "steps and a base step), fp32, interleaved; floor: torch's GEMM rate at the round's products "
                  "(benchmarks/floors.py); compile: the first round, inductor's cache as found", "",
                  "| config | B | compile (s) | round eager / compiled / floor (ms) | eager / compiled per round | "
                  "break-even rounds (config's) |",
                  "|---|---|---|---|---|---|"]
        for r in record["compiled_rows"]:
            even = "never" if r["break_even_rounds"] is None else f"{r['break_even_rounds']:.0f}"
            lines.append(f"| {r['workload']} | {r['batch']} | {r['compile_s']:.1f} | {cell(r['round_eager_ms'])} / "
                         f"{cell(r['round_compiled_ms'])} / {r['round_floor_ms']:.3g} | "
                         f"{cell(r['eager_over_compiled_per_round'], suffix='x')} | {even} ({r['rounds_in_config']}) |")
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
