"""energy_ema: the moving average of the energy's weights that validation scores and best.pt keeps."""
import json

import pytest
import torch

from kale_fast.data import load_data
from kale_fast.train import TrainConfig, load_run, train
from kale_fast.train import Trainer

FLOW_GEBM = dict(base="realnvp", latent_dim=3, flow_layers=2, flow_hidden=8, hidden=16, depth=2, n_iter_d_init=2,
                 n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=4, log_every=2, validate_every=2,
                 n_partition_samples=256)


def _csv(tmp_path):
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(300, 3, generator=generator) ** 3
    path = tmp_path / "table.csv"
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    return str(path)


def test_the_average_follows_its_recurrence_after_every_energy_step():
    decay = 0.7
    config = TrainConfig.from_dict({**FLOW_GEBM, "energy_ema": decay})
    data = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    trainer = Trainer.create(config, data)
    expected = None
    for _ in range(5):
        trainer.energy_step(data)
        weights = {k: v.detach().clone() for k, v in trainer.gebm.energy.state_dict().items()}
        expected = weights if expected is None else {k: decay * expected[k] + (1 - decay) * weights[k]
                                                     for k in weights}
    averaged = trainer.energy_average.module.state_dict()
    assert all(torch.allclose(averaged[k], expected[k], atol=1e-6) for k in expected)
    assert not all(torch.equal(averaged[k], trainer.gebm.energy.state_dict()[k]) for k in expected)
    scored = trainer.scored_state_dict()  # what best.pt holds: the average, with the base as trained
    assert all(torch.equal(scored[f"energy.{k}"], averaged[k]) for k in averaged)
    assert all(torch.equal(scored[f"base.{k}"], v) for k, v in trainer.gebm.base.state_dict().items())


def test_validation_scores_the_average_best_pt_keeps_it_and_a_resume_continues_it(tmp_path):
    common = {**FLOW_GEBM, "dataset": _csv(tmp_path), "out_dir": str(tmp_path), "energy_ema": 0.9, "n_iter": 8,
              "checkpoint_every": 4}
    run_dir = train(TrainConfig.from_dict({**common, "name": "straight"}), progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = {line["round"]: line["validation_nll"] for line in lines if "validation_nll" in line}
    best = load_run(run_dir)
    assert best.rounds_done == min(validations, key=validations.get)
    # the GEBM that evaluation reads scores what validation recorded: the averaged energy's NLL
    trainer = Trainer.create(best.config, torch.zeros(1, 3))
    trainer.gebm.load_state_dict(best.gebm.state_dict())
    trainer.energy_average = None  # score best.pt's weights as they are
    validation = load_data(best.config.data, best.config.run.seed).validation
    assert trainer.validation_score(validation) == pytest.approx(validations[best.rounds_done], rel=1e-6)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    raw = {k[len("module."):]: v for k, v in last["energy_average"].items() if k.startswith("module.")}
    assert not all(torch.equal(last["gebm"][f"energy.{k}"], v) for k, v in raw.items())  # it trains on: raw
    train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 4}), progress=False)
    resumed = train(TrainConfig.from_dict({**common, "name": "split"}), resume=True, progress=False)
    again = torch.load(resumed / "checkpoint.pt", weights_only=True)
    for key in ("gebm", "energy_average"):
        assert all(torch.equal(last[key][k], again[key][k]) for k in last[key])
    a, b = (torch.load(d / "best.pt", weights_only=True)["gebm"] for d in (run_dir, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("values, match", [
    (dict(energy_ema=1.0, validate_every=1, base="realnvp"), r"'energy_ema' must be in \[0, 1\)"),
    (dict(energy_ema=-0.1, validate_every=1, base="realnvp"), r"'energy_ema' must be in \[0, 1\)"),
    (dict(energy_ema=0.9), "set validate_every"),
    (dict(energy_ema=0.9, validate_every=1, objective="ml", base="realnvp"), "with objective kale or dv"),
])
def test_bad_energy_ema_is_refused_naming_the_key(values, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(values)
