"""A training run's config: six sections (kale_fast.train.config.sections), built from the flat keys that YAML
files (configs/*.yaml), flags and saved run folders (config.yaml, a checkpoint's "config") hold.

SECTIONS is the one table from flat keys to sections: a key belongs to the section whose dataclass declares it
(KEY_SECTIONS, derived from it). Flat keys in, flat keys out (`to_dict`, `to_yaml`): the files users write and the
run folders of every earlier version read as they did; the code reads sections (`config.model.hidden`), and each
factory takes its section (load_data the data, build_gebm the model, make_sampler the sampling).
"""
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

import yaml

from kale_fast._suggest import did_you_mean
from kale_fast.train.config.sections import (FLOW_BASES, DataConfig, ModelConfig, ObjectiveConfig, OptimiserConfig,
                                             RunConfig, SamplingConfig)
from kale_fast.train.config.yaml_file import read_config_file

SECTIONS = dict(data=DataConfig, model=ModelConfig, objective=ObjectiveConfig, optimiser=OptimiserConfig,
                sampling=SamplingConfig, run=RunConfig)
KEY_SECTIONS = {field.name: section for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)}
# What `faithful: true` sets: the authors' 32x32 networks and procedure (MichaelArbel/GeneralizedEBM).
FAITHFUL_OPTIONS = dict(spectral_norm=True, spectral_norm_head=False, init="xavier", eval_idle_network=True,
                        energy_clamp=-10.0)
# Keys that may differ when a run resumes: where it writes, how long it runs (compiled or not; patience and
# validation_smoothing only say when it stops and which validated state best.pt keeps, never what a round does),
# how it logs and evaluates.
RESUMABLE_CHANGES = {"out_dir", "n_iter", "patience", "validation_smoothing", "log_every", "checkpoint_every",
                     "device", "sampler", "sampler_steps", "step_size", "n_eval", "feature_net", "compile"}


@dataclass(init=False)
class TrainConfig:
    """Every key of a training run, in sections. `TrainConfig(**flat_keys)`: keys left out take their defaults;
    unknown keys, wrong types and bad values are errors naming the key."""
    data: DataConfig
    model: ModelConfig
    objective: ObjectiveConfig
    optimiser: OptimiserConfig
    sampling: SamplingConfig
    run: RunConfig

    def __init__(self, **keys: Any):
        unknown = sorted(set(keys) - set(KEY_SECTIONS))
        if unknown:
            hints = "".join(did_you_mean(name, KEY_SECTIONS).replace(";", f" ({name!r}:", 1).rstrip("?") + "?)"
                            for name in unknown if did_you_mean(name, KEY_SECTIONS))
            raise ValueError(f"unknown config key(s) {unknown}{hints}; every key: kale-fast train --help, or "
                             f"docs/training.md")
        grouped = {section: {} for section in SECTIONS}
        for name, value in keys.items():
            grouped[KEY_SECTIONS[name]][name] = value
        for section, cls in SECTIONS.items():
            setattr(self, section, cls(**grouped[section]))
        self._check_across_sections()

    def _check_across_sections(self) -> None:
        """The rules that tie keys of two sections together; `faithful` sets its keys wherever they live."""
        model, objective, run = self.model, self.objective, self.run
        if model.faithful:
            if model.energy_clamp not in (None, FAITHFUL_OPTIONS["energy_clamp"]):
                raise ValueError(f"config key 'faithful' sets energy_clamp: {FAITHFUL_OPTIONS['energy_clamp']} (the "
                                 f"authors' floor), but energy_clamp is {model.energy_clamp}: drop one of the two")
            for name, value in FAITHFUL_OPTIONS.items():
                setattr(getattr(self, KEY_SECTIONS[name]), name, value)
        if objective.objective == "ml" and (model.base not in FLOW_BASES or objective.energy_only):
            raise ValueError(f"objective 'ml' trains a flow base by maximum likelihood: it needs a base among "
                             f"{FLOW_BASES} and energy_only: false")
        if run.validate_every and model.base not in FLOW_BASES and not objective.energy_only:
            raise ValueError("config key 'validate_every' scores a validation NLL (base: realnvp) or the validation "
                             "KALE of an energy on a frozen base (energy_only: true); a moving base without a density "
                             "has neither")
        if self.optimiser.energy_ema and (not run.validate_every or objective.objective == "ml"):
            raise ValueError("config key 'energy_ema' averages a trained energy, kept in best.pt at its best "
                             "validation: set validate_every, with objective kale or dv")
        if self.optimiser.base_ema and (not run.validate_every or objective.objective != "ml"):
            raise ValueError("config key 'base_ema' averages a flow trained by maximum likelihood, kept in best.pt "
                             "at its best validation: set validate_every, with objective ml")
        if objective.data_noise and objective.objective != "ml":
            raise ValueError("config key 'data_noise' smooths the training batches of a flow trained by maximum "
                             "likelihood: set objective ml (a KALE stage on its base sees clean data)")
        if self.optimiser.ema_warmup and not (self.optimiser.energy_ema or self.optimiser.base_ema):
            raise ValueError("config key 'ema_warmup' warms up energy_ema's or base_ema's average: set one of them")
        if self.optimiser.lr_decay_patience and not run.validate_every:
            raise ValueError("config key 'lr_decay_patience' counts validations: set validate_every too")
        if self.optimiser.lr_decay_patience and run.patience and self.optimiser.lr_decay_patience >= run.patience:
            raise ValueError(f"config key 'lr_decay_patience' ({self.optimiser.lr_decay_patience}) must be below "
                             f"patience ({run.patience}): early stopping would end the run before any decay")

    def __getattr__(self, name: str):
        """Only reached for a missing attribute: a flat key asked of the whole config names its section."""
        if name in KEY_SECTIONS:
            raise AttributeError(f"TrainConfig keeps its keys in sections: {name!r} is config.{KEY_SECTIONS[name]}."
                                 f"{name}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """From a mapping of flat keys (a YAML file's, a saved run's): its keys must be names."""
        not_names = [name for name in values if not isinstance(name, str)]
        if not_names:
            raise ValueError(f"config keys are names (strings), got {not_names[0]!r} ({type(not_names[0]).__name__})")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> "TrainConfig":
        return cls.from_dict({**read_config_file(path), **(overrides or {})})

    def replace(self, **changes: Any) -> "TrainConfig":
        """This config with some flat keys changed, checked again as a whole."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def base_run_dir(self) -> Optional[Path]:
        """The folder of `base_from`: <out_dir>/<base_from> for a run name, the path as given otherwise."""
        if self.model.base_from is None:
            return None
        path = Path(self.model.base_from)
        return Path(self.run.out_dir) / path if len(path.parts) == 1 and path.name not in (".", "..") else path

    def with_data_dim(self, data_dim: int) -> "TrainConfig":
        """This config with latent_dim 'auto' resolved to data_dim (the data's column count): what the run
        records in config.yaml, so that its checkpoint rebuilds without the data."""
        return self.replace(latent_dim=data_dim) if self.model.latent_dim == "auto" else self

    def to_dict(self) -> Dict[str, Any]:
        """The flat keys, section by section: what config.yaml and a checkpoint record."""
        return {name: value for section in SECTIONS for name, value in getattr(self, section).to_dict().items()}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)
