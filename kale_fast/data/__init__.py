"""Data sets and loaders; nothing is downloaded at run time."""
from kale_fast.data.datasets import DataSplits, load_data, load_images
from kale_fast.data.fingerprint import data_hash
from kale_fast.data.splits import TabularSplits, drop_correlated, make_splits
from kale_fast.data.tabular import data_dir, load_tabular, read_npz, read_table
from kale_fast.data.toy import TOY_DATASETS, toy_dataset

__all__ = ["DataSplits", "TOY_DATASETS", "TabularSplits", "data_dir", "data_hash", "drop_correlated", "load_data",
           "load_images", "load_tabular", "make_splits", "read_npz", "read_table", "toy_dataset"]
