"""Tabular data: the GEBM paper's UCI sets (RedWine, WhiteWine), any delimited text table, and pre-split arrays.

Named data sets are read from a folder given by the caller, else the KALE_FAST_DATA environment variable, else
../shared/data; nothing is downloaded. A relative path to a table of one's own is read from the folder given by
the caller (the config key `data_dir`) when there is one, else from the working directory: an explicit folder is
the user saying where the data are, while the environment default only serves the named sets (so a run's
relative path never changes meaning with the environment).
"""
import csv
import inspect
import os
import zipfile
import re
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from kale_fast._io import read_utf8
from kale_fast.data.splits import TabularSplits, float32_tensor, make_splits

UCI_FILES = {"redwine": "uci/winequality-red.csv", "whitewine": "uci/winequality-white.csv"}
UCI_DROPPED = ("quality",)  # the label column; the paper models the 11 features
NPZ_SPLITS = ("train", "validation", "test")
_DELIMITERS = ",;\t|"  # what csv.Sniffer may choose from: a number's '.', '-' or 'e' is never a delimiter


def data_dir(explicit: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Where data files live: `explicit`, else $KALE_FAST_DATA, else ../shared/data if it exists."""
    if explicit is not None:
        return Path(explicit)
    if os.environ.get("KALE_FAST_DATA"):
        return Path(os.environ["KALE_FAST_DATA"])
    return Path("../shared/data")


def table_path(dataset: str, explicit_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The file of `dataset`: a UCI name in data_dir(explicit_dir), an absolute path as it is, a relative path in
    explicit_dir when given, else in the working directory."""
    if dataset in UCI_FILES:
        return data_dir(explicit_dir) / UCI_FILES[dataset]
    path = Path(dataset)
    return path if path.is_absolute() or explicit_dir is None else Path(explicit_dir) / path


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"data file {path} not found: put it there, or point --data-dir / the KALE_FAST_DATA "
                             f"environment variable at the folder that holds it")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_table(path: Union[str, os.PathLike], columns: Optional[Sequence[Union[str, int]]] = None,
               delimiter: Optional[str] = None, header: Optional[bool] = None, drop: Sequence[str] = ()
               ) -> Tuple[np.ndarray, Tuple[str, ...]]:
    """A numeric delimited text table as float64 (rows, kept columns) and the kept columns' names.

    delimiter: one character; None: csv.Sniffer's choice among , ; tab |. header: whether the first line names the
    columns; None: it does when it holds a cell that is not a number. columns: the columns kept, in this order, by
    header name, 0-based index or range of indices ("3-21": both included; "3:": to the last), as a list or one
    comma-separated string (names need a header); None: all but those named in `drop`. Columns without a
    header are named by their index. Raises FileNotFoundError saying where to put a missing file, ValueError naming
    the row and column of a NaN or non-number, and ValueError / TypeError naming the config key of a bad option."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    if delimiter is not None and (not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise ValueError(f"config key 'delimiter' must be one character (not a quote or line break), got {delimiter!r}")
    text = read_utf8(path, "data file")  # a spreadsheet's byte-order mark is not part of a name
    if not text.strip():
        raise ValueError(f"{path} is empty: expected rows of numbers (and possibly a header line)")
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:65536], delimiters=_DELIMITERS).delimiter
        except csv.Error:  # a single column, or no consistent delimiter: one column per line
            delimiter = ","
    numbered = [(line, row) for line, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1) if row]
    rows, lines = [row for _, row in numbered], [line for line, _ in numbered]  # the file's lines, blank ones counted
    if header is None:
        header = not all(_is_number(cell) for cell in rows[0])
    names = [name.strip() for name in rows[0]] if header else [str(i) for i in range(len(rows[0]))]
    body, lines = (rows[1:], lines[1:]) if header else (rows, lines)
    if not body:
        raise ValueError(f"{path} holds a header line and no rows of numbers")
    keep = _column_indices(names, columns, header, drop)
    bad_width = next((i for i, row in enumerate(body) if len(row) != len(names)), None)
    if bad_width is not None:
        raise ValueError(f"{path}: line {lines[bad_width]} holds {len(body[bad_width])} fields, the first "
                         f"line {len(names)} (delimiter {delimiter!r}; set the config key 'delimiter' if that is "
                         f"not the file's)")
    try:
        values = np.array([[float(row[i]) for i in keep] for row in body], dtype=np.float64)
    except ValueError:
        row, column = next((r, i) for r, cells in enumerate(body) for i in keep if not _is_number(cells[i]))
        cell = body[row][column]
        raise ValueError(f"{path}: line {lines[row]}, column {names[column]!r}: {cell!r} is not a number"
                         f"{' (an empty field)' if not cell.strip() else ''}; every field of the kept columns must "
                         f"be one (leave the column out with the config key 'columns', --columns; or check the config "
                         f"keys 'delimiter', here {delimiter!r}, and 'header', here {header})") from None
    if not np.isfinite(values).all():
        row, column = np.argwhere(~np.isfinite(values))[0]
        raise ValueError(f"{path}: line {lines[row]}, column {names[keep[column]]!r} is NaN or infinite")
    return values, tuple(names[i] for i in keep)


_RANGE = re.compile(r"^(\d+)\s*(?:-\s*(\d+)|([-:]))$")  # "3-21" (both included), "3:" or "3-" (to the last)


def parse_columns(text: str) -> List[Union[str, int]]:
    """`columns` written as one string (the CLI flag, or a YAML string): comma-separated items, an item of digits
    a 0-based index, any other a header name or a range ("3-21", "3:"; read_table resolves those)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"config key 'columns' must name at least one column, got {text!r}")
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise ValueError(f"config key 'columns': {text!r} holds an empty item (two commas in a row, or a trailing "
                         f"comma)")
    return [int(item) if item.isdigit() else item for item in items]


