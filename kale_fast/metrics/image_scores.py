"""FID and KID through torchmetrics with a pluggable feature network: weights from a file the user gives
(Inception-v3's, which makes the numbers FID proper, or those of the classifier below), a network built in the
user's own script, or, offline, a small classifier trained here on the data set's own labels (its numbers are
"FID-like": comparable between models of one data set, not with published FIDs). Files are read as weights only:
programs (torch.export, TorchScript) hold code and are refused."""
import contextlib
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from kale_fast._io import atomic_torch_save, load_torch_file, own_folder


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
    """The data set's feature classifier, trained once and kept in cache_dir/<name>.pt (its weights only). The cache
    folder must be a folder of its own holding no symbolic link (own_folder): neither the weights read nor the file
    written go through a link planted there."""
    path = own_folder(cache_dir, "the feature network cache") / f"{name}.pt"
    if path.exists():
        return digit_features_from_weights(read_weights(path), path, (images.shape[1], int(labels.max()) + 1))
    net = train_feature_network(images, labels)
    atomic_torch_save(net.state_dict(), path)
    return net


# The tensors of DigitFeatures' state dict: a file of exactly these is read as DigitFeatures, any other as Inception.
_DIGIT_KEYS = tuple(DigitFeatures().state_dict())
_MAX_CLASSES = 100_000


def digit_features_from_weights(state: Dict[str, Tensor], path, expected: Optional[Tuple[int, int]] = None
                                ) -> DigitFeatures:
    """DigitFeatures holding the weights `state` (read_weights' dict) in eval mode; its channels and classes are
    read from the weights' shapes (and must equal `expected` (channels, classes) when given) and bounded before
    the network is built; weights of another shape are a ValueError naming the file."""
    if set(state) != set(_DIGIT_KEYS):
        raise ValueError(f"{path} does not hold the weights of kale_fast's DigitFeatures (expected the tensors "
                         f"{list(_DIGIT_KEYS)}, got {sorted(state)[:8]}...)")
    first, head = state["features.0.weight"], state["classify.weight"]
    channels, classes = (first.shape[1] if first.dim() == 4 else 0), (head.shape[0] if head.dim() == 2 else 0)
    if channels not in (1, 3) or not 1 <= classes <= _MAX_CLASSES or (expected and (channels, classes) != expected):
        raise ValueError(f"{path}: DigitFeatures weights for {channels} channel(s) and {classes} classes; expected "
                         f"{expected or '1 or 3 channels and 1 to 100000 classes'} (channels, classes)")
    net = DigitFeatures(channels, classes)
    try:
        net.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: the DigitFeatures weights have the wrong shapes: {' '.join(str(error).split())}"
                         ) from None
    return net.eval()


def read_weights(path) -> Dict[str, Tensor]:
    """A file of weights as {name: tensor}: .safetensors (the safetensors package), else a torch.save'd state dict
    read with torch.load(weights_only=True). No code in the file runs; programs (torch.export's .pt2,
    TorchScript) are refused with a ValueError saying what to give instead."""
    path = Path(path)
    program = _program_format(path)
    if program is not None:
        raise ValueError(f"feature network {path} is a {program}: a program holds code, which kale_fast does not "
                         f"run from a file. Give the network's weights instead (torch.save(net.state_dict(), "
                         f"...) or .safetensors) of torch-fidelity's Inception-v3 (FID proper) or of "
                         f"kale_fast.metrics.image_scores.DigitFeatures; for a network of your own, build it in "
                         f"your script and pass it: kale_fast.train.evaluate(run, feature_net=net)")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{path} is a .safetensors file, which needs the package 'safetensors': "
                              f"pip install safetensors (or pip install 'kale_fast[images]')") from None
        try:
            return load_file(str(path))
        except Exception as error:  # safetensors reports a damaged header as SafetensorError
            raise ValueError(f"{path} is not a readable .safetensors file: {error}") from None
    state = load_torch_file(path, map_location="cpu")
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"{path} is not a state dict ({{name: tensor}}, as torch.save(net.state_dict(), path) "
                         f"writes): it holds {type(state).__name__}")
    return state


def _program_format(path: Path) -> Optional[str]:
    """'TorchScript program' or 'torch.export program (.pt2)' when `path` is one (both are zip archives, like a
    torch.save file, but they hold code: TorchScript under code/, torch.export a serialised graph under
    models/), else None."""
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        entries = [name.split("/", 1)[-1] for name in archive.namelist()]
    if any(entry.startswith("code/") for entry in entries):
        return "TorchScript program"
    if path.suffix == ".pt2" or any(entry.startswith("models/") for entry in entries):
        return "torch.export program (.pt2)"
    return None


class InceptionFeatures(nn.Module):
    """The FID network (torch-fidelity's Inception-v3 through torchmetrics) holding the given weights (e.g. those
    of pt_inception-2015-12-05-6726825d.pth, read by read_weights); [0, 1] images of any size, grey ones repeated
    to 3 channels."""

    num_features = 2048

    def __init__(self, state: Dict[str, Tensor], path):
        super().__init__()
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

        if not _TORCH_FIDELITY_AVAILABLE:
            raise ModuleNotFoundError(f"{path} is not DigitFeatures' weights, so it is read as Inception-v3 "
                                      f"weights, which needs torch-fidelity: pip install torch-fidelity (it imports "
                                      f"torchvision: install the torchvision build that matches your torch)")
        from torchmetrics.image.fid import NoTrainInceptionV3

        # torch-fidelity reads the weights with torch.load from a path (without weights_only before torch 2.6):
        # it is given a file written here of the tensors already read safely, never the user's file.
        with tempfile.TemporaryDirectory() as folder:
            checked = Path(folder) / "inception.pt"
            torch.save(state, checked)
            try:
                self.inception = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                                    feature_extractor_weights_path=str(checked))
            except RuntimeError as error:  # load_state_dict: missing, unexpected or mis-shaped weights
                raise ValueError(f"{path} does not hold torch-fidelity's Inception-v3 weights: "
                                 f"{' '.join(str(error).split())[:300]}") from None

    def forward(self, x: Tensor) -> Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.inception((x * 255).byte())


def feature_network_from_file(path: Union[str, Path], image_shape: Tuple[int, ...]) -> nn.Module:
    """The feature network whose weights are saved at `path` (read_weights: a state dict or .safetensors, no code
    run): kale_fast's DigitFeatures (recognised by its tensors' names), else torch-fidelity's Inception-v3 (FID
    proper). image_shape (C, H, W): DigitFeatures' channels must match."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature network {path} not found: give the weights (a state dict saved by "
                                f"torch.save, or .safetensors) of DigitFeatures or of torch-fidelity's Inception-v3 "
                                f"(pt_inception-2015-12-05-6726825d.pth)")
    state = read_weights(path)
    if set(state) == set(_DIGIT_KEYS):
        net = digit_features_from_weights(state, path)
        channels = net.features[0].in_channels
        if channels != image_shape[0]:
            raise ValueError(f"feature network {path} takes {channels}-channel images, the run's have "
                             f"{image_shape[0]}")
        return net
    return InceptionFeatures(state, path)


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
