"""Evaluation: sample distances (MMD, energy distance); KALE and likelihoods live on kale_fast.GEBM."""
from kale_fast.metrics.distances import energy_distance, median_bandwidth, mmd

__all__ = ["energy_distance", "median_bandwidth", "mmd"]