def _column_range(item: str, names: List[str]) -> Optional[List[int]]:
    """The indices of a range item ("3-21": 3 to 21, both included; "3:" or "3-": 3 to the last), None when the
    item is not a range."""
    match = _RANGE.match(item.strip())
    if match is None:
        return None
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else len(names) - 1
    if not first <= last < len(names):
        raise ValueError(f"config key 'columns': range {item!r} must run from a first to a last 0-based index "
                         f"(both included, first <= last) within the table's {len(names)} columns (0 to "
                         f"{len(names) - 1})")
    return list(range(first, last + 1))


def _column_indices(names: List[str], columns, header: bool, drop: Sequence[str]) -> List[int]:
    if columns is None:
        return [i for i, name in enumerate(names) if name not in drop]
    if isinstance(columns, str):
        columns = parse_columns(columns)
    if not isinstance(columns, (list, tuple)) or not columns:
        raise TypeError(f"config key 'columns' must be a non-empty list of column names, 0-based indices or ranges "
                        f"('3-21', '3:'), got {columns!r}")
    indices = []
    for column in columns:
        if isinstance(column, int) and not isinstance(column, bool):
            if not 0 <= column < len(names):
                raise ValueError(f"config key 'columns': index {column} is outside the table's {len(names)} "
                                 f"columns (counted from 0)")
            indices.append(column)
        elif isinstance(column, str):
            if header and column in names:  # a name first: a header may name a column "3-5"
                same = [i for i, name in enumerate(names) if name == column]
                if len(same) > 1:
                    raise ValueError(f"config key 'columns': the header names {len(same)} columns {column!r} (0-based "
                                     f"indices {same}): give the index of the one you mean")
                indices.append(names.index(column))
                continue
            in_range = _column_range(column, names)
            if in_range is not None:
                indices.extend(in_range)
            elif not header:
                raise ValueError(f"config key 'columns': {column!r} is a name, but the table has no header line; "
                                 f"give 0-based indices or ranges ('3-21', '3:'), or header: true")
            else:
                raise ValueError(f"config key 'columns': no column named {column!r} (nor a range such as '3-21' or "
                                 f"'3:'); the header names {names}")
        else:
            raise TypeError(f"config key 'columns' holds {column!r} ({type(column).__name__}): expected a column "
                            f"name or range (str) or 0-based index (int)")
    if len(set(indices)) != len(indices):
        raise ValueError(f"config key 'columns' names a column twice: {list(columns)}")
    return indices


