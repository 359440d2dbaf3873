"""A run folder <out_dir>/<name>, owned by one training process at a time.

The folder is created with one mkdir (atomic; a second process's mkdir of the same name just finds it), then
locked with fcntl.flock on its `.lock` file for the training's lifetime: a second writer is refused while the
first lives, and the lock dies with its process (the kernel releases it, whatever killed the process), so a
dead writer never blocks the folder. Under the lock, temporary files of atomic writes that a kill interrupted
are deleted, and the folder's state decides what `train` does (`prepare`). Nothing is written through a link:
the lock and the metrics log are opened with O_NOFOLLOW (`open_plain_file`), every other file is written
atomically (a fresh file renamed over the name), and a folder holding symbolic links anywhere (its TensorBoard
folder included) is refused.
"""
import errno
import fcntl
import os
import shutil
import socket
import stat
import sys
from pathlib import Path

from kale_fast._io import links_under, remove_stale_temporaries

CHECKPOINT, BEST, CONFIG, METRICS, SUMMARY = "checkpoint.pt", "best.pt", "config.yaml", "metrics.jsonl", "summary.json"
LOCK, TENSORBOARD, TRAINING_PLOT = ".lock", "tensorboard", "training.png"
# What a run leaves behind before its first checkpoint: these are deleted when it starts over.
_BEFORE_FIRST_CHECKPOINT = (CONFIG, METRICS, BEST, TENSORBOARD, TRAINING_PLOT)


def open_plain_file(path: Path, mode: str):
    """open(path, mode) ("a", "a+") of a plain file of the run folder, created if missing, never through a link: a
    symbolic link planted at `path` (O_NOFOLLOW) or a hard link to another file is refused with a ValueError, so
    that no write of the run lands outside its folder."""
    flags = os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_RDWR if "+" in mode else os.O_WRONLY)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; kale_fast writes only plain files in a run folder, never "
                             f"through a link: remove it") from None
        raise
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        os.close(fd)
        raise ValueError(f"{path} is not a plain file of its own (a device, a pipe or a hard link to another "
                         f"file); kale_fast writes only plain files in a run folder: remove it")
    return os.fdopen(fd, mode)


class RunFolderInUse(RuntimeError):
    """Another living process holds the run folder's lock."""


class RunFolderLock:
    """Exclusive ownership of a run folder (created if missing) until `release` or the process's end."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open_plain_file(self.run_dir / LOCK, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            raise RunFolderInUse(f"{self.run_dir} is in use: {holder} is training this run. Wait for it to end, or "
                               f"choose another name") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()


def prepare(run_dir: Path, resume: bool) -> bool:
    """Make a locked run folder ready to train; returns True when training continues its checkpoint.

    - a checkpoint and `resume`: continue it; a checkpoint without `resume`: FileExistsError (never overwrite);
    - no checkpoint, but the files of a run that stopped before its first one: that run is started over
      (its config, metrics and plots are deleted), with a message on stderr, with or without `resume`;
    - any other file in the folder: FileExistsError (it is not a run folder).
    """
    run_dir = Path(run_dir)
    links = links_under(run_dir)
    if links:
        raise ValueError(f"{run_dir} holds symbolic links ({', '.join(links)}); kale_fast writes only plain files "
                         f"in a run folder, never through a link: remove them")
    for stale in remove_stale_temporaries(run_dir):
        print(f"{run_dir}: deleted {stale.name}, left by a write that was interrupted", file=sys.stderr)
    if (run_dir / CHECKPOINT).exists():
        if not resume:
            raise FileExistsError(f"{run_dir} already holds a run: resume it (--resume) or choose another name")
        return True
    present = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK)
    foreign = [name for name in present if name not in _BEFORE_FIRST_CHECKPOINT]
    if foreign:
        raise FileExistsError(f"{run_dir} holds files that are not a run's ({', '.join(foreign)}) and no "
                              f"{CHECKPOINT}: choose another name")
    if present:
        for name in present:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        print(f"{run_dir}: the earlier run stopped before its first checkpoint; starting it over",
              file=sys.stderr)
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint at {run_dir / CHECKPOINT}")
    return False


def remove_unstarted(run_dir: Path) -> None:
    """Delete a run folder that this process created, whose start failed before training began: one that holds
    nothing but the lock and config.yaml. A run that logged metrics keeps them (they tell why it stopped; the next
    start of the run starts it over)."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and all(path.name in (LOCK, CONFIG) for path in run_dir.iterdir()):
        shutil.rmtree(run_dir)
