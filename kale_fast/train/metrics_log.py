"""A run's metric lines: metrics.jsonl, mirrored to TensorBoard when the tensorboard package is installed."""
import json
from pathlib import Path
from typing import Dict

from kale_fast._io import atomic_write_text
from kale_fast.train.run_folder import METRICS


class MetricsLog:
    """Metric lines of a run: metrics.jsonl, mirrored to TensorBoard (run_dir/tensorboard) when the tensorboard
    package is installed. Opened at `rounds_done`, it drops lines a crashed run wrote after its last checkpoint,
    so that a resume leaves each round logged once. `announce`: print the TensorBoard command (not when quiet)."""

    def __init__(self, run_dir: Path, rounds_done: int, announce: bool = True):
        path = run_dir / METRICS
        if path.exists():
            kept = [line for line in path.read_text().splitlines(keepends=True)
                    if json.loads(line)["round"] <= rounds_done]
            atomic_write_text("".join(kept), path)
        self.file = open(path, "a")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self.board = None
        else:
            self.board = SummaryWriter(str(run_dir / "tensorboard"), purge_step=rounds_done + 1)
            if announce:
                print(f"TensorBoard: tensorboard --logdir {run_dir.parent}")

    def write(self, round_done: int, time_s: float, values: Dict[str, float]) -> None:
        self.file.write(json.dumps(dict(round=round_done, time_s=time_s, **values)) + "\n")
        self.file.flush()
        if self.board is not None:
            for name, value in values.items():
                self.board.add_scalar(name, value, round_done)

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()
