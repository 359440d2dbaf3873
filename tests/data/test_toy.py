"""The toy data sets: seeded and told apart by the sample distances."""
import pytest
import torch

from kale_fast.data import toy_dataset
from kale_fast.metrics import energy_distance, mmd


def test_toy_data_are_reproducible_and_distances_separate_them():
    a, b = toy_dataset("moons", 500, seed=1), toy_dataset("moons", 500, seed=1)
    assert torch.equal(a, b) and a.shape == (500, 2)
    same, other = toy_dataset("moons", 500, seed=2), toy_dataset("rings", 500, seed=2)
    assert mmd(a, same) < 0.01 < mmd(a, other)
    assert energy_distance(a, same) < energy_distance(a, other)
    with pytest.raises(ValueError, match="unknown toy data set"):
        toy_dataset("spirals", 10)
