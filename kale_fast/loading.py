"""kf.load_gebm: a trained GEBM from a GEBM.save file or a run folder of `kale-fast train`, without running code
from the file. This module sits above models and train (it imports both), so that neither imports the other."""
from pathlib import Path
from typing import Optional

from torch import nn

from kale_fast._io import PathLike
from kale_fast.models.gebm import SavedGEBM, gebm_from_saved, read_gebm_file


def load_gebm(path: PathLike, base: Optional[nn.Module] = None, energy: Optional[nn.Module] = None,
              device: Optional[str] = None) -> SavedGEBM:
    """A trained GEBM and its learned log-partition A, as `SavedGEBM(gebm, log_partition)`; gebm in eval mode, A
    attached to it (gebm.known_log_partition), so that gebm.log_prob(x) needs no second argument.

    path: a file written by `GEBM.save`, or a run folder of `kale-fast train` (read by kale_fast.train.load_run:
      its best validated state where it has one, else its last checkpoint).
    base, energy: for a GEBM of networks of your own, modules of the same architecture (freshly constructed);
      the saved weights are loaded into them. Leave both out for kale_fast's own networks: a GEBM built by the
      training loop records its config (GEBM.spec), from which they are rebuilt.
    device: where the GEBM goes ("cpu", "cuda", ...); default: cpu for a file, the run's device for a folder.

    The file holds tensors and plain data only and is read with torch.load(weights_only=True): loading it runs
    no code, and a file holding anything else is refused with a ValueError.
    """
    if (base is None) != (energy is None):
        raise ValueError("pass both base and energy (networks of your own), or neither (kale_fast's networks, "
                         "rebuilt from the file's spec)")
    if Path(path).is_dir():
        if base is not None:
            raise ValueError(f"{path} is a run folder: its networks are rebuilt from its config; base and energy "
                             f"are for files of GEBM.save")
        from kale_fast.train.checkpoints import load_run

        run = load_run(Path(path), device)
        run.gebm.known_log_partition = run.log_partition
        return SavedGEBM(run.gebm, run.log_partition)
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such file or run folder")
    saved = read_gebm_file(path, device or "cpu")
    if base is None:
        base, energy = _networks_from_spec(saved, path, device or "cpu")
    gebm = gebm_from_saved(saved, base, energy, path)
    gebm.known_log_partition = saved["log_partition"]
    return SavedGEBM(gebm, saved["log_partition"])


def _networks_from_spec(saved: dict, path: PathLike, device: str):
    """kale_fast's own base and energy, rebuilt as the training loop built them (GEBM.spec of build_gebm), once
    the spec is checked against the saved weights (nothing is allocated for a spec that does not fit them)."""
    spec = saved["spec"]
    if not isinstance(spec, dict) or "config" not in spec or "data_shape" not in spec:
        raise ValueError(f"{path} holds a GEBM of networks of your own (no kale_fast spec was recorded): pass "
                         f"base= and energy=, modules of the same architecture, to load_gebm")
    from kale_fast.models.build import build_gebm_for_weights
    from kale_fast.train.config import TrainConfig

    if not isinstance(spec["config"], dict):
        raise ValueError(f"{path}: its spec's config is not a mapping of config keys")
    # The model section's keys (a spec written before the config had sections holds every key: the others are
    # read, checked and left unused)
    model = TrainConfig.from_dict({**spec["config"], "device": device}).model
    rebuilt = build_gebm_for_weights(model, spec["data_shape"], saved["state"], path)
    return rebuilt.base, rebuilt.energy
