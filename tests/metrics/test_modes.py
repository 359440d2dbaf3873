"""Mode coverage and sample quality of the mixture toys."""
import math

import pytest
import torch

from kale_fast.data import toy_dataset


def test_mode_scores_of_the_mixture_toys():
    from kale_fast.metrics import mode_scores

    for dataset, within_3_sd in (("8gaussians", 1 - math.exp(-4.5)), ("rings", 0.9973)):  # 2-D and 1-D normal
        scores = mode_scores(toy_dataset(dataset, 20_000, seed=1), dataset)
        assert abs(scores["high_quality"] - within_3_sd) < 3e-3  # 4 binomial standard errors
        assert scores["modes_covered"] == scores["n_modes"] == {"8gaussians": 8, "rings": 3}[dataset]
    one_mode = toy_dataset("8gaussians", 2000, seed=2)
    one_mode = one_mode[one_mode[:, 1].abs() < 0.7]  # the modes at (2, 0) and (-2, 0) alone
    assert mode_scores(one_mode, "8gaussians") == dict(high_quality=pytest.approx(0.99, abs=0.01), modes_covered=2,
                                                       n_modes=8)
    assert mode_scores(torch.full((100, 2), 10.0), "8gaussians")["high_quality"] == 0
    with pytest.raises(ValueError, match="mixture toys"):
        mode_scores(one_mode, "moons")
