"""Preprocessing of a numeric table into train/validation/test splits: the correlation filter, dequantisation,
whitening, and the two ways of splitting ('random': the package's own; 'dkef': DKEF's loader, bit for bit).

Both splits put the last int(0.1 N) shuffled rows in test and the last min(int(0.1 * rest), 1000) rows of the rest
in validation; they differ in the order of the random draws and in what the whitening is fitted on (see each
function). Values are float64 until the end; the splits come out as float32 tensors.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

MIN_ROWS = 12  # 1 test row (10%), 1 validation row (10% of the rest), 10 training rows
DKEF_SEED = 1  # DKEF's load_data default: the split of the published numbers
WHITENING_ROWS = 10_000  # the whitening is fitted on the first 10^4 rows of its block (the DKEF line of work)


@dataclass
class TabularSplits:
    """Train/validation/test splits (float32, (rows, D)), the names of their D columns in order, and the affine
    map x_split = (x - mean) @ transform from a row of the selected columns (in `columns` order, dequantised)."""
    train: Tensor
    validation: Tensor
    test: Tensor
    mean: Tensor
    transform: Tensor
    columns: Tuple[str, ...]


def drop_correlated(values: np.ndarray, names: Sequence[str], max_correlation: float
                    ) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """Drop columns until no two remaining columns have |Pearson r| > max_correlation over all rows. Greedy, as
    DKEF's `clean_data` (used for Parkinsons, r = 0.98): the first column (lowest index) that has such a partner is
    dropped, the correlations recomputed, and so on; of a correlated group the last column survives. (DKEF takes
    |r| only in its first pass and signed r afterwards; here |r| throughout, so a strongly anti-correlated pair
    counts too.)"""
    names = tuple(names)
    while values.shape[1] > 1:
        correlated = np.abs(np.corrcoef(values.T)) > max_correlation
        np.fill_diagonal(correlated, False)
        partnered = np.flatnonzero(correlated.any(axis=1))
        if len(partnered) == 0:
            break
        values = np.delete(values, partnered[0], axis=1)
        names = names[:partnered[0]] + names[partnered[0] + 1:]
    return values, names


def _median_gaps(values: np.ndarray) -> np.ndarray:
    """Each column's median gap between its distinct sorted values: the width of its quantisation."""
    return np.array([np.median(np.diff(np.unique(column))) for column in values.T])


def _whitening(head: np.ndarray, scale: float) -> np.ndarray:
    """W with head @ W of covariance I (head already centred): V^T / s * scale from the SVD head = U S V^T. Raises
    ValueError where the rows do not span the columns."""
    _, singular, vt = np.linalg.svd(head, full_matrices=False)  # s and V^T as with full matrices, without U (n, n)
    if len(head) <= head.shape[1] or singular.min() <= 1e-10 * singular.max():
        raise ValueError(f"the {len(head)} rows the whitening is fitted on do not span the {head.shape[1]} columns "
                         f"(too few rows, or columns that are linear combinations of others): the data cannot be "
                         f"whitened; drop columns (columns, max_correlation) or set whiten: false")
    return vt.T / singular * scale


def _cut(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) of rows already in their final order."""
    n_test = int(0.1 * len(values))
    rest, test = values[:-n_test], values[-n_test:]
    n_validation = min(int(0.1 * len(rest)), 1000)
    return rest[:-n_validation], rest[-n_validation:], test


def split_random(values: np.ndarray, seed: int, dequantise: bool, whiten: bool
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The package's own split: dequantise each column with U(0, gap) noise; shuffle the rows; cut; whiten with
    the mean and SVD of the first 10^4 training rows (unit covariance with the n - 1 normalisation there). The
    noise is drawn even with dequantise off, so that the rows of each split do not depend on that option.
    Returns (train, validation, test, mean, transform), float64."""
    rng = np.random.RandomState(seed)
    noise = rng.uniform(size=values.shape) * _median_gaps(values)
    values = (values + noise if dequantise else values)[rng.permutation(len(values))]
    train, validation, test = _cut(values)
    dim = values.shape[1]
    mean, transform = np.zeros(dim), np.eye(dim)
    if whiten:
        head = train[:WHITENING_ROWS]
        mean = head.mean(0)
        transform = _whitening(head - mean, np.sqrt(len(head) - 1))
    return (train - mean) @ transform, (validation - mean) @ transform, (test - mean) @ transform, mean, transform


