"""Files in and out, safely.

Writes are atomic: a temporary file in the target's folder, renamed over the target, so that a crash never
leaves half a checkpoint or summary behind (and `remove_stale_temporaries` clears what a kill left behind);
the file gets the permissions of an ordinary write (0666 less the user's umask).
Reads never run code from the file: checkpoints through torch.load(weights_only=True) (tensors and plain
data only), pickled array files through an unpickler that knows numpy arrays and nothing else.
"""
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
_TEMPORARY_PREFIX, _TEMPORARY_SUFFIX = "tmp-", ".tmp"


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _atomic(path: PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TEMPORARY_PREFIX}{path.stem}-", suffix=_TEMPORARY_SUFFIX)
    try:  # mkstemp makes the file 0600; a file written in place would get 0666 less the umask: so does this one
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(text: str, path: PathLike) -> None:
    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)
    _atomic(path, write)


def remove_stale_temporaries(folder: PathLike) -> list:
    """Delete the temporary files of interrupted atomic writes in `folder`; returns their paths. Call it only
    while no other process writes there (a run folder under its lock)."""
    stale = sorted(Path(folder).glob(f"{_TEMPORARY_PREFIX}*{_TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_torch_file(path: PathLike, map_location=None) -> Any:
    """torch.load of a file that must hold tensors and plain Python data only (dicts, lists, tuples, numbers,
    strings): anything else is refused with a ValueError before it can run (weights_only=True)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds Python objects other than tensors and plain data, which kale_fast refuses to load "
            f"(loading them could run code from the file). Files written by kale_fast hold none: this one was "
            f"written by something else or altered. Details: {str(error).splitlines()[0]}") from None


def _numpy_core():
    return getattr(np, "_core", None) or getattr(np, "core")  # numpy >= 2 renamed numpy.core to numpy._core


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals that pickled numpy arrays and bytes need; every other global is refused."""

    _ALLOWED = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): lambda: _numpy_core().multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): lambda: _numpy_core().multiarray._reconstruct,
        ("numpy.core.numeric", "_frombuffer"): lambda: _numpy_core().numeric._frombuffer,
        ("numpy._core.numeric", "_frombuffer"): lambda: _numpy_core().numeric._frombuffer,
        ("_codecs", "encode"): lambda: __import__("codecs").encode,  # bytes, as Python 3 pickles them at protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed (numpy arrays only)")
        return self._ALLOWED[(module, name)]()


def load_array_pickle(path: PathLike, encoding: str = "bytes") -> Any:
    """Unpickle a file of numpy arrays and plain data (the format of CIFAR-10's python batches) without running
    code from it: a file that references any other Python global is refused with a ValueError."""
    with open(path, "rb") as handle:
        try:
            return _ArrayUnpickler(handle, encoding=encoding).load()
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path} is not a pickle of numpy arrays and plain data ({error}); kale_fast refuses "
                             f"to load it, as loading it could run code from the file") from None
