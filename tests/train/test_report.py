"""Confidence intervals over seeds (kale-fast report) against scipy on made-up summaries."""
import json

import numpy as np
import pytest
from scipy import stats

from kale_fast.cli import main
from kale_fast.train.report import over_seeds, read_summaries


def _runs(tmp_path, summaries):
    run_dirs = []
    for i, summary in enumerate(summaries):
        run_dir = tmp_path / f"run-s{i}"
        run_dir.mkdir()
        (run_dir / "summary.json").write_text(json.dumps(summary))
        run_dirs.append(run_dir)
    return run_dirs


def test_mean_sd_and_t_interval_match_scipy(tmp_path):
    rng = np.random.default_rng(7)
    nll, mmd = rng.normal(12.0, 0.3, size=5), rng.gamma(2.0, 0.01, size=5)
    summaries = [dict(run=f"s{i}", nll_gebm=float(nll[i]), mmd_gebm=float(mmd[i]), rounds=1000, stopped=True)
                 for i in range(5)]
    summaries[4].pop("mmd_gebm")  # a metric one run lacks is summarised over the others
    summaries[0]["only_here"] = 3.0
    rows = {row.metric: row for row in over_seeds(read_summaries(_runs(tmp_path, summaries)))}
    assert list(rows) == ["nll_gebm", "mmd_gebm", "rounds", "only_here"]  # strings and bools are not metrics
    for name, values in (("nll_gebm", nll), ("mmd_gebm", mmd[:4])):
        row = rows[name]
        low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert row.n == len(values)
        assert row.mean == pytest.approx(values.mean(), rel=1e-12)
        assert row.sd == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert (row.low, row.high) == pytest.approx((low, high), rel=1e-12)
    assert (rows["rounds"].sd, rows["rounds"].low, rows["rounds"].high) == (0.0, 1000.0, 1000.0)
    assert rows["only_here"].n == 1 and np.isnan(rows["only_here"].sd) and np.isnan(rows["only_here"].low)


def test_report_verb_prints_and_writes_a_markdown_table(tmp_path, capsys):
    run_dirs = _runs(tmp_path, [dict(nll_gebm=11.9, kid=0.1), dict(nll_gebm=12.1, kid=0.3)])
    assert main(["report", *map(str, run_dirs), "--out", str(tmp_path / "table.md")]) == 0
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "table.md").read_text()
    low, high = stats.t.interval(0.95, 1, loc=12.0, scale=stats.sem([11.9, 12.1]))
    assert f"| nll_gebm | 2 | 12 | 0.1414 | [{low:.4g}, {high:.4g}] |" in printed.splitlines()
    assert "| metric | n | mean | sd | 95% CI |" in printed


def test_report_needs_two_evaluated_runs(tmp_path):
    run_dirs = _runs(tmp_path, [dict(nll_gebm=1.0)])
    with pytest.raises(ValueError, match="at least 2 runs, got 1"):
        over_seeds(read_summaries(run_dirs))
    (tmp_path / "not-evaluated").mkdir()
    with pytest.raises(FileNotFoundError, match="not-evaluated holds no summary.json: evaluate the run first"):
        read_summaries([*run_dirs, tmp_path / "not-evaluated"])


def test_report_leads_with_the_verdicts_metric_and_sets_constants_aside(tmp_path, capsys):
    """A mixture toy's summaries: the share of high-quality samples (the verdict's metric, nested in the summary)
    heads the report with each run's outcome; settings equal in every run are one line, not table rows."""
    verdicts = [dict(metric="share of samples within 3 sd of a mode", lower_is_better=False, gebm=g, base=b,
                     difference=g - b, se=0.008, outcome=o)
                for g, b, o in ((0.988, 0.852, "better"), (0.987, 0.842, "better"), (0.85, 0.855, "within noise"))]
    summaries = [dict(verdict=v, n_eval=2000, mmd_base=0.001 * (i + 1)) for i, v in enumerate(verdicts)]
    assert main(["report", *map(str, _runs(tmp_path, summaries))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("Verdict, GEBM vs base on share of samples within 3 sd of a mode (higher is better): better "
                        "in 2, within noise in 1 of 3 runs.")
    table = [line for line in lines if line.startswith("| ") and not line.startswith("| metric")]
    assert [line.split(" | ")[0] for line in table] == ["| verdict: gebm", "| verdict: base",
                                                         "| verdict: difference", "| mmd_base"]
    gebm = np.array([0.988, 0.987, 0.85])
    assert table[0].split(" | ")[2] == f"{gebm.mean():.4g}"
    assert lines[-1] == "The same in every run: n_eval 2000."
