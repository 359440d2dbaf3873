"""The training loop: resume, logging, divergence, run folders, frozen bases and flows, validation and
early stopping, energy fine-tuning."""
import json
import math

import numpy as np
import pytest
import torch
import yaml

import kale_fast as kf
from kale_fast.data import toy_dataset
from kale_fast.models import MLP
from kale_fast.train import TrainConfig, load_run, train
from tests._helpers import TINY


def _config(tmp_path, **changes):
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path), **changes})


def _params(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["gebm"]


def _write_csv(path, rows):
    path.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    return path


def test_resume_continues_exactly(tmp_path):
    straight = train(_config(tmp_path, name="straight", n_iter=8), progress=False)
    train(_config(tmp_path, name="split", n_iter=4), progress=False)
    resumed = train(_config(tmp_path, name="split", n_iter=8), resume=True, progress=False)
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [2, 4, 6, 8]


def test_metrics_go_to_tensorboard_and_a_crashed_runs_extra_lines_are_dropped_on_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = train(_config(tmp_path, n_iter=4), progress=False)
    with open(run_dir / "metrics.jsonl", "a") as log:  # as if a crash came after round 6 was logged, before saving
        log.write(json.dumps(dict(round=6, time_s=0.0, energy_loss=1e9)) + "\n")
    train(_config(tmp_path, n_iter=8), resume=True, progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [2, 4, 6, 8] and lines[2]["energy_loss"] != 1e9
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    energy_loss = board.Scalars("energy_loss")
    assert [event.step for event in energy_loss] == [2, 4, 6, 8]
    assert energy_loss[-1].value == pytest.approx(lines[-1]["energy_loss"])


def test_a_diverging_run_stops_with_a_clear_error_before_saving_non_finite_state(tmp_path):
    config = _config(tmp_path, lr_energy=1e4, lr_base=1e4, n_iter=30, log_every=10, checkpoint_every=10)
    with pytest.raises(FloatingPointError, match="training diverged: non-finite parameters after round"):
        train(config, progress=False)
    checkpoint = tmp_path / "tiny" / "checkpoint.pt"
    if checkpoint.exists():  # whatever was saved before the divergence is finite
        assert all(torch.isfinite(v).all() for v in _params(tmp_path / "tiny").values())
    lines = (tmp_path / "tiny" / "metrics.jsonl").read_text().splitlines()
    assert all(math.isfinite(v) for line in lines for v in json.loads(line).values())


def test_existing_run_is_never_overwritten(tmp_path):
    run_dir = train(_config(tmp_path), progress=False)
    before = (run_dir / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(_config(tmp_path), progress=False)
    with pytest.raises(ValueError, match="another config.*hidden"):
        train(_config(tmp_path, hidden=32, n_iter=10), resume=True, progress=False)
    assert (run_dir / "checkpoint.pt").read_bytes() == before


def test_energy_only_mode_keeps_the_base_frozen(tmp_path):
    run_dir = train(_config(tmp_path, energy_only=True, n_iter=3), progress=False)
    config, gebm = load_run(run_dir)[:2]
    fresh = kf.train.Trainer.create(config, toy_dataset("8gaussians", 512))
    for name, value in gebm.base.state_dict().items():
        assert torch.equal(value, fresh.gebm.base.state_dict()[name])
    assert isinstance(gebm.base, MLP) and not math.isnan(float(_params(run_dir)["energy.net.0.weight"].sum()))


@pytest.mark.parametrize("base", ["realnvp", "zuko-maf"])
def test_flow_pipeline_ml_then_energy_on_the_frozen_base(tmp_path, base):
    """Maximum likelihood of a flow, then a KALE energy on it (energy_only, base_from): both report NLLs."""
    if base.startswith("zuko"):
        pytest.importorskip("zuko")
    data = torch.randn(600, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]])
    csv_file = _write_csv(tmp_path / "data.csv", data)
    common = {**TINY, "dataset": str(csv_file), "base": base, "latent_dim": 3, "flow_layers": 2,
              "flow_hidden": 8, "out_dir": str(tmp_path)}
    ml_dir = train(TrainConfig.from_dict({**common, "name": "ml", "objective": "ml", "n_iter": 30}), progress=False)
    from kale_fast.train import evaluate

    ml = evaluate(ml_dir)
    kale_dir = train(TrainConfig.from_dict({**common, "name": "kale", "energy_only": True, "base_from": str(ml_dir),
                                            "validate_every": 2}), progress=False)
    summary = evaluate(kale_dir)
    best = torch.load(kale_dir / "best.pt", weights_only=True)  # the GEBM's validation NLL, A by Monte Carlo
    assert summary["rounds"] == best["rounds_done"] and math.isfinite(best["validation_nll"])
    assert math.isfinite(ml["nll_base"]) and ml["nll_base_se"] > 0
    assert summary["nll_base"] == pytest.approx(ml["nll_base"], rel=1e-5)  # the same frozen base
    assert math.isfinite(summary["nll_gebm"]) and summary["nll_gebm_se"] > 0
    assert summary["nll_gaussian"] == pytest.approx(ml["nll_gaussian"])  # the yardstick of the same split
    rows = np.loadtxt(kale_dir / "test-nll.csv", delimiter=",", skiprows=1)  # each test row's NLL, then its summary
    assert (kale_dir / "test-nll.csv").read_text().startswith("row,nll_base,nll_gebm\n")
    assert rows.shape == (summary["n_test_total"], 3) and np.array_equal(rows[:, 0], np.arange(len(rows)))
    for column, label in ((1, "base"), (2, "gebm")):
        assert rows[:, column].mean() == pytest.approx(summary[f"nll_{label}"], abs=1e-5)
        assert summary[f"nll_{label}_median"] == pytest.approx(np.median(rows[:, column]), abs=1e-5)
        worst = summary[f"nll_{label}_worst"]
        assert [w["row"] for w in worst] == list(np.argsort(-rows[:, column])[:5])
        assert summary[f"nll_{label}_max"] == pytest.approx(rows[:, column].max(), abs=1e-5) == worst[0]["nll"]
    with pytest.raises(ValueError, match="objective 'ml'"):
        TrainConfig.from_dict({**common, "objective": "ml", "base": "mlp"})
    with pytest.raises(ValueError, match="latent_dim must be the data's dimension 3"):
        train(TrainConfig.from_dict({**common, "name": "bad", "latent_dim": 2}), progress=False)


def test_a_table_of_ones_own_needs_no_guessed_numbers(tmp_path, monkeypatch):
    """latent_dim 'auto' is the column count after the correlation filter (recorded in config.yaml); base_from as a
    run name is read from out_dir; a missing base run and a failed start leave no run folder behind."""
    data = torch.randn(300, 4) @ torch.tensor([[1.0, 0.5, 0.0, 0.0], [0.0, 1.0, 0.3, 0.0], [0.0, 0.0, 0.7, 0.0],
                                               [0.0, 0.0, 0.0, 1.0]])
    data = torch.cat([data, data[:, :1] * 2 + 0.01 * torch.randn(300, 1)], 1)  # column 4 ~ column 0: filtered
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("\n".join(",".join(f"{v:.6f}" for v in row) for row in data.tolist()))  # no header
    monkeypatch.chdir(tmp_path)  # base_from as a run name must not be read from the working directory
    out_dir = tmp_path / "elsewhere"
    common = {**TINY, "dataset": str(csv_file), "base": "realnvp", "latent_dim": "auto", "flow_layers": 2,
              "flow_hidden": 8, "out_dir": str(out_dir), "max_correlation": 0.98, "columns": "1-4,0"}
    ml_dir = train(TrainConfig.from_dict({**common, "name": "nvp", "objective": "ml"}), progress=False)
    assert yaml.safe_load((ml_dir / "config.yaml").read_text())["latent_dim"] == 4
    assert load_run(ml_dir).gebm.latent_dim == 4
    energy = {**common, "energy_only": True, "n_iter": 2}
    kale_dir = train(TrainConfig.from_dict({**energy, "name": "kale", "base_from": "nvp"}), progress=False)
    assert torch.equal(load_run(kale_dir).gebm.base.layers[0].scale, load_run(ml_dir).gebm.base.layers[0].scale)
    (tmp_path / "nvp2").mkdir()  # a folder of that name in the working directory is not the run
    with pytest.raises(FileNotFoundError, match="no run folder .*elsewhere/nvp2 .*looked up in out_dir"):
        train(TrainConfig.from_dict({**energy, "name": "kale2", "base_from": "nvp2"}), progress=False)
    with pytest.raises(FileNotFoundError, match="no run folder missing/nvp .*a path is read as given"):
        train(TrainConfig.from_dict({**energy, "name": "kale2", "base_from": "missing/nvp"}), progress=False)
    with pytest.raises(ValueError, match="'x' is a name, but the table has no header"):
        train(TrainConfig.from_dict({**energy, "name": "kale2", "base_from": "nvp", "columns": ["x"]}),
              progress=False)
    with pytest.raises(ValueError, match="latent_dim must be the data's dimension 4 .or 'auto'., got 3"):
        train(TrainConfig.from_dict({**common, "name": "kale2", "latent_dim": 3}), progress=False)
    with pytest.raises(ValueError, match="other keys .flow_batch_norm: False there, True here"):
        train(TrainConfig.from_dict({**energy, "name": "kale2", "base_from": "nvp", "flow_batch_norm": True}),
              progress=False)
    assert not (out_dir / "kale2").exists()  # failed starts left no half-made folder
    assert train(TrainConfig.from_dict({**energy, "name": "kale2", "base_from": str(ml_dir)}), progress=False)
    for values, match in [(dict(latent_dim="auto", base="mlp"), "'auto' is the data's dimension"),
                          (dict(latent_dim="eleven", base="realnvp"), "must be a positive int or 'auto'"),
                          (dict(latent_dim=0), "'latent_dim' must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict(values)


def test_smoothed_validation_does_not_choose_a_state_for_one_lucky_score():
    from kale_fast.train import Trainer

    data = torch.randn(64, 2)
    scores = [5.0, 4.0, 3.0, 1.0, 3.0, 2.8, 2.6, 2.4, 2.2, 2.0]  # a lucky dip at the 4th, a steady descent after it
    for smoothing, best_at in [(0.0, 3), (0.6, 9)]:
        config = TrainConfig(base="realnvp", objective="ml", latent_dim=2, flow_layers=2, flow_hidden=4,
                             validate_every=1, validation_smoothing=smoothing)
        trainer = Trainer.create(config, data)
        improved = [trainer.record_validation(score) for score in scores]
        assert max(i for i, better in enumerate(improved) if better) == best_at
        expected = scores[0]
        for score in scores[1:]:
            expected = smoothing * expected + (1 - smoothing) * score
        assert trainer.smoothed_validation == pytest.approx(expected)
        restored = Trainer.create(config, data)
        restored.load_state_dict(trainer.state_dict())  # a resume goes on from the same moving average
        assert (restored.smoothed_validation, restored.best_validation, restored.stale_validations) == (
            trainer.smoothed_validation, trainer.best_validation, trainer.stale_validations)
    with pytest.raises(ValueError, match="'validation_smoothing' must be in \\[0, 1\\)"):
        TrainConfig(validation_smoothing=1.0)


def _overfitting_flow(tmp_path) -> dict:
    """Config keys of a small RealNVP by maximum likelihood on few heavy-tailed rows: it overfits, and patience 4
    (validation every 5 rounds) stops it well before its 400 rounds."""
    torch.manual_seed(1)
    csv_file = _write_csv(tmp_path / "small.csv", torch.randn(300, 3) ** 3)
    return {**TINY, "dataset": str(csv_file), "base": "realnvp", "latent_dim": 3, "flow_layers": 2,
            "flow_hidden": 32, "objective": "ml", "lr_base": 1e-2, "n_iter": 400, "validate_every": 5,
            "patience": 4, "checkpoint_every": 10, "out_dir": str(tmp_path)}


def test_early_stopping_keeps_the_best_validation_state_and_resumes_exactly(tmp_path):
    common = _overfitting_flow(tmp_path)
    run_dir = train(TrainConfig.from_dict({**common, "name": "straight"}), progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = {line["round"]: line["validation_nll"] for line in lines if "validation_nll" in line}
    best_round = min(validations, key=validations.get)
    last = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert last["rounds_done"] < 400, "the flow should have overfitted and stopped early"
    assert last["rounds_done"] == best_round + 4 * 5 == max(validations)  # 4 validations without improvement
    best = load_run(run_dir)
    assert best.rounds_done == best_round and load_run(run_dir, best=False).rounds_done == last["rounds_done"]
    from kale_fast.data import load_data

    validation = load_data(best.config.data, best.config.run.seed).validation
    assert -best.gebm.base.log_prob(validation).mean().item() == pytest.approx(validations[best_round], rel=1e-6)
    # interrupted at an earlier checkpoint, then resumed: the same stop, the same best state
    train(TrainConfig.from_dict({**common, "name": "split", "n_iter": 10}), progress=False)
    resumed = train(TrainConfig.from_dict({**common, "name": "split"}), resume=True, progress=False)
    for name in ("checkpoint.pt", "best.pt"):
        a, b = (torch.load(d / name, weights_only=True)["gebm"] for d in (run_dir, resumed))
        assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="validation split"):
        train(_config(tmp_path, name="digitsval", dataset="digits", base="conv", latent_dim=4, energy_only=True,
                      validate_every=2), progress=False)


def test_patience_and_smoothing_may_change_on_resume_and_only_move_the_stop(tmp_path):
    common = _overfitting_flow(tmp_path)
    stopped = train(TrainConfig.from_dict({**common, "name": "stopped"}), progress=False)
    stop_round = torch.load(stopped / "checkpoint.pt", weights_only=True)["rounds_done"]
    assert stop_round < 400, "the flow should have overfitted and stopped early"
    # a run stopped by patience 4, resumed with patience 8 (and smoothing, which only judges validations), goes on
    # where it stopped and trains the weights an unbroken run with those keys trains
    longer = {**common, "patience": 8, "validation_smoothing": 0.5}
    resumed = train(TrainConfig.from_dict({**longer, "name": "stopped"}), resume=True, progress=False)
    unbroken = train(TrainConfig.from_dict({**longer, "name": "unbroken", "patience": 0,
                                            "n_iter": torch.load(resumed / "checkpoint.pt", weights_only=True)[
                                                "rounds_done"]}), progress=False)
    last = {d: torch.load(d / "checkpoint.pt", weights_only=True) for d in (resumed, unbroken)}
    assert last[resumed]["rounds_done"] > stop_round
    assert last[resumed]["config"]["patience"] == 8 and last[resumed]["config"]["validation_smoothing"] == 0.5
    a, b = last[resumed]["gebm"], last[unbroken]["gebm"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="another config.*lr_base"):  # a key that changes the rounds is refused
        train(TrainConfig.from_dict({**longer, "name": "stopped", "lr_base": 1e-3}), resume=True, progress=False)
    with pytest.raises(ValueError, match="'patience' counts validations"):
        TrainConfig.from_dict({**common, "validate_every": 0})


def test_energy_fine_tuning_on_a_frozen_base_is_selected_by_validation_kale(tmp_path):
    """The authors' recipe: an energy trained on the frozen final base, the state of best validation KALE kept."""
    base_dir = train(_config(tmp_path, name="joint"), progress=False)
    run_dir = train(_config(tmp_path, name="tuned", base_from=str(base_dir), energy_only=True, n_iter=12,
                            validate_every=3, lr_energy=1e-2), progress=False)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = {line["round"]: line["validation_kale"] for line in lines if "validation_kale" in line}
    assert sorted(validations) == [3, 6, 9, 12] and "validation_nll" not in lines[-1]
    best_round = max(validations, key=validations.get)
    best = load_run(run_dir)
    assert best.rounds_done == best_round
    from kale_fast.data import load_data

    validation = load_data(best.config.data, best.config.run.seed).validation
    generator = torch.Generator().manual_seed(best.config.run.seed + 3)
    score = best.gebm.kale(validation, best.config.objective.n_partition_samples, generator=generator).item()
    assert score == pytest.approx(validations[best_round], rel=1e-5, abs=1e-6)
    assert torch.equal(best.gebm.base.net[0].weight, load_run(base_dir).gebm.base.net[0].weight)  # frozen
    with pytest.raises(ValueError, match="a moving base without a density"):
        _config(tmp_path, validate_every=3)
