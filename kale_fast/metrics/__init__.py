"""Evaluation: sample distances (MMD, energy distance), mode scores of the mixture toys; KALE and likelihoods live
on kale_fast.GEBM."""
from kale_fast.metrics.distances import energy_distance, median_bandwidth, mmd
from kale_fast.metrics.likelihood import gaussian_nll
from kale_fast.metrics.modes import MODE_DATASETS, mode_scores

__all__ = ["MODE_DATASETS", "energy_distance", "gaussian_nll", "median_bandwidth", "mmd", "mode_scores"]
