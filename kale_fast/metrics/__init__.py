"""Evaluation: sample distances (MMD, energy distance), mode scores of the mixture toys;
GEBM-vs-base differences with standard errors and the verdict; KALE and likelihoods live
on kale_fast.GEBM."""
from kale_fast.metrics.comparison import Comparison, mmd_difference, paired_difference, share_difference, verdict
from kale_fast.metrics.distances import energy_distance, median_bandwidth, mmd, reference_bandwidth
from kale_fast.metrics.likelihood import gaussian_nll, nll_breakdown
from kale_fast.metrics.modes import MODE_DATASETS, mode_scores

__all__ = ["Comparison", "MODE_DATASETS", "energy_distance", "gaussian_nll", "median_bandwidth", "mmd",
           "mmd_difference", "mode_scores", "nll_breakdown", "paired_difference", "reference_bandwidth",
           "share_difference", "verdict"]
