"""The training loop, its configs, checkpoints and resume, the CLI verbs, data loading and GEBM methods."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import kale_fast as kf
from kale_fast.cli import main
from kale_fast.data import toy_dataset
from kale_fast.metrics import energy_distance, mmd
from kale_fast.models import MLP
from kale_fast.train import TrainConfig, load_run, train

TINY = dict(name="tiny", dataset="8gaussians", n_train=512, n_test=128, hidden=16, depth=2, n_iter=6,
            n_iter_d_init=3, n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=4, log_every=2, checkpoint_every=3)


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


@pytest.mark.parametrize("values, error, match", [
    (dict(batchsize=3), ValueError, "unknown config key"),
    (dict(n_iter="10"), TypeError, "'n_iter' must be int"),
    (dict(lr_energy=True), TypeError, "'lr_energy' must be float"),
    (dict(objective="wgan"), ValueError, "'objective' must be one of"),
    (dict(batch_size=0), ValueError, "'batch_size' must be >= 1"),
    (dict(penalty=-1), ValueError, "'penalty' must be >= 0"),
    (dict(lr_energy=math.inf), ValueError, "'lr_energy' must be a finite number"),
    (dict(energy_clamp=math.nan), ValueError, "'energy_clamp' must be a finite number"),
    (dict(beta2=1.0), ValueError, r"'beta2' must be in \[0, 1\)"),
    (dict(name="../x"), ValueError, "'name' must be a folder name inside out_dir"),
    (dict(name="/tmp/x"), ValueError, "'name' must be a folder name inside out_dir"),
    (dict(name=".."), ValueError, "'name' must be a folder name inside out_dir"),
])
def test_bad_configs_are_rejected(values, error, match):
    with pytest.raises(error, match=match):
        TrainConfig.from_dict(values)


def test_a_yaml_key_given_twice_is_rejected(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("n_iter: 10\npenalty: 0.1\nn_iter: 20\n")
    with pytest.raises(ValueError, match="'n_iter' is given twice \\(line 3\\)"):
        TrainConfig.from_yaml(path)
    path.write_text("n_iter: 10\npenalty: 0.1\n")
    assert TrainConfig.from_yaml(path).n_iter == 10


def test_every_yaml_config_in_the_repository_loads():
    from pathlib import Path

    configs = sorted(Path("configs").glob("*.yaml"))
    assert configs
    for path in configs:
        TrainConfig.from_yaml(path)


def test_cli_train_sample_eval(tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump({**TINY, "out_dir": str(tmp_path)}))
    assert main(["train", "--config", str(config_file), "--quiet", "--n-iter", "4", "--penalty", "0.5",
                 "--energy-clamp", "none"]) == 0
    run_dir = tmp_path / "tiny"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"mmd_base", "mmd_gebm", "kale_held_out", "log_partition_mc"} <= set(summary)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["penalty"] == 0.5
    assert (run_dir / "samples.png").stat().st_size > 0 and (run_dir / "energy.png").stat().st_size > 0
    assert main(["sample", "--run", str(run_dir), "--sampler", "hmc", "--n", "50", "--steps", "3"]) == 0
    assert main(["sample", "--run", str(run_dir), "--n", "-5"]) == 2  # a usage mistake: one line, exit code 2
    assert "--n: expected an integer >= 1, got -5" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--feature-net", "features.pt"]) == 2
    assert "feature_net is for image runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"kale-fast {kf.__version__}"
    saved = torch.load(run_dir / "samples-hmc.pt")
    assert saved["samples"].shape == (50, 2) and torch.isfinite(saved["samples"]).all()
    (run_dir / "summary.json").unlink()
    assert main(["eval", "--run", str(run_dir)]) == 0
    assert (run_dir / "summary.json").exists()
    assert main(["train", "--config", str(config_file), "--n-iter", "ten"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_cli_train_help_describes_every_config_key(capsys):
    import dataclasses

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at spaces and after hyphens
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name.replace('_', '-')}" in text
        assert "".join(field.metadata["help"].split()) + f"(default:{field.default})" in text
    assert "--sampler{ula,mala,hmc,kinetic_langevin,chees}" in text and "--energy-clampFLOAT|none" in text


def test_cli_bench_runs_the_benchmark_suite(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kale_fast.cli", "bench", "--quick", "--ops", "integrators", "--out",
                          str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "integrators-cpu.json").exists() and "leapfrog_kick_drift" in out.stdout


def test_gebm_log_partition_kale_and_log_prob():
    torch.manual_seed(0)

    class Linear(torch.nn.Module):  # E(x) = -mu x: KALE(N(mu, 1) || N(0, 1)) = mu^2 / 2, A = mu^2 / 2
        def forward(self, x):
            return -0.8 * x[:, 0]

    gebm = kf.GEBM(torch.nn.Identity(), Linear(), latent_dim=1)
    a, se = gebm.log_partition(200_000, chunk_size=30_000)
    assert abs(a.item() - 0.32) < 5 * se.item() + 1e-3 and 0 < se.item() < 0.01
    x = torch.randn(200_000, 1) + 0.8
    assert abs(gebm.kale(x, n_base=200_000).item() - 0.32) < 0.02
    with pytest.raises(TypeError, match="exact density"):
        gebm.log_prob(x, a)
    samples, result = gebm.sample(4000, kf.MALA(0.5), 100)  # the GEBM is N(0.8, 1)
    assert abs(samples.mean().item() - 0.8) < 0.1 and abs(samples.var().item() - 1) < 0.1


def test_toy_data_are_reproducible_and_distances_separate_them():
    a, b = toy_dataset("moons", 500, seed=1), toy_dataset("moons", 500, seed=1)
    assert torch.equal(a, b) and a.shape == (500, 2)
    same, other = toy_dataset("moons", 500, seed=2), toy_dataset("rings", 500, seed=2)
    assert mmd(a, same) < 0.01 < mmd(a, other)
    assert energy_distance(a, same) < energy_distance(a, other)
    with pytest.raises(ValueError, match="unknown toy data set"):
        toy_dataset("spirals", 10)


def test_gaussian_nll_matches_scipy():
    from scipy.stats import multivariate_normal

    from kale_fast.metrics import gaussian_nll

    train_rows, test_rows = torch.randn(500, 4) @ torch.randn(4, 4), torch.randn(50, 4)
    expected = -multivariate_normal(train_rows.double().mean(0).numpy(),
                                    torch.cov(train_rows.double().T, correction=0).numpy()).logpdf(test_rows.numpy())
    result = gaussian_nll(train_rows, test_rows)
    assert result["nll_gaussian"] == pytest.approx(expected.mean(), rel=1e-9)
    assert result["nll_gaussian_se"] == pytest.approx(expected.std(ddof=1) / math.sqrt(50), rel=1e-9)
    with pytest.raises(ValueError, match="more rows than columns"):
        gaussian_nll(train_rows[:4], test_rows)


def test_energy_only_mode_keeps_the_base_frozen(tmp_path):
    run_dir = train(_config(tmp_path, energy_only=True, n_iter=3), progress=False)
    config, gebm = load_run(run_dir)[:2]
    fresh = kf.train.Trainer.create(config, toy_dataset("8gaussians", 512))
    for name, value in gebm.base.state_dict().items():
        assert torch.equal(value, fresh.gebm.base.state_dict()[name])
    assert isinstance(gebm.base, MLP) and not math.isnan(float(_params(run_dir)["energy.net.0.weight"].sum()))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_realnvp_inverts_and_its_log_density_matches_the_jacobian(batch_norm):
    from kale_fast.models import RealNVP

    torch.manual_seed(0)
    flow = RealNVP(5, n_layers=4, hidden=16, batch_norm=batch_norm).double()
    for layer in flow.layers:
        torch.nn.init.normal_(layer.scale, std=0.5)
    if batch_norm:  # training batches move the running statistics; then scales and shifts away from the identity
        flow.log_prob(torch.randn(64, 5, dtype=torch.float64) * 3 + 1)
        assert all(not torch.equal(norm.running_var, torch.ones(5, dtype=torch.float64)) for norm in flow.norms)
        for norm in flow.norms:
            for tensor, mean in ((norm.log_gamma, 0.0), (norm.beta, 0.0), (norm.running_mean, 0.0),
                                 (norm.running_var, 2.0)):
                torch.nn.init.normal_(tensor, mean, 0.5)
        flow.eval()
    z = torch.randn(3, 5, dtype=torch.float64)
    x = flow(z)
    z_back, log_det = flow.inverse(x)
    torch.testing.assert_close(z_back, z)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow.inverse(v[None])[0][0], x[0])
    torch.testing.assert_close(log_det[0], torch.logdet(jacobian))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum() + torch.logdet(jacobian)
    torch.testing.assert_close(flow.log_prob(x[:1])[0], expected)


@pytest.mark.parametrize("kind", ["maf", "nsf"])
def test_zuko_flow_maps_latent_to_data_with_the_log_density_of_its_jacobian(kind):
    pytest.importorskip("zuko")
    from kale_fast.models.zuko_flows import ZukoFlow

    torch.manual_seed(0)
    flow = ZukoFlow(kind, 3, transforms=2, hidden=8).double()
    with torch.no_grad():
        for param in flow.parameters():  # away from the identity map of a fresh flow
            param.add_(torch.randn_like(param) * 0.3)
    z = torch.randn(2, 3, dtype=torch.float64)
    x = flow(z)
    jacobian = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0], z[0])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z[0]).sum() - torch.logdet(jacobian)
    torch.testing.assert_close(flow.log_prob(x[:1])[0], expected)
    assert torch.autograd.grad(flow(z.requires_grad_(True)).sum(), z)[0].abs().sum() > 0  # differentiable in z


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
    from kale_fast.train.loop import Trainer

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


def test_early_stopping_keeps_the_best_validation_state_and_resumes_exactly(tmp_path):
    torch.manual_seed(1)
    csv_file = _write_csv(tmp_path / "small.csv", torch.randn(300, 3) ** 3)  # few heavy-tailed rows: it overfits
    common = {**TINY, "dataset": str(csv_file), "base": "realnvp", "latent_dim": 3, "flow_layers": 2,
              "flow_hidden": 32, "objective": "ml", "lr_base": 1e-2, "n_iter": 400, "validate_every": 5,
              "patience": 4, "checkpoint_every": 10, "out_dir": str(tmp_path)}
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

    validation = load_data(best.config).validation
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
    with pytest.raises(ValueError, match="'patience' counts validations"):
        TrainConfig.from_dict({**common, "validate_every": 0})


def test_image_loaders_read_local_files(tmp_path):
    import pickle

    import numpy as np

    from kale_fast.data.images import load_cifar10, load_digits, load_npz, load_png_folder

    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.min() >= -1 and images.max() <= 1 and labels.max() == 9
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):  # the standard layout, tiny
        batch = {b"data": np.full((2, 3072), 10 * i, dtype=np.uint8), b"labels": [i, i + 1]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    cifar, cifar_labels = load_cifar10(folder)
    assert cifar.shape == (10, 3, 32, 32) and cifar_labels.tolist()[:2] == [1, 2]
    np.savez(tmp_path / "set.npz", images=np.zeros((4, 6, 6, 3), dtype=np.uint8), labels=np.arange(4))
    npz, npz_labels = load_npz(tmp_path / "set.npz")
    assert npz.shape == (4, 3, 6, 6) and (npz == -1).all() and npz_labels.tolist() == [0, 1, 2, 3]
    import matplotlib.image

    (tmp_path / "png").mkdir()
    for i in range(3):
        matplotlib.image.imsave(tmp_path / "png" / f"{i}.png", np.full((5, 5), i / 2), cmap="gray", vmin=0, vmax=1)
    assert load_png_folder(tmp_path / "png").shape == (3, 3, 5, 5)
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py folder not found"):
        load_cifar10(tmp_path / "missing")


def test_spectral_norm_option_and_the_papers_32x32_networks_on_a_local_cifar10(tmp_path):
    import pickle

    import numpy as np

    from kale_fast.models import build_gebm

    gebm = build_gebm(TrainConfig.from_dict({**TINY, "spectral_norm": True}), (2,))
    for _ in range(30):  # power iterations run in train-mode forwards
        gebm.energies(torch.randn(8, 2))
    for layer in gebm.energy.net:
        if isinstance(layer, torch.nn.Linear):
            assert torch.linalg.matrix_norm(layer.weight, ord=2).item() == pytest.approx(1.0, rel=1e-3)
    assert not hasattr(build_gebm(TrainConfig.from_dict(TINY), (2,)).energy.net[0], "parametrizations")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [i % 10] * 4}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    config = TrainConfig.from_dict({**TINY, "dataset": "cifar10", "data_dir": str(tmp_path), "base": "sngan32",
                                    "latent_dim": 8, "spectral_norm": True, "n_test": 4, "batch_size": 4,
                                    "n_partition_samples": 8,
                                    "n_iter": 2, "n_iter_d_init": 1, "n_iter_d": 1, "out_dir": str(tmp_path)})
    _, gebm, _, rounds, _ = load_run(train(config, progress=False))
    assert rounds == 2 and gebm.base_sample(3).shape == (3, 3, 32, 32)
    with pytest.raises(ValueError, match=r"needs \(3, 32, 32\) images"):
        train(TrainConfig.from_dict({**TINY, "name": "bad", "dataset": "digits", "base": "sngan32",
                                     "out_dir": str(tmp_path)}), progress=False)


def test_feature_network_files_are_checked(tmp_path):
    from kale_fast.metrics.image_scores import DigitFeatures, feature_network_from_file

    with pytest.raises(FileNotFoundError, match="DigitFeatures or of torch-fidelity's Inception-v3"):
        feature_network_from_file(tmp_path / "missing.pt", (1, 8, 8))
    torch.save(DigitFeatures(3).state_dict(), tmp_path / "digits-rgb.pt")
    with pytest.raises(ValueError, match="takes 3-channel images, the run's have 1"):
        feature_network_from_file(tmp_path / "digits-rgb.pt", (1, 8, 8))
    torch.save({"weight": torch.zeros(3)}, tmp_path / "inception.pth")  # not DigitFeatures: read as Inception
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ModuleNotFoundError, match="needs torch-fidelity"):
            feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))
    else:
        with pytest.raises(ValueError, match="does not hold torch-fidelity's Inception-v3 weights"):
            feature_network_from_file(tmp_path / "inception.pth", (1, 8, 8))


def test_a_missing_optional_package_is_named_with_its_install_line(monkeypatch):
    import importlib.util

    from kale_fast.data import images

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "sklearn" else find_spec(name, *args))
    with pytest.raises(ImportError, match=r"dataset: digits needs the package 'sklearn'.*kale_fast\[images\]"):
        images.load_digits()


def test_mode_scores_of_the_mixture_toys():
    from kale_fast.metrics import mode_scores

    for dataset, within_3_sd in (("8gaussians", 1 - math.exp(-4.5)), ("rings", 0.9973)):  # 2-D and 1-D normal
        scores = mode_scores(toy_dataset(dataset, 20_000, seed=1), dataset)
        assert abs(scores["high_quality"] - within_3_sd) < 3e-3  # 4 binomial standard errors
        assert scores["modes_covered"] == scores["n_modes"] == {"8gaussians": 8, "rings": 3}[dataset]
    one_mode = toy_dataset("8gaussians", 2000, seed=2)
    one_mode = one_mode[one_mode[:, 1].abs() < 0.7]  # the modes at (2, 0) and (-2, 0) alone
    assert mode_scores(one_mode, "8gaussians") == dict(high_quality=pytest.approx(0.99, abs=0.01), modes_covered=2,
                                                       n_modes=8)
    assert mode_scores(torch.full((100, 2), 10.0), "8gaussians")["high_quality"] == 0
    with pytest.raises(ValueError, match="mixture toys"):
        mode_scores(one_mode, "moons")


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

    validation = load_data(best.config).validation
    generator = torch.Generator().manual_seed(best.config.seed + 3)
    assert best.gebm.kale(validation, best.config.n_partition_samples, generator=generator).item() == pytest.approx(
        validations[best_round], rel=1e-5, abs=1e-6)
    assert torch.equal(best.gebm.base.net[0].weight, load_run(base_dir).gebm.base.net[0].weight)  # frozen
    with pytest.raises(ValueError, match="a moving base without a density"):
        _config(tmp_path, validate_every=3)
