"""Confidence intervals over seeds: the numeric entries of several runs' summary.json (one run per training seed)
as mean, standard deviation and a 95% Student-t interval, in a Markdown table that docs/RESULTS.md can take."""
import json
import math
from pathlib import Path
from typing import Iterable, List, NamedTuple

import numpy as np
from scipy import stats

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
        summaries.append(json.loads(path.read_text()))
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
