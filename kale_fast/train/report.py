"""Confidence intervals over seeds: the numeric entries of several runs' summary.json (one run per training seed)
as mean, standard deviation and a 95% Student-t interval, in a Markdown table that docs/RESULTS.md can take.

The report leads with what the runs' verdicts compare (GEBM and base on the verdict's metric, e.g. the share of
high-quality samples of the mixture toys, and the outcome of each run); entries equal in every run (settings such
as n_eval) follow the table on one line instead of filling it."""
import json
import math
from pathlib import Path
from typing import Iterable, List, NamedTuple, Tuple

import numpy as np
from scipy import stats

from kale_fast._io import read_utf8
from kale_fast.train.run_folder import SUMMARY


class MetricOverSeeds(NamedTuple):
    metric: str
    n: int        # runs whose summary holds the metric
    mean: float
    sd: float     # sample standard deviation (ddof 1); nan for n = 1
    low: float    # the 95% t-interval of the mean, mean -+ t(0.975, n - 1) sd / sqrt(n); nan for n = 1
    high: float


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_summaries(run_dirs: Iterable[Path]) -> List[dict]:
    """Each run folder's summary.json; a clear error for a folder without one."""
    summaries = []
    for run_dir in map(Path, run_dirs):
        path = run_dir / SUMMARY
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir} holds no {SUMMARY}: evaluate the run first (kale-fast eval --run "
                                    f"{run_dir})")
        try:
            summary = json.loads(read_utf8(path, "summary file"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not JSON ({error}): evaluate the run again (kale-fast eval --run "
                             f"{run_dir})") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{path} must hold a JSON object of a run's results, got {type(summary).__name__}: "
                             f"evaluate the run again (kale-fast eval --run {run_dir})")
        summaries.append(summary)
    return summaries


def over_seeds(summaries: List[dict]) -> List[MetricOverSeeds]:
    """One row per numeric entry (bools excluded), in order of first appearance, over the summaries holding it."""
    if len(summaries) < 2:
        raise ValueError(f"summaries: intervals over seeds need at least 2 runs, got {len(summaries)}")
    metrics = list(dict.fromkeys(k for summary in summaries for k, v in summary.items() if _is_number(v)))
    rows = []
    for metric in metrics:
        values = np.array([s[metric] for s in summaries if _is_number(s.get(metric))], dtype=np.float64)
        n, mean = len(values), float(values.mean())
        if n < 2:
            rows.append(MetricOverSeeds(metric, n, mean, math.nan, math.nan, math.nan))
            continue
        sd = float(values.std(ddof=1))  # (by hand, not stats.t.interval, which gives nan for a zero spread)
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        rows.append(MetricOverSeeds(metric, n, mean, sd, mean - half, mean + half))
    return rows


def markdown_table(rows: List[MetricOverSeeds], runs: List[str]) -> str:
    """The rows as a Markdown table (4 significant digits), headed by the runs it covers."""
    lines = [f"Over {len(runs)} runs ({', '.join(runs)}): mean, standard deviation and 95% t-interval of the mean.",
             "", "| metric | n | mean | sd | 95% CI |", "|---|---|---|---|---|"]
    for row in rows:
        interval = "n/a" if math.isnan(row.low) else f"[{row.low:.4g}, {row.high:.4g}]"
        sd = "n/a" if math.isnan(row.sd) else f"{row.sd:.4g}"
        lines.append(f"| {row.metric} | {row.n} | {row.mean:.4g} | {sd} | {interval} |")
    return "\n".join(lines) + "\n"


def verdict_rows(summaries: List[dict]) -> Tuple[str, List[MetricOverSeeds]]:
    """The line saying how each run's verdict came out, and rows over seeds of the verdict's GEBM value, base value
    and difference; ("", []) when no summary holds a verdict."""
    verdicts = [s["verdict"] for s in summaries if isinstance(s.get("verdict"), dict)]
    if not verdicts:
        return "", []
    metrics = sorted({v["metric"] for v in verdicts})
    outcomes = [v["outcome"] for v in verdicts]
    counts = ", ".join(f"{outcome} in {outcomes.count(outcome)}" for outcome in dict.fromkeys(outcomes))
    if len(metrics) > 1:
        return f"Verdicts, GEBM vs base: {counts} of {len(summaries)} runs, on different metrics ({metrics}).", []
    direction = "lower" if verdicts[0]["lower_is_better"] else "higher"
    line = (f"Verdict, GEBM vs base on {metrics[0]} ({direction} is better): {counts} of {len(summaries)} "
            f"runs.")
    if len(verdicts) < 2:
        return line, []
    rows = over_seeds([{f"verdict: {key}": v[key] for key in ("gebm", "base", "difference")} for v in verdicts])
    return line, rows


def markdown_report(summaries: List[dict], runs: List[str]) -> str:
    """The report of `kale-fast report`: the verdict's line and its rows first, then every other entry that
    varies over the runs; the entries equal in every run on one line after the table."""
    headline, rows = verdict_rows(summaries)
    every = over_seeds(summaries)
    constant = [row for row in every if row.n == len(summaries) and row.sd == 0]
    table = markdown_table(rows + [row for row in every if row not in constant], runs)
    lines = ([headline, ""] if headline else []) + [table.rstrip("\n")]
    if constant:
        lines += ["", "The same in every run: " + ", ".join(f"{row.metric} {row.mean:.6g}" for row in constant) + "."]
    return "\n".join(lines) + "\n"
