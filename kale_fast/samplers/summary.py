"""A sampler run for people and for ArviZ: the per-coordinate Summary that `SampleResult.summary()` returns (ArviZ's
column names, the diagnostics of samplers/diagnostics.py) and the trace as ArviZ's data object."""
import math
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import torch
from torch import Tensor

from kale_fast.samplers.diagnostics import MIN_DRAWS, ess_bulk, ess_mean, ess_tail, rhat


def to_inference_data(trace: Tensor, sample_stats: Optional[Dict[str, Tensor]] = None):
    """ArviZ's data object for a (chain, draw, L) trace: the posterior variable "z" with dims
    (chain, draw, latent), and `sample_stats`, a dict of name -> (chain, draw) tensors (e.g. "potential",
    "accept_prob"), as the sample_stats group. Returns an arviz.InferenceData under ArviZ 0.x and an
    xarray.DataTree under ArviZ 1.x."""
    try:
        import arviz
    except ImportError as error:
        raise ImportError("to_inference_data needs ArviZ: pip install 'kale_fast[arviz]' (or pip install arviz)") \
            from error
    if not isinstance(trace, Tensor):
        raise TypeError(f"trace must be a torch.Tensor of shape (chain, draw, L), got {type(trace).__name__}")
    if trace.dim() != 3:
        raise ValueError(f"trace must be a (chain, draw, L) tensor, got shape {tuple(trace.shape)}")
    stats = {}
    for name, values in (sample_stats or {}).items():
        if not isinstance(values, Tensor) or tuple(values.shape) != tuple(trace.shape[:2]):
            raise ValueError(f"sample_stats[{name!r}] must be a (chain, draw) = {tuple(trace.shape[:2])} tensor, "
                             f"got {tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__}")
        stats[name] = values.detach().cpu().numpy()
    groups = {"posterior": {"z": trace.detach().cpu().numpy()}}
    if stats:
        groups["sample_stats"] = stats
    dims = {"z": ["latent"]}
    if int(arviz.__version__.split(".")[0]) >= 1:  # ArviZ 1.x: one dict of groups -> DataTree
        return arviz.from_dict(groups, dims=dims)
    return arviz.from_dict(**groups, dims=dims)


@dataclass
class Summary:
    """What `SampleResult.summary()` returns: per latent coordinate (rows z[0], z[1], ...), `columns` maps
    ArviZ's summary names to (L,) float64 tensors: mean, sd, median, eti_<p>% and eti_<1-p>% (the central
    interval's ends), and with a trace mcse_mean, ess_bulk, ess_tail and r_hat (NaN without one: the
    statistics are then those of the chains' final states, one draw per chain). Per chain (B,):
    accept_rate (1 for unadjusted samplers), n_divergent (sampling transitions) and n_divergent_warmup.
    print() shows a table."""
    columns: Dict[str, Tensor]
    accept_rate: Tensor
    n_divergent: Tensor
    n_divergent_warmup: Tensor
    n_draws: int  # per chain, in the statistics (1 without a trace)

    def __str__(self) -> str:
        names = list(self.columns)
        width = max(9, *(len(name) + 1 for name in names))
        rows = [" " * 8 + "".join(f"{name:>{width}}" for name in names)]
        for j in range(len(next(iter(self.columns.values())))):
            rows.append(f"{f'z[{j}]':<8}" + "".join(f"{_format(float(self.columns[name][j])):>{width}}"
                                                   for name in names))
        n_chains = self.accept_rate.shape[0]
        accept = (f"acceptance {float(self.accept_rate.mean()):.3f} (chains {float(self.accept_rate.min()):.3f} "
                  f"to {float(self.accept_rate.max()):.3f})")
        divergent = int(self.n_divergent.sum())
        rows.append(f"{n_chains} chains, {self.n_draws} draws each; {accept}; {divergent} divergent transitions "
                    f"in {int((self.n_divergent > 0).sum())} chains ({int(self.n_divergent_warmup.sum())} in "
                    f"warm-up)" + ("" if self.n_draws > 1 else "; ESS and R-hat need a trace (run with thin >= 1)"))
        return "\n".join(rows)


def _format(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def summarize(draws: Tensor, accept_rate: Tensor, n_divergent: Tensor, n_divergent_warmup: Tensor,
              prob: float = 0.9) -> Summary:
    """The Summary of draws (chain, draw, L) (a trace, or the final states as (B, 1, L)); prob: the central
    interval's probability (ArviZ's default is 0.94 for HDIs; 0.9 gives the 5% and 95% quantiles)."""
    if not isinstance(prob, (int, float)) or isinstance(prob, bool) or not 0 < prob < 1:
        raise ValueError(f"prob must be a float in (0, 1), got {prob!r}")
    if not isinstance(draws, Tensor) or draws.dim() != 3 or draws.shape[0] * draws.shape[1] == 0:
        raise ValueError(f"draws must be a non-empty (chain, draw, L) tensor, got "
                         f"{tuple(draws.shape) if isinstance(draws, Tensor) else type(draws).__name__}")
    flat = draws.detach().to(torch.float64).reshape(-1, draws.shape[2]).cpu().numpy()
    low, high = (1 - prob) / 2, (1 + prob) / 2
    quantiles = np.quantile(flat, [0.5, low, high], axis=0)
    columns = {"mean": torch.from_numpy(flat.mean(axis=0)),
               "sd": torch.from_numpy(flat.std(axis=0, ddof=1) if flat.shape[0] > 1
                                      else np.full(flat.shape[1], np.nan)),
               "median": torch.from_numpy(quantiles[0]),
               f"eti_{100 * low:g}%": torch.from_numpy(quantiles[1]),
               f"eti_{100 * high:g}%": torch.from_numpy(quantiles[2])}
    if draws.shape[1] >= MIN_DRAWS:
        columns["mcse_mean"] = columns["sd"] / torch.sqrt(ess_mean(draws).cpu())
        columns["ess_bulk"] = ess_bulk(draws).cpu()
        columns["ess_tail"] = ess_tail(draws).cpu()
        columns["r_hat"] = rhat(draws).cpu()
    else:
        for name in ("mcse_mean", "ess_bulk", "ess_tail", "r_hat"):
            columns[name] = torch.full((draws.shape[2],), math.nan, dtype=torch.float64)
    return Summary(columns, accept_rate.detach().cpu(), n_divergent.detach().cpu(),
                   n_divergent_warmup.detach().cpu(), draws.shape[1])