def read_npz_arrays(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> dict:
    """The arrays `keys` (and those of `optional` present) of a .npz archive, read without pickles: a file that
    is not a .npz, lacks a key or holds Python objects is a ValueError naming it."""
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .npz archive (a zip of .npy arrays, as numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise ValueError(f"{path} lacks the array(s) {missing}: it must hold {list(keys)}; it holds "
                                 f"{sorted(archive.files)}")
            return {key: archive[key] for key in (*keys, *(k for k in optional if k in archive.files))}
    except ValueError as error:
        if "pickle" in str(error) or "Object arrays" in str(error):
            raise ValueError(f"{path} holds arrays of Python objects, which kale_fast does not load (loading them "
                             f"could run code from the file): save arrays of numbers") from None
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise ValueError(f"{path} is a damaged .npz archive ({type(error).__name__}: {error})") from None


def read_npz(path: Union[str, os.PathLike]) -> TabularSplits:
    """Pre-split arrays, taken as they are: a .npz with float arrays 'train', 'validation' and 'test' of shape
    (rows, D) each (the same D), read without pickles. Nothing is shuffled, dequantised or whitened."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path)
    arrays = read_npz_arrays(path, NPZ_SPLITS)
    for key, array in arrays.items():
        if array.ndim != 2 or array.shape[1] != arrays["train"].shape[1] or len(array) == 0:
            raise ValueError(f"{path}: every array must be (rows >= 1, D) with the train array's D; {key!r} is "
                             f"{array.shape}, 'train' {arrays['train'].shape}")
        if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array) or not np.isfinite(array).all():
            raise ValueError(f"{path}: {key!r} must hold finite real numbers (dtype {array.dtype})")
    dim = arrays["train"].shape[1]
    names = tuple(str(i) for i in range(dim))
    train, validation, test = (float32_tensor(arrays[key], names, f"{path}: {key!r}") for key in NPZ_SPLITS)
    return TabularSplits(train, validation, test, torch.zeros(dim), torch.eye(dim), names)


def load_tabular(dataset: str, directory: Optional[Union[str, os.PathLike]] = None, *,
                 columns: Optional[Sequence[Union[str, int]]] = None, delimiter: Optional[str] = None,
                 header: Optional[bool] = None, max_correlation: Optional[float] = None, split: str = "random",
                 split_seed: int = 0, dequantise: bool = True, whiten: bool = True) -> TabularSplits:
    """`dataset` ('redwine', 'whitewine', a delimited text file or a pre-split .npz; the file found by table_path)
    read and preprocessed (kale_fast.data.splits.make_splits). A .npz is taken as it is: it refuses the reading
    and preprocessing options other than at their defaults."""
    path = table_path(dataset, directory)
    if path.suffix == ".npz":
        given = dict(columns=columns, delimiter=delimiter, header=header, max_correlation=max_correlation,
                     split=split, dequantise=dequantise, whiten=whiten)
        defaults = inspect.signature(load_tabular).parameters
        changed = [key for key, value in given.items() if value != defaults[key].default]
        if changed:
            raise ValueError(f"config key(s) {changed} do not apply to {path}: a .npz holds its splits as they are "
                             f"(nothing is selected, shuffled, dequantised or whitened)")
        return read_npz(path)
    values, names = read_table(path, columns, delimiter, header, UCI_DROPPED if dataset in UCI_FILES else ())
    return make_splits(values, names, split, split_seed, dequantise, whiten, max_correlation)
