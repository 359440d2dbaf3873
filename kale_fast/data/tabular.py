"""Tabular data: the GEBM paper's UCI sets (RedWine, WhiteWine) with its preprocessing, and any user CSV.

Files are read from a directory given by the caller, else the KALE_FAST_DATA environment variable, else
../shared/data when it exists; nothing is downloaded.
"""
import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

UCI_FILES = {"redwine": "uci/winequality-red.csv", "whitewine": "uci/winequality-white.csv"}


def data_dir(explicit: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Where data files live: `explicit`, else $KALE_FAST_DATA, else ../shared/data if it exists."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("KALE_FAST_DATA"):
        return Path(os.environ["KALE_FAST_DATA"])
    return Path("../shared/data")


def read_csv(path: Union[str, os.PathLike], n_columns: Optional[int] = None, drop: tuple = ()) -> np.ndarray:
    """A numeric CSV with one header line as float64 (rows, columns), without the columns named in `drop`.
    Raises FileNotFoundError saying where to put a missing file, ValueError on NaN, non-numbers or a wrong
    number of columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found: put it there, or point --data-dir / the "
                                f"KALE_FAST_DATA environment variable at the folder that holds it")
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise ValueError(f"{path} is empty: expected a header line, then rows of numbers")
    header, body = rows[0], [r for r in rows[1:] if r]
    if not body:
        raise ValueError(f"{path} holds a header line and no rows of numbers")
    keep = [i for i, name in enumerate(header) if name not in drop]
    if n_columns is not None and len(keep) != n_columns:
        raise ValueError(f"{path}: expected {n_columns} columns after dropping {list(drop)}, found {len(keep)}")
    try:
        values = np.array([[float(r[i]) for i in keep] for r in body], dtype=np.float64)
    except (ValueError, IndexError) as error:
        raise ValueError(f"{path}: every row must hold {len(header)} numbers ({error})") from error
    if not np.isfinite(values).all():
        bad = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"{path}: row {bad[0] + 2}, column {header[keep[bad[1]]]!r} is NaN or infinite")
    return values


_MIN_ROWS = 12  # 1 test row (10%), 1 validation row (10% of the rest), 10 training rows


@dataclass
class TabularSplits:
    """Whitened train/validation/test splits (float32) and the affine map x_white = (x - mean) @ transform."""
    train: Tensor
    validation: Tensor
    test: Tensor
    mean: Tensor
    transform: Tensor


def preprocess_uci(values: np.ndarray, seed: int = 0) -> TabularSplits:
    """The paper's preprocessing (DKEF line of work): dequantise each column with uniform noise of the width of
    its median gap between distinct sorted values; shuffle with a fixed seed; test = last 10%, validation =
    min(10% of the rest, 1000), train = the rest; whiten with the SVD of the first 10^4 training rows."""
    if values.ndim != 2 or len(values) < _MIN_ROWS:
        raise ValueError(f"tabular data need at least {_MIN_ROWS} rows (10% test, 10% of the rest validation, at "
                         f"least one each, and training rows), got an array of shape {values.shape}")
    constant = [i for i, column in enumerate(values.T) if np.ptp(column) == 0]
    if constant:
        raise ValueError(f"column(s) {constant} (counted from 0, after dropped columns) hold a single value: a "
                         f"constant column cannot be whitened; drop it")
    rng = np.random.RandomState(seed)
    gaps = np.array([np.median(np.diff(np.unique(column))) if len(np.unique(column)) > 1 else 0.0
                     for column in values.T])
    values = values + rng.uniform(size=values.shape) * gaps
    values = values[rng.permutation(len(values))]
    n_test = int(0.1 * len(values))
    rest, test = values[:-n_test], values[-n_test:]
    n_validation = min(int(0.1 * len(rest)), 1000)
    train, validation = rest[:-n_validation], rest[-n_validation:]
    head = train[:10_000]
    mean = head.mean(0)
    _, singular, vt = np.linalg.svd(head - mean, full_matrices=False)
    if len(head) <= values.shape[1] or singular.min() <= 1e-10 * singular.max():
        raise ValueError(f"the {len(head)} training rows do not span the {values.shape[1]} columns (too few rows, or "
                         f"columns that are linear combinations of others): the data cannot be whitened")
    transform = vt.T / singular * np.sqrt(len(head) - 1)  # unit covariance on the head rows

    def whiten(x):
        return torch.from_numpy((x - mean) @ transform).float()

    return TabularSplits(whiten(train), whiten(validation), whiten(test), torch.from_numpy(mean).float(),
                         torch.from_numpy(transform).float())


def load_uci(name: str, directory: Optional[Union[str, os.PathLike]] = None, seed: int = 0) -> TabularSplits:
    """RedWine or WhiteWine (11 features, `quality` dropped), preprocessed as in the paper."""
    if name not in UCI_FILES:
        raise ValueError(f"unknown UCI data set {name!r}; choose one of {sorted(UCI_FILES)}")
    return preprocess_uci(read_csv(data_dir(directory) / UCI_FILES[name], n_columns=11, drop=("quality",)), seed)
