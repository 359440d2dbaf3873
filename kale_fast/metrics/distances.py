"""Two-sample distances between sample sets (n, d) and (m, d): MMD with a Gaussian kernel at the median
bandwidth, and the energy distance."""
from typing import Optional

import torch
from torch import Tensor


def _flat(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be a tensor of at least 2 samples, shape (n, ...), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    return x.reshape(x.shape[0], -1).double()


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median pairwise distance of the pooled samples (the median heuristic)."""
    pooled = torch.cat([_flat("x", x), _flat("y", y)])
    distances = torch.cdist(pooled, pooled)
    return distances[torch.triu_indices(len(pooled), len(pooled), 1).unbind()].median()


def reference_bandwidth(reference: Tensor) -> Tensor:
    """The median distance between the two halves of a reference sample (n >= 2, ...): the data's own scale, for
    a kernel that stays the same whatever samples are compared with the reference."""
    half = len(reference) // 2
    return median_bandwidth(reference[:half], reference[half:])


def mmd(x: Tensor, y: Tensor, bandwidth: Optional[float] = None) -> Tensor:
    """Unbiased MMD^2 with the kernel exp(-|a - b|^2 / (2 bandwidth^2)); median heuristic by default."""
    x, y = _flat("x", x), _flat("y", y)
    sigma = median_bandwidth(x, y) if bandwidth is None else torch.tensor(float(bandwidth), dtype=torch.float64)
    kernel = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * sigma**2))  # noqa: E731
    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    n, m = len(x), len(y)
    return ((k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1)) + (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
            - 2 * k_xy.mean())


def energy_distance(x: Tensor, y: Tensor) -> Tensor:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| (unbiased within-sample terms)."""
    x, y = _flat("x", x), _flat("y", y)
    n, m = len(x), len(y)
    within_x = torch.cdist(x, x).sum() / (n * (n - 1))
    within_y = torch.cdist(y, y).sum() / (m * (m - 1))
    return 2 * torch.cdist(x, y).mean() - within_x - within_y
