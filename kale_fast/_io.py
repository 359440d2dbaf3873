"""Atomic file writes: a temporary file in the target's folder, renamed over the target, so that a crash
never leaves half a checkpoint or summary behind."""
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, os.PathLike]


def _atomic(path: PathLike, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"tmp-{path.stem}-", suffix=".tmp")
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
