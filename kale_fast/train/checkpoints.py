"""A run's checkpoints: what a checkpoint and best.pt hold, reading them without running code, the checks before a
resume (same config but for RESUMABLE_CHANGES, same data), and `load_run`, a run's trained GEBM rebuilt from its
folder alone. The Trainer writes what `Trainer.state_dict` returns; this module reads it (evaluate, sample,
kf.load_gebm and base_from read runs here, never through the loop)."""
import warnings
from pathlib import Path
from typing import NamedTuple, Optional

from torch import Tensor

from kale_fast._io import load_torch_file
from kale_fast.models import GEBM
from kale_fast.models.build import build_gebm_for_weights
from kale_fast.train.config import RESUMABLE_CHANGES, TrainConfig
from kale_fast.train.run_folder import BEST, CHECKPOINT

CHECKPOINT_KEYS = ("config", "data_shape", "rounds_done", "gebm", "log_partition", "energy_optimizer",
                   "base_optimizer", "rng")
BEST_KEYS = ("gebm", "rounds_done", "log_partition")


def read_state(path: Path, device: str, keys=CHECKPOINT_KEYS) -> dict:
    """A checkpoint (or best.pt) as tensors and plain data; no code in the file runs (load_torch_file)."""
    state = load_torch_file(path, map_location=device)
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{path} is not a checkpoint of `kale-fast train`: it lacks {missing}")
    return state


def check_resumable(saved: dict, config: TrainConfig) -> None:
    """Refuse to resume a checkpoint whose config (`saved`, a dict) differs from `config` in a key other than
    RESUMABLE_CHANGES."""
    saved = {**TrainConfig().to_dict(), **saved}  # keys added since the checkpoint was written: their defaults
    keys = config.to_dict()
    changed = sorted(k for k, v in keys.items() if k not in RESUMABLE_CHANGES and saved[k] != v)
    if changed:
        differences = ", ".join(f"{k}: {saved[k]!r} -> {keys[k]!r}" for k in changed)
        raise ValueError(f"the checkpoint comes from another config ({differences}); "
                         "start a new run (another name) instead")


def check_same_data(saved_hash: Optional[str], data_hash: Optional[str], what: str) -> None:
    """Refuse a checkpoint (`what`: this run's, its base_from run's, or the run evaluated) whose data hash is not
    data_hash; one written before runs recorded a data hash is accepted with a warning."""
    if data_hash is None:
        return
    if saved_hash is None:
        warnings.warn(f"the {what} records no data hash (written before runs recorded one): cannot check that it "
                      f"was trained on the same data", stacklevel=3)
    elif saved_hash != data_hash:
        raise ValueError(f"the {what} was trained on other data (data hash {saved_hash[:12]}..., these data "
                         f"{data_hash[:12]}...): the data file or a key that reads or preprocesses it (dataset, "
                         f"data_dir, columns, split, split_seed, dequantise, ...) differs")


class TrainedRun(NamedTuple):
    config: TrainConfig
    gebm: GEBM            # the checkpoint's weights, in eval mode
    log_partition: Tensor  # the learned A
    rounds_done: int      # the round of those weights
    data_hash: Optional[str]  # kale_fast.data.data_hash of the data it was trained on (None: an older run)


def load_run(run_dir: Path, device: Optional[str] = None, best: bool = True) -> TrainedRun:
    """The trained GEBM of a run folder, rebuilt from its checkpoints alone (the data are not read): the state of
    best validation (best.pt) where the run validated and `best`, else the last checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).exists():
        raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT}: is it a run folder of `kale-fast train`?")
    state = read_state(run_dir / CHECKPOINT, device or "cpu")
    if best and (run_dir / BEST).exists():
        state.update(read_state(run_dir / BEST, device or "cpu", BEST_KEYS))
    config = TrainConfig.from_dict({**state["config"], **({"device": device} if device else {})})
    gebm = build_gebm_for_weights(config.model, state["data_shape"], state["gebm"], run_dir / CHECKPOINT)
    gebm = gebm.to(config.run.device)
    try:
        gebm.load_state_dict(state["gebm"])
    except RuntimeError as error:  # names or shapes that are not those of the config's networks
        raise ValueError(f"{run_dir / CHECKPOINT}: its weights do not fit the networks its config describes: "
                         f"{' '.join(str(error).split())[:400]}") from None
    return TrainedRun(config, gebm.eval(), state["log_partition"], state["rounds_done"], state.get("data_hash"))
