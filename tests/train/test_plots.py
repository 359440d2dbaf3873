"""Pictures of a run (training.png, image panels, scatter with data) and the `sample` verb on every kind of run."""
import json
import math

import matplotlib.image
import pytest
import torch

from kale_fast.cli import main
from kale_fast.train import TrainConfig, train
from kale_fast.train.plots import image_panels, training_curves
from kale_fast.train.sampling import ULA_MAX_STEP

TINY = dict(name="tiny", dataset="8gaussians", n_train=256, n_test=64, hidden=16, depth=2, n_iter=6, n_iter_d_init=3,
            n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=4, log_every=2, checkpoint_every=3)


def _train(tmp_path, **changes):
    return train(TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path), **changes}), progress=False)


def _png(path):
    """The PNG's pixels (H, W, channels), after checking it is a non-blank picture."""
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.01, f"{path} is blank"
    return pixels


def test_training_png_has_one_panel_per_logged_quantity(tmp_path):
    run_dir = _train(tmp_path)
    three = _png(run_dir / "training.png")  # losses, KALE estimate, log-partition (no validation in this run)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line["validation_nll"] = 1.0 / line["round"]
    (tmp_path / "with-validation.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    four = _png(training_curves(tmp_path / "with-validation.jsonl", tmp_path / "four.png"))
    assert four.shape[0] == three.shape[0] and four.shape[1] == pytest.approx(three.shape[1] * 4 / 3, rel=0.02)
    (tmp_path / "empty.jsonl").write_text("")
    assert training_curves(tmp_path / "empty.jsonl", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_image_panels_put_the_sets_side_by_side_and_check_their_shapes(tmp_path):
    images = torch.rand(64, 1, 8, 8) * 2 - 1
    image_panels({"held-out data": images, "base": -images, "GEBM (mala)": images.flip(0)}, tmp_path / "p.png")
    pixels = _png(tmp_path / "p.png")
    assert 2.5 < pixels.shape[1] / pixels.shape[0] < 3.2  # three square panels in a row and their titles
    image_panels({"colour": torch.rand(5, 3, 4, 4) * 2 - 1}, tmp_path / "colour.png")  # an incomplete grid
    _png(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="panel 'flat': expected images"):
        image_panels({"flat": torch.zeros(10, 2)}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="panels must name"):
        image_panels({}, tmp_path / "bad.png")


def _saved(run_dir, sampler):
    return torch.load(run_dir / f"samples-{sampler}.pt", weights_only=True)  # tensors only: safe to load


def test_sample_on_a_2d_run_spells_out_warm_up_and_step_sizes(tmp_path, capsys):
    run_dir = _train(tmp_path)
    common = ["sample", "--run", str(run_dir), "--n", "40", "--steps", "5", "--warmup", "25", "--seed", "3"]
    steps = {}
    for sampler in ("mala", "ula", "kinetic_langevin"):
        assert main([*common, "--sampler", sampler]) == 0
        out = capsys.readouterr().out
        assert "30 iterations: 25 warm-up + 5 kept" in out
        assert ("unadjusted" in out) == (sampler != "mala") and ("acceptance 1.000" not in out)
        saved = _saved(run_dir, sampler)
        steps[sampler] = saved["step_size"].mean().item()
        assert f"step size {steps[sampler]:.4g}" in out
        assert saved["samples"].shape == saved["base_samples"].shape == (40, 2)
        assert torch.isfinite(saved["samples"]).all()
        _png(run_dir / f"samples-{sampler}.png")
        table = (run_dir / f"samples-{sampler}.csv").read_text().splitlines()
        assert table[0] == "x1,x2" and len(table) == 41
        assert "held-out data" in out and "GEBM (" + sampler + ")" in out
    # the unadjusted samplers' steps come from the one MALA adapts to in the same warm-up (same seed, same warm-up)
    assert steps["mala"] != pytest.approx(0.05)
    assert steps["ula"] == pytest.approx(min(steps["mala"], ULA_MAX_STEP), rel=1e-6)
    assert steps["kinetic_langevin"] == pytest.approx(math.sqrt(2 * min(steps["mala"], ULA_MAX_STEP)), rel=1e-6)
    assert main([*common, "--sampler", "ula", "--step-size", "0.01"]) == 0  # a given step is used as given
    assert "step size 0.01 (given)" in capsys.readouterr().out
    assert _saved(run_dir, "ula")["step_size"].eq(0.01).all()
    assert main([*common, "--warmup", "-1"]) == 2
    assert "--warmup: expected an integer >= 0, got -1" in capsys.readouterr().err


def test_sample_on_a_tabular_csv_run_writes_a_table_and_a_column_summary(tmp_path, capsys):
    rows = torch.randn(400, 3, generator=torch.Generator().manual_seed(0)) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]])
    csv = tmp_path / "table.csv"
    csv.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in rows.tolist()))
    run_dir = _train(tmp_path, dataset=str(csv), latent_dim=3, n_iter=3)
    assert main(["sample", "--run", str(run_dir), "--n", "30", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 iterations: 1 warm-up + 2 kept" in out
    summary = out[out.index("mean (sd) per column"):].splitlines()
    assert "held-out data" in summary[1] and "base" in summary[1] and "GEBM (mala)" in summary[1]
    assert [line.split()[0] for line in summary[2:5]] == ["x1", "x2", "x3"]
    table = (run_dir / "samples-mala.csv").read_text().splitlines()
    assert table[0] == "x1,x2,x3" and len(table) == 31
    values = torch.tensor([[float(v) for v in line.split(",")] for line in table[1:]], dtype=torch.float64)
    assert torch.allclose(values, _saved(run_dir, "mala")["samples"].double(), rtol=1e-5, atol=1e-5)
    _png(run_dir / "samples-mala.png")


def test_sample_on_an_image_run_writes_data_base_and_gebm_panels(tmp_path, capsys):
    pytest.importorskip("sklearn")
    run_dir = _train(tmp_path, dataset="digits", base="conv", latent_dim=4, hidden=8, n_test=100, n_iter=2)
    assert main(["sample", "--run", str(run_dir), "--sampler", "hmc", "--n", "20", "--steps", "2"]) == 0
    assert "3 iterations: 1 warm-up + 2 kept" in capsys.readouterr().out
    assert _saved(run_dir, "hmc")["samples"].shape == (20, 1, 8, 8)
    pixels = _png(run_dir / "samples-hmc.png")
    assert pixels.shape[1] > 2.5 * pixels.shape[0]  # three panels side by side
    assert not (run_dir / "samples-hmc.csv").exists()


def test_figures_carry_the_data_the_clamp_the_scores_and_error_bars(tmp_path, monkeypatch):
    """energy.png: the data over exp(-E) and the clamped region named in the legend; samples.png: the caption (the
    verdict) under the panels; metric-vs-steps.png: error bars and a y label that fits the figure."""
    import kale_fast.train.plots as plots

    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, dpi: figures.append(fig))
    data = torch.randn(300, 2)
    plots.energy_landscape(lambda x: torch.clamp(x.pow(2).sum(1) - 4.0, min=-1.0), data, tmp_path / "e.png",
                           resolution=40, floor=-1.0)
    legend = [text.get_text() for text in figures[-1].axes[0].get_legend().get_texts()]
    assert legend == ["held-out data", "clamped: E = -1 (flat, untrained)"]
    plots.scatter_samples({"data": data, "base: 85.0% within 3 sd": data}, tmp_path / "s.png",
                          caption="GEBM vs base: better")
    assert "GEBM vs base: better" in [text.get_text() for text in figures[-1].texts]
    plots.metric_vs_steps([0, 10], {"mala": [0.8, 0.9]}, tmp_path / "m.png", "share within 3 sd of a mode "
                          "(higher is better)", ("mala", 10), errors={"mala": [0.01, 0.02]})
    fig = figures[-1]
    ax = fig.axes[0]
    assert ax.containers and ax.containers[0].has_yerr
    fig.canvas.draw()
    label = ax.yaxis.label.get_window_extent()
    assert label.x0 >= 0 and label.y0 >= 0 and label.y1 <= fig.bbox.height  # inside the figure
