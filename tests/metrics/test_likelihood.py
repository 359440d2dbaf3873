"""The Gaussian NLL yardstick against scipy."""
import math

import pytest
import torch


def test_gaussian_nll_matches_scipy():
    from scipy.stats import multivariate_normal

    from kale_fast.metrics import gaussian_nll

    train_rows, test_rows = torch.randn(500, 4) @ torch.randn(4, 4), torch.randn(50, 4)
    expected = -multivariate_normal(train_rows.double().mean(0).numpy(),
                                    torch.cov(train_rows.double().T, correction=0).numpy()).logpdf(test_rows.numpy())
    result = gaussian_nll(train_rows, test_rows)
    assert result["nll_gaussian"] == pytest.approx(expected.mean(), rel=1e-9)
    assert result["nll_gaussian_se"] == pytest.approx(expected.std(ddof=1) / math.sqrt(50), rel=1e-9)
    with pytest.raises(ValueError, match="more rows than columns"):
        gaussian_nll(train_rows[:4], test_rows)
