"""base_ema (the moving average of a flow's weights trained by maximum likelihood, which validation scores and
best.pt keeps) and lr_decay (both learning rates cut after lr_decay_patience validations without improvement)."""
import json

import pytest
import torch

from kale_fast.data import load_data
from kale_fast.train import TrainConfig, Trainer, load_run, train

FLOW_ML = dict(objective="ml", base="realnvp", latent_dim=3, flow_layers=2, flow_hidden=8, flow_batch_norm=True,
               batch_size=32, n_eval=64, log_every=2, validate_every=2)


def _csv(tmp_path):
    rows = torch.randn(300, 3, generator=torch.Generator().manual_seed(1)) ** 3
    path = tmp_path / "table.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    return str(path)


def test_the_base_average_follows_its_recurrence_with_the_batch_norm_statistics():
    decay = 0.7
    trainer = Trainer.create(TrainConfig.from_dict({**FLOW_ML, "base_ema": decay}), torch.zeros(1, 3))
    data = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) ** 3
    expected = None
    for _ in range(5):
        trainer.base_step(data)
        state = {k: v.detach().clone() for k, v in trainer.gebm.base.state_dict().items()}
        expected = state if expected is None else {k: decay * expected[k] + (1 - decay) * state[k] for k in state}
    averaged = trainer.base_average.module.state_dict()
    assert any("running_mean" in k for k in averaged)  # batch norm's statistics are averaged too
    assert all(torch.allclose(averaged[k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.equal(averaged[k], trainer.gebm.base.state_dict()[k]) for k in expected)
    scored = trainer.scored_state_dict()  # what best.pt holds: the averaged base
    assert all(torch.equal(scored[f"base.{k}"], v) for k, v in averaged.items())


def test_validation_scores_the_average_best_pt_keeps_it_and_a_resume_continues_it(tmp_path):
    common = {**FLOW_ML, "dataset": _csv(tmp_path), "out_dir": str(tmp_path), "base_ema": 0.9, "n_iter": 12,
              "checkpoint_every": 6}
    run_dir = train(TrainConfig.from_dict({**common, "name": "straight"}), progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = {line["round"]: line["validation_nll"] for line in lines if "validation_nll" in line}
    best = load_run(run_dir)
    assert best.rounds_done == min(validations, key=validations.get)
    # the base that base_from, evaluation and sampling read scores what validation recorded: the average's NLL
    validation = load_data(best.config.data, best.config.run.seed).validation
    assert -best.gebm.base.log_prob(validation).mean().item() == pytest.approx(validations[best.rounds_done],
                                                                                rel=1e-6)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    raw = {k[len("module."):]: v for k, v in last["base_average"].items() if k.startswith("module.")}
    assert not all(torch.equal(last["gebm"][f"base.{k}"], v) for k, v in raw.items())  # it trains on: raw
    train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 6}), progress=False)
    resumed = train(TrainConfig.from_dict({**common, "name": "split"}), resume=True, progress=False)
    again = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for key in ("gebm", "base_average"):
        assert all(torch.equal(last[key][k], again[key][k]) for k in last[key])


def test_lr_decay_cuts_both_rates_every_lr_decay_patience_stale_validations():
    config = TrainConfig.from_dict({**FLOW_ML, "lr_base": 1e-3, "lr_energy": 2e-3, "lr_decay": 0.5,
                                    "lr_decay_patience": 2})
    trainer = Trainer.create(config, torch.zeros(1, 3))

    def rates():
        return trainer.base_optimizer.param_groups[0]["lr"], trainer.energy_optimizer.param_groups[0]["lr"]

    seen = []
    for score in (5.0, 6.0, 6.0, 6.0, 4.0, 6.0, 6.0, 6.0, 6.0):
        trainer.record_validation(score)
        seen.append(rates())
    # stale counts 0, 1, 2 (cut), 3, then an improvement resets it: 0, 1, 2 (cut), 3, 4 (cut)
    assert seen == [(1e-3, 2e-3)] * 2 + [(5e-4, 1e-3)] * 4 + [(2.5e-4, 5e-4)] * 2 + [(1.25e-4, 2.5e-4)]


def test_a_resume_continues_the_decayed_rates_exactly(tmp_path):
    # patience-free run whose validation stalls (lr_base tiny): the rate is cut during the run, before a resume
    common = {**FLOW_ML, "dataset": _csv(tmp_path), "out_dir": str(tmp_path), "n_iter": 24, "checkpoint_every": 12,
              "validate_every": 1, "lr_base": 1e-2, "lr_decay": 0.5, "lr_decay_patience": 1}
    run_dir = train(TrainConfig.from_dict({**common, "name": "straight"}), progress=False)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert last["base_optimizer"]["param_groups"][0]["lr"] < 1e-2  # cut at least once
    train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 12}), progress=False)
    middle = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    assert middle["base_optimizer"]["param_groups"][0]["lr"] < 1e-2  # the resume starts from a cut rate
    resumed = train(TrainConfig.from_dict({**common, "name": "split"}), resume=True, progress=False)
    again = torch.load(resumed / "checkpoint.pt", weights_only=True)
    assert again["base_optimizer"]["param_groups"][0]["lr"] == last["base_optimizer"]["param_groups"][0]["lr"]
    assert all(torch.equal(last["gebm"][k], again["gebm"][k]) for k in last["gebm"])


@pytest.mark.parametrize("values, match", [
    (dict(base_ema=1.0), r"'base_ema' must be in \[0, 1\)"),
    (dict(base_ema=-0.1), r"'base_ema' must be in \[0, 1\)"),
    (dict(base_ema=0.9, validate_every=0), "set validate_every"),
    (dict(base_ema=0.9, objective="kale"), "'base_ema' averages a flow trained by maximum likelihood"),
    (dict(lr_decay=0.0, lr_decay_patience=2), r"'lr_decay' must be in \(0, 1\]"),
    (dict(lr_decay=1.5, lr_decay_patience=2), r"'lr_decay' must be in \(0, 1\]"),
    (dict(lr_decay=float("nan"), lr_decay_patience=2), "'lr_decay'"),
    (dict(lr_decay=0.5), "set lr_decay_patience too"),
    (dict(lr_decay=0.5, lr_decay_patience=-1), "'lr_decay_patience' must be >= 0"),
    (dict(lr_decay=0.5, lr_decay_patience=2, validate_every=0), "'lr_decay_patience' counts validations"),
    (dict(lr_decay=0.5, lr_decay_patience=10, patience=10), "must be below patience"),
])
def test_bad_values_are_refused_naming_the_key(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({**FLOW_ML, **values})
