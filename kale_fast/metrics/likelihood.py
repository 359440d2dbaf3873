"""Test log-likelihoods: a yardstick, the full-covariance Gaussian (MVN) fitted to the training split, and the
breakdown of a mean NLL into its median and worst rows.

Published tabular NLLs are only comparable with ours in the same units (the same whitening); the MVN row, run by
the same code on the same split, is the reference every table of this line of work carries."""
import math
from typing import Any, Dict

import torch
from torch import Tensor


def gaussian_nll(train: Tensor, test: Tensor) -> Dict[str, float]:
    """Mean NLL (nats) of `test` (n, D) under N(mean, cov) of `train` (m, D) by maximum likelihood, with the
    standard error over test rows: dict(nll_gaussian, nll_gaussian_se)."""
    if train.dim() != 2 or test.dim() != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"train and test must be (rows, D) with the same D, got {tuple(train.shape)} and "
                         f"{tuple(test.shape)}")
    if len(train) <= train.shape[1]:
        raise ValueError(f"train needs more rows than columns ({train.shape[1]}) for a covariance, got {len(train)}")
    train, test = train.double(), test.double()
    gaussian = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T, correction=0))
    log_p = gaussian.log_prob(test)
    return dict(nll_gaussian=-log_p.mean().item(), nll_gaussian_se=(log_p.std() / math.sqrt(len(test))).item())


N_WORST_ROWS = 5  # the test rows listed by nll_breakdown


def nll_breakdown(nll: Tensor, label: str) -> Dict[str, Any]:
    """What a mean NLL is made of: the median and the worst rows of per-row NLLs `nll` (n,) (nats; the row is the
    0-based index into the test split; the median of an even count is the mean of the middle two). A few rows far
    out can move a mean by more than a whole method's gain; the median does not move with them.
    dict(nll_<label>_median, nll_<label>_max, nll_<label>_worst: the N_WORST_ROWS highest as [{row, nll}, ...],
    highest first)."""
    if nll.dim() != 1 or len(nll) == 0:
        raise ValueError(f"nll must be a non-empty vector of per-row NLLs, got shape {tuple(nll.shape)}")
    nll = nll.double().cpu()
    worst = torch.topk(nll, min(N_WORST_ROWS, len(nll)))
    return {f"nll_{label}_median": nll.quantile(0.5).item(), f"nll_{label}_max": worst.values[0].item(),
            f"nll_{label}_worst": [dict(row=int(row), nll=float(value))
                                   for row, value in zip(worst.indices, worst.values)]}
