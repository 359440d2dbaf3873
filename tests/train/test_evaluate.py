"""Evaluation of a run: the sampler and step count chosen on validation data, the curves, the GEBM-vs-base verdict
and its standard errors, seeded KID, the summary's bookkeeping; the digits FID sweep (slow: `pytest -m slow`)."""
import dataclasses
import importlib
import json
import math
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kale_fast as kf
from kale_fast.metrics import Comparison, mmd_difference, paired_difference, share_difference, verdict
from kale_fast.metrics.image_scores import DigitFeatures, FidScorer, fid_and_kid
from kale_fast.models import GEBM, MLP
from kale_fast.samplers import LatentPotential
from kale_fast.train import TrainConfig, evaluate, train
from kale_fast.train.config import SAMPLERS
from kale_fast.train.selection import chain_points, choose, step_grid, tuned_sampler

TINY = dict(name="tiny", dataset="8gaussians", n_train=512, n_test=128, hidden=16, depth=2, n_iter=6,
            n_iter_d_init=3, n_iter_d=2, batch_size=32, n_eval=64, sampler_steps=12, log_every=2, checkpoint_every=3)


def _config(tmp_path, **changes):
    return TrainConfig.from_dict({**TINY, "out_dir": str(tmp_path), **changes})


def _gebm(seed=0):
    torch.manual_seed(seed)
    return GEBM(MLP(2, 2, (16,)), MLP(2, 1, (16,)), 2).eval()


# --- selection ---------------------------------------------------------------------------------------------


def test_step_grid():
    assert step_grid(100) == [0, 10, 25, 50, 100]
    assert step_grid(137) == [0, 10, 25, 50, 100, 137]
    assert step_grid(1) == [0, 1]
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):
        step_grid(0)


@pytest.mark.parametrize("name", SAMPLERS)
def test_chain_points_are_one_chain_read_at_the_grid(name):
    """The states at 0, 3, 7 steps of the segmented chain are those of one uninterrupted run of 7 steps (and of 3),
    and 0 steps are the base samples of the starting points."""
    gebm = _gebm()
    config = TrainConfig(sampler_steps=8)
    sampler = tuned_sampler(gebm, config, name, torch.Generator().manual_seed(1), n_chains=40)
    z0 = gebm.latent(40, torch.Generator().manual_seed(2))
    points = list(chain_points(gebm, sampler, z0, [0, 3, 7], torch.Generator().manual_seed(3)))
    potential = LatentPotential(gebm.base, gebm.energy)
    for steps, point in zip([0, 3, 7], points):
        if steps == 0:
            expected = z0
        else:
            expected = sampler.run(potential, z0, steps, generator=torch.Generator().manual_seed(3)).z
        torch.testing.assert_close(point.samples, gebm.base(expected).detach(), rtol=1e-5, atol=1e-6)
        assert point.steps == steps
    assert math.isnan(points[0].accept_rate) and 0 < points[2].accept_rate <= 1
    with pytest.raises(ValueError, match="increasing"):
        next(chain_points(gebm, sampler, z0, [3, 0], torch.Generator()))


def test_tuned_sampler_is_frozen_at_its_warm_ups_adaptation():
    gebm = _gebm()
    config = TrainConfig(sampler_steps=40, step_size=0.01)
    tuned = tuned_sampler(gebm, config, "mala", torch.Generator().manual_seed(0), n_chains=64)
    _, pilot = gebm.sample(64, kf.MALA(0.01, adapt_step_size=True), 0, warmup=20,
                           generator=torch.Generator().manual_seed(0))
    assert not tuned.adapt_step_size and tuned.step_size == pytest.approx(pilot.step_size.mean().item())
    assert tuned.step_size > 0.05  # MALA adapts away from the too small 0.01 on this easy target
    assert torch.equal(tuned.metric.scale, pilot.metric.scale)
    # the unadjusted samplers: the `sample` verb's rule on the same MALA warm-up
    ula = tuned_sampler(gebm, config, "ula", torch.Generator().manual_seed(0), n_chains=64)
    kinetic = tuned_sampler(gebm, config, "kinetic_langevin", torch.Generator().manual_seed(0), n_chains=64)
    assert ula.step_size == pytest.approx(min(tuned.step_size, 0.2))
    assert kinetic.step_size == pytest.approx(math.sqrt(2 * min(tuned.step_size, 0.2)))
    assert torch.equal(ula.metric.scale, pilot.metric.scale) and torch.equal(kinetic.metric.scale, pilot.metric.scale)


