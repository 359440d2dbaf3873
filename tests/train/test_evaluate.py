"""evaluate() on runs: selection on validation data only, the curves, the verdict, the summary's bookkeeping; the
digits FID sweep (slow: `pytest -m slow`). The selection rules are in test_selection.py, the comparisons and image
scores in tests/metrics/."""
import importlib
import json
import math

import pytest
import torch

from kale_fast.metrics.image_scores import DigitFeatures
from kale_fast.train import TrainConfig, evaluate, train
from kale_fast.train.config import SAMPLERS


TINY = dict(name="tiny", dataset="8gaussians", n_train=512, n_test=128, hidden=16, depth=2, n_iter=6,
            n_iter_d_init=3, n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=12, log_every=2, checkpoint_every=3)


def _config(tmp_path, **changes):
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path), **changes})


def test_evaluation_selects_on_validation_data_only_and_repeats_exactly(tmp_path, monkeypatch, capsys):
    run_dir = train(_config(tmp_path), progress=False)
    summary = evaluate(run_dir)
    grid = summary["curves"]["steps"]
    assert grid == [0, 10, 12]
    for key in ("mmd", "high_quality", "modes_covered"):
        assert set(summary["curves"][key]) == set(SAMPLERS)
        assert all(len(values) == len(grid) for values in summary["curves"][key].values())
        assert len({values[0] for values in summary["curves"][key].values()}) == 1  # the shared base samples
    # a mixture toy: chosen by the share of high-quality samples, among the pairs that lose no mode of the base's
    selected, curves = summary["selected"], summary["curves"]
    eligible = {(name, k): quality for name in SAMPLERS for k, quality, covered in
                zip(grid, curves["high_quality"][name], curves["modes_covered"][name])
                if covered >= curves["modes_covered"][name][0]}
    assert selected["metric"] == "high_quality" and selected["validation_value"] == max(eligible.values())
    assert (selected["sampler"], selected["steps"]) in eligible
    assert curves["high_quality"][selected["sampler"]][grid.index(selected["steps"])] == max(eligible.values())
    assert {"mmd_selected", "mmd_gebm", "mmd_base", "energy_distance_selected"} <= set(summary)
    for label in ("base", "gebm", "selected"):
        assert summary[f"modes_{label}"]["n_modes"] == 8
    assert summary["verdict"]["metric"] == "share of samples within 3 sd of a mode"
    assert summary["verdict"]["outcome"] in ("better", "worse", "within noise")
    assert summary["verdict"]["base"] == summary["modes_base"]["high_quality"]
    assert summary["n_test_total"] == 128 and summary["n_eval"] == 64 and summary["n_validation"] == 64
    assert set(summary["eval_time_split_s"]) == {"sampling", "metrics", "figures"}
    assert sum(summary["eval_time_split_s"].values()) <= summary["eval_time_s"]
    assert (run_dir / "metric-vs-steps.png").stat().st_size > 0
    assert "best_validation_nll" not in summary  # this run did not validate

    from kale_fast.cli import main  # `kale-fast eval`: the same numbers (seeded), the verdict's line printed

    capsys.readouterr()
    assert main(["eval", "--run", str(run_dir), "--json", "--quiet"]) == 0
    printed = capsys.readouterr()
    timeless = lambda s: {k: v for k, v in s.items() if not k.startswith("eval_time")}  # noqa: E731
    assert timeless(json.loads(printed.out)) == json.loads(json.dumps(timeless(summary)))
    assert printed.err == ""
    # for people: a few lines ending with the verdict and the files; progress as plain lines off a terminal
    assert main(["eval", "--run", str(run_dir)]) == 0
    printed = capsys.readouterr()
    lines = printed.out.splitlines()
    assert len(lines) <= 8 and lines[0].startswith(f"evaluated {run_dir} in ")
    assert "  " + summary["verdict"]["text"] in lines and "summary.json holds every number" in lines[-1]
    assert "\r" not in printed.err and "eval: validation curves" in printed.err
    assert all(line.startswith("eval: ") for line in printed.err.splitlines())

    # the test split never steers the choice: other test points, the same curves and choice
    evaluate_module = importlib.import_module("kale_fast.train.evaluate")
    real_load = evaluate_module.load_data
    monkeypatch.setattr(evaluate_module, "load_data", lambda *c: real_load(*c)._replace(test=real_load(*c).test + 5))
    with pytest.raises(ValueError, match="trained on other data"):  # other data than the run's are refused...
        evaluate(run_dir)
    monkeypatch.setattr(evaluate_module, "check_same_data", lambda *args: None)  # ...so this test lets them in
    shifted = evaluate(run_dir)
    assert shifted["curves"] == summary["curves"] and shifted["selected"] == summary["selected"]
    assert shifted["mmd_selected"] > summary["mmd_selected"]


