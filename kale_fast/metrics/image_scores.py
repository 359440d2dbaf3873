"""FID and KID through torchmetrics with a pluggable feature network: from a file the user gives (Inception-v3
weights, which makes the numbers FID proper, or any network saved by torch.export or TorchScript), or,
offline, a small classifier trained here on the data set's own labels (its numbers are "FID-like":
comparable between models of one data set, not with published FIDs)."""
import contextlib
import warnings
from pathlib import Path
from typing import Dict, Tuple, Union

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
        loss = nn.functional.cross_entropy(net.classify(net(unit_range(images[index]))), labels[index])
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


class InceptionFeatures(nn.Module):
    """The FID network (torch-fidelity's Inception-v3 through torchmetrics) with weights read from a file, e.g.
    pt_inception-2015-12-05-6726825d.pth; [0, 1] images of any size, grey ones repeated to 3 channels."""

    num_features = 2048

    def __init__(self, weights_path: Union[str, Path]):
        super().__init__()
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(f"{weights_path} is neither .pt2 nor TorchScript, so it is read as Inception-v3 "
                                      f"weights, which needs torch-fidelity: pip install torch-fidelity (it imports "
                                      f"torchvision: install the torchvision build that matches your torch)")
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                            feature_extractor_weights_path=str(weights_path))

    def forward(self, x: Tensor) -> Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.inception((x * 255).byte())


class ScriptedFeatures(nn.Module):
    """A saved feature network (torch.export or TorchScript; [0, 1] images (B, C, H, W) -> (B, F)) with the
    num_features torchmetrics needs."""

    def __init__(self, net: nn.Module, image_shape: Tuple[int, ...]):
        super().__init__()
        self.net = net  # as saved (an exported program cannot be switched to eval mode)
        with torch.no_grad():
            self.num_features = int(net(torch.rand(2, *image_shape)).shape[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def feature_network_from_file(path: Union[str, Path], image_shape: Tuple[int, ...]) -> nn.Module:
    """The feature network saved at `path`: a torch.export program (.pt2, exported with a dynamic batch
    dimension), a TorchScript file, or else Inception-v3 weights (FID proper)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network {path} not found: give a .pt2 file (torch.export.save of a module "
                                f"mapping [0, 1] images to features), a TorchScript file, or torch-fidelity's "
                                f"Inception-v3 weights (pt_inception-2015-12-05-6726825d.pth)")
    if path.suffix == ".pt2":
        return ScriptedFeatures(torch.export.load(str(path)).module(), image_shape)
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:  # not a TorchScript archive
        return InceptionFeatures(path)
    return ScriptedFeatures(scripted, image_shape)  # its own errors (wrong image shape, ...) surface as they are


def unit_range(images: Tensor) -> Tensor:
    """[-1, 1] images as the [0, 1] ones torchmetrics and the feature networks take (normalize=True)."""
    return ((images + 1) / 2).clamp(0, 1)


@contextlib.contextmanager
def _quiet_feature_buffers():
    """torchmetrics warns, for every metric made, that FID and KID keep their features in memory: true of every
    use here and no news to a user, so that one warning is kept off the console (the others are not)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Metric `.*` will save all extracted features in buffer",
                                category=UserWarning)
        yield


@torch.no_grad()
def fid_and_kid(real: Tensor, fake: Tensor, feature_net: nn.Module, kid_subset_size: int = 100,
                seed: int = 0) -> Dict[str, float]:
    """FID and KID (cubic polynomial kernel, averaged over 50 random subsets, as the paper) of two image sets in
    [-1, 1], with kid_std, the spread of KID over the subsets. The subsets are drawn from `seed`: the same images
    give the same KID every time (the global RNG is left as it was). feature_net: a module with `num_features`
    mapping [0, 1] images to features (DigitFeatures, feature_network_from_file)."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    subset = min(kid_subset_size, len(real), len(fake))
    with _quiet_feature_buffers():
        fid = FrechetInceptionDistance(feature=feature_net, normalize=True)
        kid = KernelInceptionDistance(feature=feature_net, subsets=50, subset_size=subset, normalize=True)
    for metric in (fid, kid):
        metric.update(unit_range(real), real=True)
        metric.update(unit_range(fake), real=False)
    with torch.random.fork_rng(devices=[]):  # KID draws its subsets with torch.randperm on the CPU generator
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    return dict(fid=fid.compute().item(), kid=kid_mean.item(), kid_std=kid_std.item())


class FidScorer:
    """FID of many image sets against one reference set, whose features are computed once (the curves of FID
    against MCMC steps). Images (N, C, H, W) in [-1, 1]."""

    def __init__(self, real: Tensor, feature_net: nn.Module):
        from torchmetrics.image.fid import FrechetInceptionDistance

        with _quiet_feature_buffers():
            self.fid = FrechetInceptionDistance(feature=feature_net, normalize=True, reset_real_features=False)
        with torch.no_grad():
            self.fid.update(unit_range(real), real=True)

    @torch.no_grad()
    def __call__(self, fake: Tensor) -> float:
        self.fid.reset()  # the fake features only (reset_real_features=False)
        self.fid.update(unit_range(fake), real=False)
        return self.fid.compute().item()
