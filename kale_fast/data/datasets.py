"""The data set a training config names, as train/validation/test tensors (the one entry point of train, eval and
sample to data). `data` is the config's data section, read by attribute only (kale_fast.train.config.DataConfig,
or anything with its keys), so that data never imports train."""
from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from kale_fast.data.images import IMAGE_DATASETS, load_cifar10, load_digits, load_mnist5k
from kale_fast.data.splits import DKEF_SEED
from kale_fast.data.tabular import UCI_FILES, data_dir, load_tabular, table_path
from kale_fast.data.toy import TOY_DATASETS, toy_dataset


class DataSplits(NamedTuple):
    train: Tensor
    validation: Optional[Tensor]  # toys and tabular data
    test: Tensor                  # held out for evaluation


def load_images(data) -> Tuple[Tensor, Tensor]:
    """(images, labels) of the image data set the data section names."""
    if data.dataset == "cifar10":
        return load_cifar10(data_dir(data.data_dir) / "cifar-10-batches-py")
    return {"digits": load_digits, "mnist5k": load_mnist5k}[data.dataset]()


# The keys that read and preprocess tables.
_TABLE_KEYS = ("columns", "delimiter", "header", "max_correlation", "split", "split_seed", "dequantise", "whiten")


def load_data(data, seed: int) -> DataSplits:
    """The sample tensors of the data set the data section names; `seed` (the run's) draws the toy sets, shuffles
    the images and, unless split_seed is set, splits a table. The keys that read and preprocess tables are refused
    for a toy or image data set (they would change nothing: silently ignored, a user would believe they had)."""
    if data.dataset in TOY_DATASETS or data.dataset in IMAGE_DATASETS:
        given = [key for key in _TABLE_KEYS if getattr(data, key) != getattr(type(data), key, None)]  # vs default
        if given:
            kind = "a toy set (made in code)" if data.dataset in TOY_DATASETS else "an image set"
            raise ValueError(f"config key(s) {given} apply to tables; dataset {data.dataset!r} is {kind}, which "
                             f"they would not change: drop them")
    if data.dataset in IMAGE_DATASETS:  # a fixed-seed shuffle, then the last n_test images are held out
        images, _ = load_images(data)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
        n_test = min(data.n_test, len(images) // 5)
        return DataSplits(images[order[:-n_test]], None, images[order[-n_test:]])
    if data.dataset in TOY_DATASETS:
        return DataSplits(toy_dataset(data.dataset, data.n_train, seed=seed),
                          toy_dataset(data.dataset, data.n_test, seed=seed + 20_000),
                          toy_dataset(data.dataset, data.n_test, seed=seed + 10_000))
    path = table_path(data.dataset, data.data_dir)
    if data.dataset not in UCI_FILES and not path.suffix and not path.exists():  # a name, not a file
        raise ValueError(f"config key 'dataset': {data.dataset!r} is neither a data set of kale_fast (toys: "
                         f"{sorted(TOY_DATASETS)}; tables: {sorted(UCI_FILES)}; images: {sorted(IMAGE_DATASETS)}) "
                         f"nor a file (a .csv/.txt table or a pre-split .npz)")
    split_seed = data.split_seed if data.split_seed is not None else (
        DKEF_SEED if data.split == "dkef" else seed)
    splits = load_tabular(data.dataset, data.data_dir, columns=data.columns, delimiter=data.delimiter,
                          header=data.header, max_correlation=data.max_correlation, split=data.split,
                          split_seed=split_seed, dequantise=data.dequantise, whiten=data.whiten)
    return DataSplits(splits.train, splits.validation, splits.test)
