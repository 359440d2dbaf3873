"""GEBM against its base on held-out data: differences of a metric with their standard errors, and the one-line
verdict users read.

The verdict is "better" or "worse" when the difference is beyond 2 standard errors (about a 95% two-sided test),
else "within noise". The standard errors:
- paired per-point differences (test NLLs): their standard deviation / sqrt(n), with any further independent
  error (the Monte-Carlo log-partition's) added in quadrature;
- shares (high-quality samples of the mixture toys): the binomial standard errors of the two shares in quadrature
  (treating the two sample sets as independent, which is conservative when they share their latent draws);
- MMD^2 to held-out data: the two MMD^2 estimates are taken on `blocks` disjoint blocks of (samples, held-out
  points) at one bandwidth, and the standard error is that of the mean of the per-block differences (its spread
  over blocks / sqrt(blocks)); a block-estimate is unbiased but noisier than the full-sample one, so this errs on
  the side of "within noise".
"""
import math
from typing import Dict, Tuple

import torch
from torch import Tensor

from kale_fast.metrics.distances import mmd, reference_bandwidth

NOISE_SE = 2.0  # |difference| / SE below this: "within noise"


def mmd_difference(reference: Tensor, a: Tensor, b: Tensor, blocks: int = 10) -> Tuple[float, float]:
    """MMD^2(a, reference) - MMD^2(b, reference) as the mean over `blocks` disjoint blocks, and its standard
    error; samples (n, ...), each set holding at least 2 * blocks samples. The kernel's bandwidth is the median
    distance between reference points (the data's own scale), the same for both."""
    if not isinstance(blocks, int) or blocks < 2:
        raise ValueError(f"blocks must be an int >= 2, got {blocks!r}")
    size = min(len(reference), len(a), len(b)) // blocks
    if size < 2:
        raise ValueError(f"each sample set needs at least {2 * blocks} samples for {blocks} blocks, got "
                         f"{len(reference)}, {len(a)} and {len(b)}")
    bandwidth = reference_bandwidth(reference).item()
    differences = torch.stack([
        mmd(a[i * size:(i + 1) * size], ref, bandwidth) - mmd(b[i * size:(i + 1) * size], ref, bandwidth)
        for i, ref in enumerate(reference[:blocks * size].split(size))])
    return differences.mean().item(), (differences.std() / math.sqrt(blocks)).item()


def share_difference(share_a: float, share_b: float, n_a: int, n_b: int) -> Tuple[float, float]:
    """share_a - share_b (shares in [0, 1] of n_a and n_b samples) and its binomial standard error."""
    variance = share_a * (1 - share_a) / n_a + share_b * (1 - share_b) / n_b
    return share_a - share_b, math.sqrt(variance)


def paired_difference(values_a: Tensor, values_b: Tensor, extra_se: float = 0.0) -> Tuple[float, float]:
    """mean(values_a - values_b) over paired points (n,), and its standard error (extra_se in quadrature)."""
    differences = (values_a - values_b).double()
    se = differences.std().item() / math.sqrt(len(differences))
    return differences.mean().item(), math.sqrt(se**2 + extra_se**2)


def verdict(metric: str, gebm: float, base: float, difference: float, se: float, lower_is_better: bool) -> Dict:
    """The outcome of GEBM vs base on `metric` (gebm's and base's values, their difference gebm - base and its
    standard error) with the one line that says it."""
    significant = abs(difference) >= NOISE_SE * se and difference != 0
    outcome = ("within noise" if not significant else
               "better" if (difference < 0) == lower_is_better else "worse")
    direction = "lower" if lower_is_better else "higher"
    text = (f"GEBM vs base: {outcome} on {metric} ({direction} is better): GEBM {gebm:.4g}, base {base:.4g}, "
            f"difference {difference:+.3g} +- {se:.2g} (1 SE; better/worse means beyond {NOISE_SE:g} SE)")
    return dict(outcome=outcome, metric=metric, gebm=gebm, base=base, difference=difference, se=se,
                lower_is_better=lower_is_better, text=text)
