"""The data set a training config names, as train/validation/test tensors (the one entry point of train, eval and
sample to data). `config` is read by attribute only (kale_fast.train.TrainConfig, or anything with its data keys),
so that data never imports train."""
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


def load_images(config) -> Tuple[Tensor, Tensor]:
    """(images, labels) of the configured image data set."""
    if config.dataset == "cifar10":
        return load_cifar10(data_dir(config.data_dir) / "cifar-10-batches-py")
    return {"digits": load_digits, "mnist5k": load_mnist5k}[config.dataset]()


# The keys that read and preprocess tables.
_TABLE_KEYS = ("columns", "delimiter", "header", "max_correlation", "split", "split_seed", "dequantise", "whiten")


def load_data(config) -> DataSplits:
    """The configured data set's sample tensors. The keys that read and preprocess tables are refused for a toy or
    image data set (they would change nothing: silently ignored, a user would believe they had)."""
    if config.dataset in TOY_DATASETS or config.dataset in IMAGE_DATASETS:
        given = [key for key in _TABLE_KEYS if getattr(config, key) != getattr(type(config), key, None)]  # vs default
        if given:
            kind = "a toy set (made in code)" if config.dataset in TOY_DATASETS else "an image set"
            raise ValueError(f"config key(s) {given} apply to tables; dataset {config.dataset!r} is {kind}, which "
                             f"they would not change: drop them")
    if config.dataset in IMAGE_DATASETS:  # a fixed-seed shuffle, then the last n_test images are held out
        images, _ = load_images(config)
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
        n_test = min(config.n_test, len(images) // 5)
        return DataSplits(images[order[:-n_test]], None, images[order[-n_test:]])
    if config.dataset in TOY_DATASETS:
        return DataSplits(toy_dataset(config.dataset, config.n_train, seed=config.seed),
                          toy_dataset(config.dataset, config.n_test, seed=config.seed + 20_000),
                          toy_dataset(config.dataset, config.n_test, seed=config.seed + 10_000))
    path = table_path(config.dataset, config.data_dir)
    if config.dataset not in UCI_FILES and not path.suffix and not path.exists():  # a name, not a file
        raise ValueError(f"config key 'dataset': {config.dataset!r} is neither a data set of kale_fast (toys: "
                         f"{sorted(TOY_DATASETS)}; tables: {sorted(UCI_FILES)}; images: {sorted(IMAGE_DATASETS)}) "
                         f"nor a file (a .csv/.txt table or a pre-split .npz)")
    split_seed = config.split_seed if config.split_seed is not None else (
        DKEF_SEED if config.split == "dkef" else config.seed)
    splits = load_tabular(config.dataset, config.data_dir, columns=config.columns, delimiter=config.delimiter,
                          header=config.header, max_correlation=config.max_correlation, split=config.split,
                          split_seed=split_seed, dequantise=config.dequantise, whiten=config.whiten)
    return DataSplits(splits.train, splits.validation, splits.test)
