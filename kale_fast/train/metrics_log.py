"""A run's metric lines: metrics.jsonl, mirrored to TensorBoard when the tensorboard package is installed."""
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Dict, List, Tuple

from kale_fast._io import DISK_FULL_ERRNOS, atomic_write_text, disk_full, own_folder
from kale_fast.train.run_folder import METRICS, TENSORBOARD, open_plain_file


def read_metric_lines(path: Path) -> List[Tuple[str, dict]]:
    """metrics.jsonl as (text, parsed) pairs. A torn last line (a write cut short by a kill or a full disk) is
    dropped with a warning; any other line that is not a metric line is a ValueError naming it."""
    lines = Path(path).read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
    parsed = []
    for number, text in enumerate(lines, 1):
        try:
            line = json.loads(text)
            valid = isinstance(line, dict) and isinstance(line.get("round"), int)
        except ValueError:
            valid = False
        if valid:
            parsed.append((text if text.endswith("\n") else text + "\n", line))
        elif number == len(lines):
            warnings.warn(f"{path}: its last line is torn (a write cut short): dropped ({text[:60]!r})",
                          stacklevel=3)
        else:
            raise ValueError(f"{path}: line {number} is not a metric line of kale_fast (a JSON object with its "
                             f"round): the file was edited or damaged. Move it away to go on; the checkpoint holds "
                             f"all a resume needs")
    return parsed


def _truncated(file, size: int):
    """The append-mode `file` cut back to `size` bytes (what a failed write added removed: cutting needs no
    space) and reopened; a buffered file that failed to flush cannot be written again."""
    fd = os.dup(file.fileno())
    try:
        file.close()
    except OSError:  # closing flushes the failed write's bytes again
        pass
    os.ftruncate(fd, size)
    return os.fdopen(fd, "a")


class MetricsLog:
    """Metric lines of a run: metrics.jsonl, mirrored to TensorBoard (run_dir/tensorboard) when the tensorboard
    package is installed. TensorBoard's writer opens its event file by name, following links: so its folder must
    hold no link (own_folder), and the file's name ends in a random suffix that nothing planted can match. Opened
    at `rounds_done`, it drops lines a crashed run wrote after its last checkpoint, so that a resume leaves each
    round logged once. `announce`: print the TensorBoard command (not when quiet)."""

    def __init__(self, run_dir: Path, rounds_done: int, announce: bool = True):
        path = self.path = run_dir / METRICS
        if path.exists():
            kept = [line for line in read_metric_lines(path) if line[1]["round"] <= rounds_done]
            atomic_write_text("".join(text for text, _ in kept), path)
        self.file = open_plain_file(path, "a")  # never through a link planted at its name
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.board = None
        else:
            board_dir = own_folder(run_dir / TENSORBOARD, "the TensorBoard folder")
            self.board = SummaryWriter(str(board_dir), purge_step=rounds_done + 1,
                                       filename_suffix=f".{secrets.token_hex(8)}")
            if announce:
                print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")

    def write(self, round_done: int, time_s: float, values: Dict[str, float]) -> None:
        """Append one line; a write that fails (a full disk) is undone, so that the file keeps whole lines only."""
        end = self.file.tell()
        try:
            self.file.write(json.dumps(dict(round=round_done, time_s=time_s, **values)) + "\n")
            self.file.flush()
        except OSError as error:
            self.file = _truncated(self.file, end)
            if error.errno in DISK_FULL_ERRNOS:
                raise disk_full(self.path, error, f"its lines before round {round_done} and the last checkpoint "
                                                  f"are intact (--resume continues from it)") from None
            raise
        if self.board is not None:
            for name, value in values.items():
                self.board.add_scalar(name, value, round_done)

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()
