"""A yardstick for test log-likelihoods: the full-covariance Gaussian (MVN) fitted to the training split.

Published tabular NLLs are only comparable with ours in the same units (the same whitening); the MVN row, run by
the same code on the same split, is the reference every table of this line of work carries."""
import math
from typing import Dict

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
