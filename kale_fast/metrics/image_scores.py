"""FID and KID through torchmetrics with a pluggable feature network: Inception weights from a path the
user gives, or, offline, a small classifier trained here on the data set's own labels (its numbers are
"FID-like": comparable between models of one data set, not with published FIDs)."""
from pathlib import Path
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from kale_fast._io import atomic_torch_save


class DigitFeatures(nn.Module):
    """A small CNN classifier for (B, 1, H, W) digits; its penultimate layer (num_features) gives the features.
    Inputs arrive in [0, 1] (torchmetrics' normalize=True convention) and are mapped back to [-1, 1]."""

    num_features = 64

    def __init__(self, channels: int = 1, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(256, 64), nn.ReLU())
        self.classify = nn.Linear(64, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x.float() * 2 - 1)


def train_feature_network(images: Tensor, labels: Tensor, steps: int = 600, seed: int = 0) -> DigitFeatures:
    """Fit DigitFeatures to (images in [-1, 1], labels) with Adam; returns it in eval mode."""
    torch.manual_seed(seed)
    net = DigitFeatures(images.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, len(images), (128,), generator=generator)
        loss = nn.functional.cross_entropy(net.classify(net((images[index] + 1) / 2)), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def cached_feature_network(name: str, images: Tensor, labels: Tensor, cache_dir: Path) -> DigitFeatures:
    """The data set's feature classifier, trained once and kept in cache_dir/<name>.pt."""
    path = Path(cache_dir) / f"{name}.pt"
    if path.exists():
        net = DigitFeatures(images.shape[1], int(labels.max()) + 1)
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    net = train_feature_network(images, labels)
    atomic_torch_save(net.state_dict(), path)
    return net


@torch.no_grad()
def fid_and_kid(real: Tensor, fake: Tensor, feature_net: Optional[nn.Module] = None,
                kid_subset_size: int = 100) -> Dict[str, float]:
    """FID and KID (cubic polynomial kernel, averaged over subsets, as the paper) of two image sets in [-1, 1].
    feature_net: a module with `num_features` mapping [0, 1] images to features; None loads torchmetrics'
    Inception (needs its weights, which this machine cannot download)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    feature = feature_net if feature_net is not None else 2048
    fid = FrechetInceptionDistance(feature=feature, normalize=True)
    subset = min(kid_subset_size, len(real), len(fake))
    kid = KernelInceptionDistance(feature=feature, subsets=50, subset_size=subset, normalize=True)
    for metric in (fid, kid):
        metric.update(((real + 1) / 2).clamp(0, 1), real=True)
        metric.update(((fake + 1) / 2).clamp(0, 1), real=False)
    kid_mean, kid_std = kid.compute()
    return dict(fid=fid.compute().item(), kid=kid_mean.item(), kid_std=kid_std.item())