def split_dkef(values: np.ndarray, seed: int, dequantise: bool, whiten: bool
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """DKEF's loader (Wenliang et al. 2019, deep-kexpfam Datasets.RealDataset; the published UCI numbers), bit for
    bit: seed NumPy's legacy generator; shuffle the rows; dequantise column by column with U(-gap, gap) noise;
    permute the columns; centre on the mean of all rows and whiten all rows (test included) with
    W = V^T / s * sqrt(n) from the SVD of the first 10^4 centred rows (n of them); cut. The mean and transform
    returned act on the unpermuted columns. Returns (train, validation, test, mean, transform), float64."""
    rng = np.random.RandomState(seed)  # the stream of np.random.seed(seed) and the np.random functions
    values = values.copy()
    rng.shuffle(values)
    if dequantise:
        n = len(values)
        for column, gap in enumerate(_median_gaps(values)):  # gaps do not depend on the row order
            values[:, column] += (rng.rand(n) * 2 - 1) * gap
    order = rng.permutation(values.shape[1])
    values = values[:, order]
    dim = values.shape[1]
    mean, transform = np.zeros(dim), np.eye(dim)
    if whiten:
        mean = values.mean(0)
        head = (values - mean)[:WHITENING_ROWS]
        transform = _whitening(head, np.sqrt(len(head)))
    values = (values - mean) @ transform
    unpermute = np.argsort(order)  # (x[:, order] - mean) @ W == (x - mean[unpermute]) @ W[unpermute]
    return (*_cut(values), mean[unpermute], transform[unpermute])


SPLITS: Dict[str, Callable] = {"random": split_random, "dkef": split_dkef}


def make_splits(values: np.ndarray, names: Sequence[str], split: str = "random", seed: int = 0,
                dequantise: bool = True, whiten: bool = True, max_correlation: Optional[float] = None
                ) -> TabularSplits:
    """Preprocess a float64 table (rows, columns) named `names`: the correlation filter (max_correlation; None:
    off), then the `split` ('random' or 'dkef') with its `seed`, dequantisation and whitening each on or off.
    Raises ValueError naming the problem: too few rows, a constant column, an unknown split."""
    if split not in SPLITS:
        raise ValueError(f"config key 'split' must be one of {tuple(SPLITS)}, got {split!r}")
    if values.ndim != 2 or len(values) < MIN_ROWS:
        raise ValueError(f"tabular data need at least {MIN_ROWS} rows (10% test, 10% of the rest validation, at "
                         f"least one each, and training rows), got an array of shape {values.shape}")
    constant = [name for name, column in zip(names, values.T) if np.ptp(column) == 0]
    if constant:
        raise ValueError(f"column(s) {constant} hold a single value: a constant column has no density (and cannot "
                         f"be whitened or dequantised); leave it out with the config key 'columns'")
    if max_correlation is not None:
        values, names = drop_correlated(values, names, max_correlation)
    train, validation, test, mean, transform = SPLITS[split](values, seed, dequantise, whiten)

    after = " after whitening" if whiten else " (whiten: false keeps the raw values)"
    return TabularSplits(*(float32_tensor(x, names, f"the {part} split{after}") for part, x in
                           (("train", train), ("validation", validation), ("test", test))),
                         float32_tensor(mean, None, "the whitening mean"),
                         float32_tensor(transform, None, "the whitening transform"), tuple(names))


def float32_tensor(values: np.ndarray, names: Optional[Sequence[str]], what: str) -> Tensor:
    """values as a float32 tensor, the models' precision; a value beyond float32's range (|x| > 3.4e38, where it
    would become infinite) is a ValueError naming `what` and, for a table (rows, columns) named `names`, the
    column."""
    with np.errstate(over="ignore"):  # an overflow is reported below, with its column
        converted = np.ascontiguousarray(values).astype(np.float32)
    overflow = np.isfinite(values) & ~np.isfinite(converted)
    if overflow.any():
        where = np.argwhere(overflow)[0]
        column = f", column {names[where[-1]]!r}" if names is not None and values.ndim == 2 else ""
        raise ValueError(f"{what}{column} holds {values[tuple(where)]:.3g}, beyond float32's range (|x| <= "
                         f"{np.finfo(np.float32).max:.3g}) in which the models compute: rescale the column, or "
                         f"whiten it (whiten: true)")
    return torch.from_numpy(converted)