def test_choose_takes_the_lowest_value_and_breaks_ties_towards_fewer_steps():
    steps = [0, 10, 25]
    assert choose({"a": [3.0, 2.0, 1.0], "b": [3.0, 0.5, 4.0]}, steps) == ("b", 10, 0.5)
    assert choose({"a": [1.0, 1.0, 2.0], "b": [1.0, 3.0, 3.0]}, steps)[:2] == ("a", 0)


# --- GEBM vs base ------------------------------------------------------------------------------------------


def test_mmd_difference_is_calibrated_under_the_null_and_detects_a_shift():
    """Both sample sets from the reference's law: |difference| > 2 SE about 8% of the time (a t with 9 degrees of
    freedom: 7.6%; 150 repeats: a standard deviation of 2.2%); one set shifted by 0.7 standard deviations: detected
    (worse) nearly always."""
    generator = torch.Generator().manual_seed(0)
    draw = lambda shift=0.0: torch.randn(200, 2, generator=generator) + shift  # noqa: E731
    false_alarms = sum(abs(c.difference) > 2 * c.se for c in (mmd_difference(draw(), draw(), draw())
                                                                for _ in range(150)))
    assert 0.01 <= false_alarms / 150 <= 0.15
    detected = sum(c.difference > 2 * c.se for c in (mmd_difference(draw(), draw(0.7), draw()) for _ in range(20)))
    assert detected >= 18
    with pytest.raises(ValueError, match="at least 20 samples"):
        mmd_difference(draw()[:10], draw(), draw())


def test_share_difference_se_matches_the_spread_over_repeats():
    generator = torch.Generator().manual_seed(1)
    differences = [(torch.rand(500, generator=generator) < 0.9).double().mean().item()
                   - (torch.rand(800, generator=generator) < 0.8).double().mean().item() for _ in range(2000)]
    comparison = share_difference(0.9, 0.8, 500, 800)
    assert comparison.difference == pytest.approx(0.1)
    assert torch.tensor(differences).std().item() == pytest.approx(comparison.se, rel=0.06)


def test_paired_difference():
    a, b = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 1.0, 2.0])
    comparison = paired_difference(a, b, extra_se=0.3)
    assert (comparison.a, comparison.b, comparison.difference) == pytest.approx((7 / 3, 7 / 6, 7 / 6))
    assert comparison.se == pytest.approx(math.sqrt(torch.tensor([0.5, 1.0, 2.0]).std().item() ** 2 / 3 + 0.09))


@pytest.mark.parametrize("difference, se, lower_is_better, outcome", [
    (-0.5, 0.1, True, "better"), (0.5, 0.1, True, "worse"), (0.5, 0.1, False, "better"), (0.15, 0.1, True,
                                                                                          "within noise"),
    (0.0, 0.0, True, "within noise")])
def test_verdict(difference, se, lower_is_better, outcome):
    result = verdict("m", Comparison(1.0 + difference, 1.0, se), lower_is_better)
    assert result["outcome"] == outcome and result["text"].startswith(f"GEBM vs base: {outcome} on m")


_PRINTED = re.compile(r"GEBM (\S+), base (\S+), difference (\S+) \+- (\S+) ")


def _check_printed_verdict(result: dict) -> None:
    """The printed difference has the sign of the printed values' difference, and the outcome agrees with it."""
    gebm, base, difference, se = map(float, _PRINTED.search(result["text"]).groups())
    assert math.copysign(1, difference) * (gebm - base) > 0 or difference == gebm - base == 0, result["text"]
    assert (result["difference"], result["gebm"] - result["base"]) == (pytest.approx(difference, rel=0.06, abs=0),
                                                                         pytest.approx(difference, rel=0.06, abs=0))
    lower = result["lower_is_better"]
    if result["outcome"] == "within noise":
        assert not abs(result["difference"]) >= 2 * result["se"] or result["difference"] == 0
    else:
        assert abs(difference) >= 2 * se * 0.9  # (both printed to 2 significant digits)
        assert (result["outcome"] == "better") == ((difference < 0) == lower), result["text"]


_values = st.one_of(st.floats(-1e6, 1e6), st.floats(-1e-3, 1e-3))


