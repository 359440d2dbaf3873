"""Evaluation: sample distances (MMD, energy distance); KALE and likelihoods live on kale_fast.GEBM."""
from kale_fast.metrics.distances import energy_distance, median_bandwidth, mmd
from kale_fast.metrics.likelihood import gaussian_nll

__all__ = ["energy_distance", "gaussian_nll", "median_bandwidth", "mmd"]
