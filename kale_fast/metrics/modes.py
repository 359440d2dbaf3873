"""What users look at on the mixture toys: the share of high-quality samples and the modes covered.

The convention of the GAN mode-collapse literature (VEEGAN, Srivastava et al. 2017; unrolled GANs, Metz et al.
2017): a sample is of high quality when it lies within 3 standard deviations of the nearest mode, and a mode is
covered when at least 20 of every 2,500 samples (0.8%) are of high quality at it. On 8gaussians a mode is a
centre; on rings it is a ring, and the distance to it is | |x| - radius |.
"""
from typing import Dict

import torch
from torch import Tensor

from kale_fast.data.toy import EIGHT_GAUSSIANS_CENTRES, EIGHT_GAUSSIANS_SD, RINGS_RADII, RINGS_SD

MODE_DATASETS = ("8gaussians", "rings")
COVERED_SHARE = 20 / 2500


def _distances_to_modes(samples: Tensor, dataset: str) -> Tensor:
    """(n, modes) distances of each sample to each mode, in units of the mode's standard deviation."""
    if dataset == "8gaussians":
        return torch.cdist(samples, EIGHT_GAUSSIANS_CENTRES.to(samples)) / EIGHT_GAUSSIANS_SD
    radii = torch.tensor(RINGS_RADII).to(samples)
    return (samples.norm(dim=1, keepdim=True) - radii).abs() / RINGS_SD


@torch.no_grad()
def mode_scores(samples: Tensor, dataset: str) -> Dict[str, float]:
    """high_quality: share of samples (n, 2) within 3 sd of their nearest mode, in [0, 1]; modes_covered: the
    number of modes holding at least COVERED_SHARE of the samples as high-quality ones; n_modes: how many there are.
    """
    if dataset not in MODE_DATASETS:
        raise ValueError(f"dataset must be one of the mixture toys {MODE_DATASETS}, got {dataset!r}")
    if not isinstance(samples, Tensor) or samples.dim() != 2 or samples.shape[1] != 2 or len(samples) == 0:
        raise ValueError(f"samples must be a non-empty (n, 2) tensor, got "
                         f"{getattr(samples, 'shape', type(samples).__name__)}")
    distances = _distances_to_modes(samples.double(), dataset)
    distance, nearest = distances.min(dim=1)
    good = distance <= 3
    counts = torch.bincount(nearest[good], minlength=distances.shape[1])
    return dict(high_quality=good.double().mean().item(),
                modes_covered=int((counts >= COVERED_SHARE * len(samples)).sum()), n_modes=len(counts))