def test_summary_holds_the_best_validation_nll_and_the_nll_verdict(tmp_path):
    data = torch.randn(600, 3) @ torch.tensor([[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.7]])
    csv_file = tmp_path / "data.csv"
    csv_file.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in data.tolist()))
    config = _config(tmp_path, dataset=str(csv_file), base="realnvp", latent_dim=3, flow_layers=2, flow_hidden=8,
                     n_iter=20, validate_every=5)
    run_dir = train(config, progress=False)
    summary = evaluate(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    validations = {line["round"]: line["validation_nll"] for line in lines if "validation_nll" in line}
    assert summary["best_validation_nll"] == pytest.approx(min(validations.values()))
    assert summary["best_validation_round"] == min(validations, key=validations.get) == summary["rounds"]
    assert summary["verdict"]["metric"] == "test NLL (nats)"
    assert summary["verdict"]["difference"] == summary["nll_gebm"] - summary["nll_base"]
    assert summary["validation_data"] == "the data set's validation split"
    # a base-only run (objective ml): the flow's numbers, no MCMC and no verdict about an untrained energy
    base_only = evaluate(train(config.replace(name="ml", objective="ml"), progress=False))
    assert {"nll_base", "nll_base_se", "nll_gaussian", "mmd_base", "evaluated"} <= set(base_only)
    assert not {"verdict", "selected", "curves", "nll_gebm", "log_partition_mc"} & set(base_only)
    assert "sampling" not in base_only["eval_time_split_s"]


def _digits_config(tmp_path, **changes):
    return _config(tmp_path, **{**dict(dataset="digits", base="conv", latent_dim=4, hidden=8, n_test=100,
                                       n_eval=100, n_iter=3, sampler_steps=4), **changes})


def test_digits_evaluation_selects_by_fid_on_half_the_held_out_images(tmp_path):
    """The fast image test: a feature network put in the cache (an untrained one: the FID machinery is what is
    tested here; the slow test trains it), validation and test halves of the held-out images, keys of every
    sampler, seeded KID."""
    torch.manual_seed(0)
    (tmp_path / "feature-nets").mkdir()
    torch.save(DigitFeatures().state_dict(), tmp_path / "feature-nets" / "digits.pt")
    run_dir = train(_digits_config(tmp_path), progress=False)
    summary = evaluate(run_dir)
    assert summary["n_validation"] == 50 and summary["n_test_total"] == 50 and summary["n_eval"] == 50
    assert summary["selected"]["metric"] == "fid_like" and set(summary["curves"]["fid_like"]) == set(SAMPLERS)
    for label in ("base", "selected", *(f"gebm_{name}" for name in SAMPLERS)):
        assert math.isfinite(summary[f"fid_like_{label}"]) and summary[f"kid_std_{label}"] >= 0
    assert summary["verdict"]["metric"] == "MMD^2 to test data in the fid_like feature space"
    assert set(summary["eval_time_split_s"]) == {"sampling", "metrics", "feature_net", "figures"}
    assert (run_dir / "images.png").stat().st_size > 0 and (run_dir / "metric-vs-steps.png").exists()


@pytest.mark.slow
def test_digits_gebm_reports_fid_like_and_kid_for_every_sampler(tmp_path):
    """The full image path: the feature classifier trained on the digits' labels, the same network as TorchScript
    and torch.export files giving the same numbers, the sample CLI on an image run."""
    run_dir = train(_digits_config(tmp_path, sampler_steps=25), progress=False)
    summary = evaluate(run_dir)
    for name in ("base", "selected", *(f"gebm_{name}" for name in SAMPLERS)):
        assert math.isfinite(summary[f"fid_like_{name}"]) and math.isfinite(summary[f"kid_{name}"])
    assert summary["curves"]["steps"] == [0, 10, 25]
    assert (tmp_path / "feature-nets" / "digits.pt").exists()
    from kale_fast.cli import main  # sampling an image run writes image panels (it used to crash on a scatter)

    assert main(["sample", "--run", str(run_dir), "--sampler", "mala", "--n", "20", "--steps", "2"]) == 0
    assert (run_dir / "samples-mala.png").exists()
    # the same classifier given as a file of its weights, and as a network built here: FID proper keys, the same
    # numbers
    from_file = evaluate(run_dir, feature_net=str(tmp_path / "feature-nets" / "digits.pt"))
    assert from_file["fid_base"] == pytest.approx(summary["fid_like_base"], rel=1e-4)
    assert from_file["kid_gebm_hmc"] == pytest.approx(summary["kid_gebm_hmc"], rel=1e-4)
    assert from_file["selected"] == {**summary["selected"], "metric": "fid"}
    net = DigitFeatures()
    net.load_state_dict(torch.load(tmp_path / "feature-nets" / "digits.pt", weights_only=True))
    given = evaluate(run_dir, feature_net=net.eval())
    assert given["fid_base"] == pytest.approx(summary["fid_like_base"], rel=1e-4)
