"""Data sets and loaders; nothing is downloaded at run time."""
from kale_fast.data.tabular import TabularSplits, data_dir, load_uci, preprocess_uci, read_csv
from kale_fast.data.toy import TOY_DATASETS, toy_dataset

__all__ = ["TOY_DATASETS", "TabularSplits", "data_dir", "load_uci", "preprocess_uci", "read_csv", "toy_dataset"]