@settings(max_examples=400, deadline=None)
@given(gebm=_values, base=_values, nudge=st.one_of(st.just(0.0), st.floats(-1e-9, 1e-9)),
       se=st.floats(0, 1e3), lower_is_better=st.booleans())
def test_a_printed_difference_has_the_sign_of_the_printed_values(gebm, base, nudge, se, lower_is_better):
    """Over random values (near-equal pairs included: `nudge`), every verdict line is consistent with itself."""
    _check_printed_verdict(verdict("m", Comparison(gebm, base + nudge if nudge else base, se), lower_is_better))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(0, 0.5), n=st.integers(40, 200))
def test_the_mmd_verdict_prints_one_estimators_numbers(seed, shift, n):
    """The MMD^2 verdict's values and difference are one estimator's (the block means): never the full-sample
    values beside a block difference of the other sign."""
    generator = torch.Generator().manual_seed(seed)
    reference, a, b = (torch.randn(n, 2, generator=generator) + s for s in (0.0, shift, 0.0))
    comparison = mmd_difference(reference, a, b, blocks=4)
    assert comparison.difference == comparison.a - comparison.b
    _check_printed_verdict(verdict("MMD^2", comparison, lower_is_better=True))


# --- image scores ------------------------------------------------------------------------------------------


def test_kid_is_seeded_and_fid_scorer_matches_fid_and_kid_without_the_buffer_warning():
    torch.manual_seed(0)
    net = DigitFeatures().eval()
    real, fake = torch.rand(60, 1, 8, 8) * 2 - 1, torch.rand(60, 1, 8, 8) ** 2 * 2 - 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = torch.get_rng_state()
        first = fid_and_kid(real, fake, net, kid_subset_size=30)
        assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
        scorer = FidScorer(real, net)
        fids = scorer(fake), scorer(real[:30]), scorer(fake)
    assert not [w for w in caught if "extracted features in buffer" in str(w.message)]
    assert fid_and_kid(real, fake, net, kid_subset_size=30) == first
    assert fid_and_kid(real, fake, net, kid_subset_size=30, seed=1)["kid"] != first["kid"]
    assert first["kid_std"] > 0
    assert fids[0] == pytest.approx(first["fid"], rel=1e-6) and fids[2] == fids[0] and fids[1] < fids[0]


# --- evaluate() on runs ------------------------------------------------------------------------------------


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
    monkeypatch.setattr(evaluate_module, "load_data", lambda c: real_load(c)._replace(test=real_load(c).test + 5))
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
    base_only = evaluate(train(dataclasses.replace(config, name="ml", objective="ml"), progress=False))
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


def test_reference_bandwidth_is_the_data_scale_and_fixes_the_kernel():
    from kale_fast.metrics import median_bandwidth, mmd, reference_bandwidth

    data = torch.randn(400, 2, generator=torch.Generator().manual_seed(0)) * 3
    bandwidth = reference_bandwidth(data)
    assert bandwidth == median_bandwidth(data[:200], data[200:]) and 3.5 < bandwidth < 5  # 3 sqrt(2 ln 4) = 5.0
    # far apart, MMD^2 is the two within-sample kernel means: 1 / (1 + 2 * 3^2 / bandwidth^2) each (2-D Gaussians)
    assert mmd(data + 100, data, bandwidth.item()) == pytest.approx(2 / (1 + 18 / bandwidth.item() ** 2), rel=0.1)


def test_choose_and_the_mode_guard():
    from kale_fast.train.selection import choose, mode_guarded_quality

    grid = [0, 10, 25]
    assert choose({"a": [3.0, 1.0, 1.0], "b": [3.0, 2.0, 0.5]}, grid) == ("b", 25, 0.5)
    assert choose({"a": [3.0, 1.0, 1.0], "b": [3.0, 2.0, 1.0]}, grid) == ("a", 10, 1.0)  # ties: fewer steps
    assert choose({"a": [0.8, 0.9, 0.95], "b": [0.8, 0.97, 0.9]}, grid, higher_is_better=True) == ("b", 10, 0.97)
    curves = {"collapsing": dict(high_quality=[0.8, 0.99, 0.999], modes_covered=[8, 7, 2]),
              "honest": dict(high_quality=[0.8, 0.9, 0.95], modes_covered=[8, 8, 8])}
    guarded = mode_guarded_quality(curves)
    assert guarded["collapsing"][1:] == [-math.inf, -math.inf]
    assert choose(guarded, grid, higher_is_better=True) == ("honest", 25, 0.95)
