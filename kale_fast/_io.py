"""Files in and out, safely.

Writes are atomic: a temporary file in the target's folder (created exclusively, never through a link), renamed
over the target, so that a crash never leaves half a file behind (`remove_stale_temporaries` clears what a kill
left behind) and a symbolic link planted at the target is replaced, not followed; the file gets the permissions
of an ordinary write (0666 less the user's umask). A full disk or an unwritable folder ends the write with one
line that says so (DiskFullError, PermissionError), the target keeping its previous contents.
Reads never run code from the file: checkpoints through torch.load(weights_only=True) (tensors and plain
data only), pickled array files through an unpickler that knows numpy arrays and nothing else.
"""
import contextlib
import errno
import os
import pickle
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch

PathLike = Union[str, os.PathLike]
_TEMPORARY_PREFIX, _TEMPORARY_SUFFIX = "tmp-", ".tmp"


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


class DiskFullError(OSError):
    """A write failed for want of space (ENOSPC) or quota (EDQUOT); what was written before is intact."""

    def __str__(self) -> str:
        return self.strerror  # the message alone: it says what failed, without "[Errno 28]"


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space, over quota


def disk_full(path: PathLike, error: OSError, kept: str) -> DiskFullError:
    """The one-line error of a write to `path` that ran out of space; `kept`: what is intact, in words."""
    return DiskFullError(error.errno, f"no space left on the device to write {path} ({error.strerror}); {kept}. "
                                      f"Free some space and run the command again")


def _unwritable(path: Path, error: OSError) -> PermissionError:
    """A PermissionError (also for a read-only file system) naming the target and its folder, not a temporary
    file's name."""
    return PermissionError(f"cannot write {path}: its folder {path.parent} is not writable ({error.strerror})")


@contextlib.contextmanager
def _ctrl_c_deferred():
    """A Ctrl-C (SIGINT) that arrives inside the block is delivered when it ends: a file write is never cut
    half-way by KeyboardInterrupt (inside torch.save's zip writer one became a RuntimeError with a traceback
    instead of the run's resume hint). Only the main thread receives signals, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            signal.raise_signal(signal.SIGINT)  # to whatever handled it before: KeyboardInterrupt by default


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Write `path` atomically: write(tmp) fills a fresh temporary file (its name ends in .tmp: give writers that
    read the format from the name, e.g. savefig, the format), which is then renamed over path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_TEMPORARY_PREFIX}{path.stem}-",
                                   suffix=_TEMPORARY_SUFFIX)
    except OSError as error:  # PermissionError, or EROFS
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise _unwritable(path, error) from None
        raise
    try:  # mkstemp makes the file 0600; a file written in place would get 0666 less the umask: so does this one
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        with _ctrl_c_deferred():
            write(tmp)
            os.replace(tmp, path)
    except OSError as error:
        if error.errno in DISK_FULL_ERRNOS:
            raise disk_full(path, error, f"{path.name} keeps its previous contents" if path.exists() else
                            "nothing was written") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _KeptWriteError:
    """A binary file for torch.save that keeps the OSError of a failed write: torch's C++ writer reports it as
    a RuntimeError ("[enforce fail at inline_container.cc...]") that does not say the disk is full."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(obj: Any, tmp: str) -> None:
    with open(tmp, "wb") as handle:
        writer = _KeptWriteError(handle)
        try:
            torch.save(obj, writer)
        except (RuntimeError, OSError):
            if writer.error is not None:
                raise writer.error from None
            raise


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    atomic_write(path, lambda tmp: _torch_save(obj, tmp))


def atomic_write_text(text: str, path: PathLike) -> None:
    def write(tmp):
        with open(tmp, "w") as handle:
            handle.write(text)
    atomic_write(path, write)


def links_under(folder: PathLike) -> list:
    """The symbolic links anywhere under `folder` (not followed), as paths relative to it, sorted."""
    folder = Path(folder)
    links = []
    for parent, folders, files in os.walk(folder):  # os.walk does not descend into linked folders
        links += [Path(parent, name) for name in folders + files if os.path.islink(os.path.join(parent, name))]
    return sorted(str(link.relative_to(folder)) for link in links)


def own_folder(path: PathLike, what: str) -> Path:
    """`path` as a folder that kale_fast writes files into (created if missing), refused with a ValueError naming it
    (`what`: e.g. "the TensorBoard folder") when it is a symbolic link or holds one anywhere inside: whatever is
    written there by name then lands in it, never through a link planted to redirect it."""
    path = Path(path)
    if path.is_symlink():
        raise ValueError(f"{what} {path} is a symbolic link; kale_fast writes only into a folder of its own, never "
                         f"through a link: remove it")
    path.mkdir(parents=True, exist_ok=True)
    links = links_under(path)
    if links:
        raise ValueError(f"{what} {path} holds symbolic links ({', '.join(links[:5])}); kale_fast writes only plain "
                         f"files there, never through a link: remove them")
    return path


def remove_stale_temporaries(folder: PathLike) -> list:
    """Delete the temporary files of interrupted atomic writes in `folder`; returns their paths. Call it only
    while no other process writes there (a run folder under its lock)."""
    stale = sorted(Path(folder).glob(f"{_TEMPORARY_PREFIX}*{_TEMPORARY_SUFFIX}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def read_utf8(path: PathLike, what: str) -> str:
    """A text file's contents (a leading byte-order mark dropped); a file that is not UTF-8 is a ValueError naming
    the line and the byte (`what`: e.g. "config file")."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{what} {path} is not UTF-8 text: byte {data[error.start]:#04x} at line {line} (save it "
                         f"as UTF-8)") from None


def load_torch_file(path: PathLike, map_location=None) -> Any:
    """torch.load of a file that must hold tensors and plain Python data only (dicts, lists, tuples, numbers,
    strings): anything else is refused with a ValueError before it can run (weights_only=True), and so is a
    file that torch.load cannot read (text, truncated, not written by torch.save), in one line."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except OSError:  # missing, unreadable, a folder: the file system's own error names the path
        raise
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            raise ValueError(
                f"{path} holds Python objects other than tensors and plain data, which kale_fast refuses to load "
                f"(loading them could run code from the file). Files written by kale_fast hold none: this one was "
                f"written by something else or altered. Details: {_first_line(error, 'Unsupported global')}") from None
        raise _not_torch_file(path, error) from None
    except Exception as error:  # torch reports a damaged or foreign file by KeyError, EOFError, RuntimeError, ...
        raise _not_torch_file(path, error) from None


def _first_line(error: BaseException, prefer: str = "") -> str:
    """The error's first sentence (or its line holding `prefer`): torch's messages run to paragraphs."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    line = next((line for line in lines if prefer and prefer in line), lines[0] if lines else type(error).__name__)
    return line.split(". ")[0]


def _not_torch_file(path: PathLike, error: BaseException) -> ValueError:
    return ValueError(f"{path} is not a file written by torch.save, or it is damaged (truncated, edited): "
                      f"torch.load failed with {type(error).__name__}: {_first_line(error)}")


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
