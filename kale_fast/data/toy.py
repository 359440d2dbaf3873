"""2-D toy data sets, made in code (nothing is downloaded)."""
import math
from typing import Callable, Dict, Optional

import torch
from torch import Tensor


_ANGLES = torch.arange(8) * (math.pi / 4)
EIGHT_GAUSSIANS_CENTRES = 2.0 * torch.stack([torch.cos(_ANGLES), torch.sin(_ANGLES)], dim=1)  # (8, 2), equal weights
EIGHT_GAUSSIANS_SD = 0.15
RINGS_RADII = (0.75, 1.5, 2.25)  # equal weights
RINGS_SD = 0.06


def _eight_gaussians(n: int, gen: torch.Generator) -> Tensor:
    mode = torch.randint(0, 8, (n,), generator=gen)
    return EIGHT_GAUSSIANS_CENTRES[mode] + EIGHT_GAUSSIANS_SD * torch.randn(n, 2, generator=gen)


def _rings(n: int, gen: torch.Generator) -> Tensor:
    radius = torch.tensor(RINGS_RADII)[torch.randint(0, len(RINGS_RADII), (n,), generator=gen)]
    angle = 2 * math.pi * torch.rand(n, generator=gen)
    circle = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    return radius[:, None] * circle + RINGS_SD * torch.randn(n, 2, generator=gen)


def _swiss_roll(n: int, gen: torch.Generator) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=gen))
    points = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) / 5.0
    return points + 0.1 * torch.randn(n, 2, generator=gen)


def _checkerboard(n: int, gen: torch.Generator) -> Tensor:
    x1 = 4 * torch.rand(n, generator=gen) - 2
    x2 = torch.rand(n, generator=gen) - torch.randint(0, 2, (n,), generator=gen) * 2.0
    x2 = x2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 1.25


def _two_moons(n: int, gen: torch.Generator) -> Tensor:
    upper = torch.rand(n, generator=gen) < 0.5
    angle = math.pi * torch.rand(n, generator=gen)
    x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
    y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
    return 1.5 * (torch.stack([x - 0.5, y - 0.25], 1) + 0.08 * torch.randn(n, 2, generator=gen))


def _pinwheel(n: int, gen: torch.Generator, arms: int = 5) -> Tensor:
    arm = torch.randint(0, arms, (n,), generator=gen).float()
    radial = 1.0 + 0.3 * torch.randn(n, generator=gen)
    tangential = 0.05 * torch.randn(n, generator=gen)
    angle = arm * 2 * math.pi / arms + 0.25 * torch.exp(radial)
    rotation = torch.stack([torch.cos(angle), -torch.sin(angle), torch.sin(angle), torch.cos(angle)], 1).view(n, 2, 2)
    return 1.6 * torch.einsum("nij,nj->ni", rotation, torch.stack([radial, tangential], 1))


TOY_DATASETS: Dict[str, Callable[[int, torch.Generator], Tensor]] = {
    "8gaussians": _eight_gaussians, "rings": _rings, "swissroll": _swiss_roll, "checkerboard": _checkerboard,
    "moons": _two_moons, "pinwheel": _pinwheel,
}


def toy_dataset(name: str, n: int, seed: Optional[int] = 0) -> Tensor:
    """n points (n, 2) of the named toy distribution, reproducible from `seed`."""
    if name not in TOY_DATASETS:
        raise ValueError(f"unknown toy data set {name!r}; choose one of {sorted(TOY_DATASETS)}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return TOY_DATASETS[name](n, torch.Generator().manual_seed(seed)).float()
