"""Training configuration: one dataclass, read from YAML (configs/*.yaml), every field also a CLI flag.

Unknown keys and wrong types are errors that name the key; nothing is coerced silently (an int is accepted
where a float is expected, as YAML writes 1e-4 as a float but 1 as an int).
"""
import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import yaml

from kale_fast._io import read_utf8
from kale_fast._suggest import did_you_mean
from kale_fast.data.splits import SPLITS
from kale_fast.data.tabular import parse_columns
from kale_fast.models.init import INITS

OBJECTIVES = ("kale", "dv", "ml")
BASES = ("mlp", "realnvp", "zuko-maf", "zuko-nsf", "conv", "sngan32")
FLOW_BASES = ("realnvp", "zuko-maf", "zuko-nsf")  # bases with an exact log-density, whose latent space is the data's
SAMPLERS = ("ula", "mala", "hmc", "kinetic_langevin", "chees")
# What `faithful: true` sets: the authors' 32x32 networks and procedure (MichaelArbel/GeneralizedEBM).
FAITHFUL_OPTIONS = dict(spectral_norm=True, spectral_norm_head=False, init="xavier", eval_idle_network=True,
                        energy_clamp=-10.0)
SPLIT_NAMES = tuple(SPLITS)  # "random", "dkef"


def _key(default: Any, help: str, choices: Optional[Tuple[str, ...]] = None):
    """A config field with its one-line description (and allowed values), read by the CLI and the docs."""
    return dataclasses.field(default=default, metadata=dict(help=help, choices=choices))


@dataclass
class TrainConfig:
    """Every key of a training run. Each field's `help` (its metadata) is the one description of the key: the
    CLI's `--help` and docs are generated from it."""
    name: str = _key("toy", "the run's folder name: the run lives in <out_dir>/<name>")
    out_dir: str = _key("runs", "folder that holds the run folders")
    dataset: str = _key("8gaussians", "a toy set (kale_fast.data.TOY_DATASETS), 'redwine', 'whitewine', the path of "
                        "a table (delimited text; or a .npz of train/validation/test arrays, taken as they are), "
                        "or images: 'digits' (8x8), 'mnist5k' (28x28), 'cifar10' (32x32, read from "
                        "<data_dir>/cifar-10-batches-py)")
    data_dir: Optional[str] = _key(None, "folder of the named data sets' files (default: the KALE_FAST_DATA "
                                   "environment variable); when set, a relative table path in `dataset` is read "
                                   "from it")
    # Tables (redwine, whitewine, a delimited text file; a pre-split .npz takes none of these but `dataset`).
    columns: Optional[List[Union[str, int]]] = _key(None, "the columns kept, in this order: header names, 0-based "
                                                    "indices and ranges of them ('3-21': both included; '3:': to "
                                                    "the last), a list or one comma-separated string (e.g. "
                                                    "'0,3-21,alcohol'); none: all (redwine/whitewine: all but "
                                                    "quality)")
    delimiter: Optional[str] = _key(None, "the field delimiter, one character; none: detected (csv.Sniffer, among , ; "
                                    "tab |)")
    header: Optional[bool] = _key(None, "whether the first line names the columns; none: it does when it holds a "
                                  "field that is not a number")
    max_correlation: Optional[float] = _key(None, "drop columns until no two have |Pearson r| above this, greedily: "
                                            "the lowest-index column with such a partner first (DKEF's rule; "
                                            "Parkinsons: 0.98); none: keep all")
    split: str = _key("random", "'random': the package's split (U(0, gap) dequantisation, whitening fitted on "
                      "training rows); 'dkef': DKEF's loader bit for bit, the split of the published UCI numbers "
                      "(U(-gap, gap), columns permuted, whitening fitted on all rows)", choices=SPLIT_NAMES)
    split_seed: Optional[int] = _key(None, "seed of the split's shuffle and noise, apart from the training `seed`; "
                                     "none: 1 with split dkef (DKEF's), `seed` with split random (as before this key)")
    dequantise: bool = _key(True, "add uniform noise of each column's median gap between distinct values (DKEF "
                            "dequantises the wines only: set false for its other sets, e.g. Parkinsons)")
    whiten: bool = _key(True, "whiten: zero mean, unit covariance, from the SVD of the first 10^4 rows (see split)")
    n_train: int = _key(20000, "toy sets: points drawn for training")
    n_test: int = _key(2000, "toy sets: points held out for evaluation; images: held-out images (at most 1/5)")
    base: str = _key("mlp", "'mlp' generator; flows (exact likelihood; latent_dim = data dim): 'realnvp', "
                     "'zuko-maf' / 'zuko-nsf' (zuko's masked autoregressive and neural spline flows, pip install "
                     "'kale-fast[flows]'); 'conv' for images (ConvBase/ConvEnergy of width `hidden`), or 'sngan32': "
                     "the paper's 32x32 networks", choices=BASES)
    latent_dim: Union[int, str] = _key(2, "dimension of the base's latent space (the MCMC chains run there); 'auto' "
                                       "(flow bases): the data's column count, after the correlation filter")
    hidden: int = _key(128, "MLP width of the energy (and of an MLP base); conv: channel width")
    depth: int = _key(3, "hidden layers of each MLP")
    flow_layers: int = _key(5, "flow bases: RealNVP's affine couplings (paper: 5), zuko's transforms")
    flow_hidden: int = _key(100, "flow bases: hidden width of each coupling (or MADE) network, two hidden layers "
                            "(paper: 100)")
    flow_batch_norm: bool = _key(False, "RealNVP: batch normalisation between the couplings (the MAF paper's "
                                 "RealNVP; scored and sampled with its running statistics)")
    base_from: Optional[str] = _key(None, "the run whose trained base initialises this run's base: a run name "
                                    "(no '/') is the folder <out_dir>/<name>, a path is read as given")
    objective: str = _key("kale", "'kale': learned log-partition A; 'dv': Donsker-Varadhan form; 'ml': maximum "
                          "likelihood of a flow base alone (the baseline)", choices=OBJECTIVES)
    n_iter: int = _key(1000, "rounds: base steps (energy_only: rounds of n_iter_d energy steps)")
    n_iter_d_init: int = _key(100, "energy steps before the first base step (paper: 100)")
    n_iter_d: int = _key(5, "energy steps per base step (paper: 5)")
    batch_size: int = _key(256, "samples per step, per process (under torchrun the global batch is "
                           "batch_size x processes)")
    lr_energy: float = _key(1e-4, "Adam learning rate of the energy and of A")
    lr_base: float = _key(1e-4, "Adam learning rate of the base")
    beta1: float = _key(0.5, "Adam beta1 of both optimisers (paper: 0.5)")
    beta2: float = _key(0.999, "Adam beta2 of both optimisers")
    penalty: float = _key(0.1, "lambda of lambda * mean |grad_x E(x_hat)|^2 (paper: 1 images, 0.1 tabular; 0: off)")
    energy_clamp: Optional[float] = _key(None, "clamp E >= this floor (the authors use -10); none: no clamp")
    spectral_norm: bool = _key(False, "spectral normalisation of every energy layer (the paper's image setting)")
    # The authors' options below default to kale_fast's original behaviour: a run's saved config rebuilds the same
    # networks (checkpoints without these keys load), and toy/tabular runs stay as recorded in docs/RESULTS.md.
    spectral_norm_head: bool = _key(True, "with spectral_norm, normalise the energy's last Linear layer too "
                                    "(kale_fast's original setting); the authors' 32x32 energy leaves it free: "
                                    "false")
    init: str = _key("torch", "initial weights of both networks: 'torch' (PyTorch's defaults) or 'xavier' "
                     "(Xavier-uniform, gain 1, on every Linear/Conv/ConvTranspose weight, the authors' 32x32 "
                     "networks)", choices=INITS)
    eval_idle_network: bool = _key(False, "put the network a step does not train in eval mode, as the authors do: "
                                   "the base during energy steps (a batch-norm base then shows the energy the "
                                   "samples it gives when sampling, with running statistics that move only in base "
                                   "steps), the energy during base steps (no spectral-norm power iteration there)")
    faithful: bool = _key(False, "the authors' 32x32 recipe in one key (for base: sngan32): sets spectral_norm: "
                          "true, spectral_norm_head: false, init: xavier, eval_idle_network: true, energy_clamp: "
                          "-10; an energy_clamp other than -10 is an error. Off by default so that existing "
                          "configs keep their meaning")
    n_partition_samples: int = _key(10000, "base samples of the Monte-Carlo A: its initial value and validation "
                                    "NLLs")
    energy_only: bool = _key(False, "keep the base frozen, train the energy only")
    compile: bool = _key(False, "compute each step's gradients in one torch.compile'd graph, with fused Adam (same "
                         "results as eager up to fp32 rounding; compilation takes tens of seconds at the start; "
                         "not with batch norm (conv, sngan32) or spectral_norm)")
    sampler: str = _key("mala", "latent sampler of the evaluation samples", choices=SAMPLERS)
    sampler_steps: int = _key(100, "MCMC iterations kept per evaluation chain (after sampler_steps // 2 warm-up "
                              "iterations)")
    step_size: float = _key(0.05, "initial step size of the sampler (MALA and HMC adapt it during warm-up)")
    n_eval: int = _key(2000, "samples compared with held-out data at the end")
    feature_net: Optional[str] = _key(None, "images: FID/KID features from this file of weights (a state dict or "
                                      ".safetensors, read without running code) of Inception-v3 (FID proper, needs "
                                      "torch-fidelity) or of DigitFeatures; none: a classifier of the data set's "
                                      "labels trained here, reported as 'fid_like'")
    validate_every: int = _key(0, "rounds between validations (0: off): the validation NLL with a flow base, else "
                               "the validation KALE of an energy on a frozen base (energy_only); needs a data set "
                               "with a validation split (toys, UCI, CSV); the best state is kept in best.pt")
    patience: int = _key(0, "stop after this many validations without improvement (0: never stop early)")
    validation_smoothing: float = _key(0.0, "early stopping and best.pt judge an exponential moving average of the "
                                       "validation scores, s = a s + (1 - a) score, with this a in [0, 1) (0: each "
                                       "score as it is): a state is not chosen for one lucky validation")
    energy_ema: float = _key(0.0, "average the energy's weights over training, e = a e + (1 - a) w after every "
                             "energy step, with this a in [0, 1) (0: off; needs validate_every): validation scores "
                             "the average, and best.pt, which evaluation and sampling read, holds it")
    log_every: int = _key(50, "rounds between metric lines")
    checkpoint_every: int = _key(200, "rounds between checkpoints (and one at the end)")
    seed: int = _key(0, "seed of the networks' initialisation, the batches and the evaluation")
    device: str = _key("cpu", "torch device: cpu, cuda, cuda:1, ... (one this machine has)")

    def __post_init__(self):
        if isinstance(self.columns, str):  # 'a,3-21' in YAML, as on the command line
            self.columns = parse_columns(self.columns)
        hints = typing.get_type_hints(TrainConfig)
        for field in dataclasses.fields(self):
            value, choices = getattr(self, field.name), field.metadata["choices"]
            _check_type(field.name, value, hints[field.name])
            if choices is not None and value not in choices:
                raise ValueError(f"config key {field.name!r} must be one of {choices}, got {value!r}"
                                 f"{did_you_mean(value, choices)}")
        device_problem = unavailable_device(self.device)
        if device_problem:
            raise ValueError(f"config key 'device' (--device): {device_problem}")
        if self.faithful:
            if self.energy_clamp not in (None, FAITHFUL_OPTIONS["energy_clamp"]):
                raise ValueError(f"config key 'faithful' sets energy_clamp: {FAITHFUL_OPTIONS['energy_clamp']} (the "
                                 f"authors' floor), but energy_clamp is {self.energy_clamp}: drop one of the two")
            for key, value in FAITHFUL_OPTIONS.items():
                setattr(self, key, value)
        if self.objective == "ml" and (self.base not in FLOW_BASES or self.energy_only):
            raise ValueError(f"objective 'ml' trains a flow base by maximum likelihood: it needs a base among "
                             f"{FLOW_BASES} and energy_only: false")
        if self.max_correlation is not None and not 0 < self.max_correlation < 1:
            raise ValueError(f"config key 'max_correlation' must be in (0, 1) (none: no filter), got "
                             f"{self.max_correlation}")
        if isinstance(self.latent_dim, str) and self.latent_dim != "auto":
            raise ValueError(f"config key 'latent_dim' must be a positive int or 'auto' (flow bases: the data's "
                             f"dimension), got {self.latent_dim!r}")
        if self.latent_dim == "auto" and self.base not in FLOW_BASES:
            raise ValueError(f"config key 'latent_dim': 'auto' is the data's dimension, the latent space of a flow "
                             f"base ({', '.join(FLOW_BASES)}); base {self.base!r} needs a number")
        for key in ("n_train", "n_test", "hidden", "n_iter_d", "batch_size", "n_eval", "log_every",
                    "checkpoint_every", "sampler_steps", "flow_layers", "flow_hidden"):
            if getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be >= 1, got {getattr(self, key)}")
        for key, limit in _SIZE_LIMITS.items():
            if isinstance(getattr(self, key), int) and getattr(self, key) > limit:  # (latent_dim may be "auto")
                raise ValueError(f"config key {key!r} must be <= {limit}, got {getattr(self, key)}")
        for key in ("seed", "split_seed"):
            if getattr(self, key) is not None and getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be an integer from 0 to {_SIZE_LIMITS[key]}, got "
                                 f"{getattr(self, key)}")
        if self.n_partition_samples < 2:
            raise ValueError(f"config key 'n_partition_samples' must be >= 2, got {self.n_partition_samples}")
        if self.validate_every and self.base not in FLOW_BASES and not self.energy_only:
            raise ValueError("config key 'validate_every' scores a validation NLL (base: realnvp) or the validation "
                             "KALE of an energy on a frozen base (energy_only: true); a moving base without a density "
                             "has neither")
        if not 0 <= self.validation_smoothing < 1:
            raise ValueError(f"config key 'validation_smoothing' must be in [0, 1) (0: off), got "
                             f"{self.validation_smoothing}")
        if not 0 <= self.energy_ema < 1:
            raise ValueError(f"config key 'energy_ema' must be in [0, 1) (0: off), got {self.energy_ema}")
        if self.energy_ema and (not self.validate_every or self.objective == "ml"):
            raise ValueError("config key 'energy_ema' averages a trained energy, kept in best.pt at its best "
                             "validation: set validate_every, with objective kale or dv")
        if self.patience and not self.validate_every:
            raise ValueError("config key 'patience' counts validations: set validate_every too")
        if isinstance(self.latent_dim, int) and self.latent_dim < 1:
            raise ValueError(f"config key 'latent_dim' must be >= 1 (or 'auto'), got {self.latent_dim}")
        for key in ("n_iter", "n_iter_d_init", "depth", "validate_every", "patience"):
            if getattr(self, key) < 0:
                raise ValueError(f"config key {key!r} must be >= 0, got {getattr(self, key)}")
        for key in ("lr_energy", "lr_base", "step_size", "beta1", "beta2", "penalty", "energy_clamp"):
            if getattr(self, key) is not None and not math.isfinite(getattr(self, key)):
                raise ValueError(f"config key {key!r} must be a finite number, got {getattr(self, key)}")
        for key in ("lr_energy", "lr_base", "step_size"):
            if not getattr(self, key) > 0:
                raise ValueError(f"config key {key!r} must be > 0, got {getattr(self, key)}")
        if self.penalty < 0:
            raise ValueError(f"config key 'penalty' must be >= 0 (0: no gradient penalty), got {self.penalty}")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                raise ValueError(f"config key {key!r} must be in [0, 1), got {getattr(self, key)}")
        if not self.name or self.name in (".", "..") or Path(self.name).name != self.name or "\0" in self.name:
            raise ValueError(f"config key 'name' must be a folder name inside out_dir (no '/', not '.' or '..'), "
                             f"got {self.name!r}")
        if len(self.name.encode()) > _MAX_NAME_BYTES:
            raise ValueError(f"config key 'name' must be at most {_MAX_NAME_BYTES} bytes (a folder name), got "
                             f"{len(self.name.encode())} bytes: {self.name[:40]!r}...")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        not_names = [key for key in values if not isinstance(key, str)]
        if not_names:
            raise ValueError(f"config keys are names (strings), got {not_names[0]!r} ({type(not_names[0]).__name__})")
        unknown = sorted(set(values) - known)
        if unknown:
            hints = "".join(did_you_mean(key, known).replace(";", f" ({key!r}:", 1).rstrip("?") + "?)"
                            for key in unknown if did_you_mean(key, known))
            raise ValueError(f"unknown config key(s) {unknown}{hints}; every key: kale-fast train --help, or "
                             f"docs/training.md")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], overrides: Optional[Dict[str, Any]] = None) -> "TrainConfig":
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"config file {path} is a folder; expected a YAML file of config keys")
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        if path.stat().st_size > _MAX_CONFIG_BYTES:
            raise ValueError(f"config file {path} has {path.stat().st_size} bytes; a config is a list of keys, "
                             f"at most {_MAX_CONFIG_BYTES} bytes")
        try:
            values = yaml.load(read_utf8(path, "config file"), Loader=_UniqueKeyLoader) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"config file {path} is not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
        return cls.from_dict({**values, **(overrides or {})})

    def base_run_dir(self) -> Optional[Path]:
        """The folder of `base_from`: <out_dir>/<base_from> for a run name, the path as given otherwise."""
        if self.base_from is None:
            return None
        path = Path(self.base_from)
        return Path(self.out_dir) / path if len(path.parts) == 1 and path.name not in (".", "..") else path

    def with_data_dim(self, data_dim: int) -> "TrainConfig":
        """This config with latent_dim 'auto' resolved to data_dim (the data's column count): what the run
        records in config.yaml, so that its checkpoint rebuilds without the data."""
        return dataclasses.replace(self, latent_dim=data_dim) if self.latent_dim == "auto" else self

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


_MAX_CONFIG_BYTES, _MAX_NESTING = 1 << 20, 20
SEED_LIMIT = 2 ** 32 - 1  # NumPy's legacy generator takes seeds up to this
_MAX_NAME_BYTES = 255  # a file name's limit on Linux and macOS file systems
# The most a config may ask for: far above any real run, low enough that a typo (or a crafted saved config) ends
# as an error naming its key, not as an allocation of terabytes; seeds as NumPy's legacy generator takes them.
_SIZE_LIMITS = dict(n_train=10 ** 8, n_test=10 ** 8, latent_dim=1 << 16, hidden=1 << 16, flow_hidden=1 << 16,
                    depth=1024, flow_layers=1024, batch_size=1 << 24, n_eval=10 ** 7, sampler_steps=10 ** 7,
                    n_partition_samples=10 ** 10, seed=SEED_LIMIT, split_seed=SEED_LIMIT)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one silently), and
    anchors and aliases: nested aliases expand exponentially (a "billion laughs" file of a few lines stalls the
    loader), and a config has no use for them. With neither, what is loaded is as large as the file."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ValueError(f"YAML anchors and aliases (&name, *name) are not allowed in a config (line "
                             f"{event.start_mark.line + 1}): write each value out")
        self._depth = getattr(self, "_depth", 0) + 1  # the composer recurses: refuse before Python's stack ends
        try:
            if self._depth > _MAX_NESTING:
                raise ValueError(f"a config nests lists or mappings at most {_MAX_NESTING} deep; this one goes "
                                 f"deeper at line {event.start_mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the SafeLoader's own error names it
            if key in seen:
                raise ValueError(f"config key {key!r} is given twice (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep)


def unavailable_device(text: str) -> Optional[str]:
    """Why the torch device named `text` cannot hold a run on this machine (unparsable, meta, absent), or None
    when it can. Checked before anything is allocated, so that the error names the setting, not a kernel."""
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError) as error:
        return f"{text!r} is not a torch device ({error}); expected cpu, cuda or cuda:<index>"
    if device.type == "meta":
        return "'meta' tensors hold no data, so nothing can be trained or sampled there; expected cpu or cuda"
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return f"{text!r}: this machine has no CUDA GPU that torch can use; use cpu"
        if device.index is not None and device.index >= count:
            return f"{text!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)  # mps, xpu: torch.<type>.is_available() says
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            return f"{text!r}: no {device.type} device is available here; expected cpu or cuda"
    return None


# Keys that may differ when a run resumes: where it writes, how long it runs (compiled or not), how it logs and
# evaluates.
RESUMABLE_CHANGES = {"out_dir", "n_iter", "log_every", "checkpoint_every", "device", "sampler", "sampler_steps",
                     "step_size", "n_eval", "feature_net", "compile"}


def _check_type(name: str, value: Any, expected) -> None:
    if not _has_type(value, expected):
        raise TypeError(f"config key {name!r} must be {_type_name(expected)}, got {value!r} ({type(value).__name__})")


def _has_type(value: Any, expected) -> bool:
    """Strict: bool is not an int, an int is a float (YAML writes 1e-4 as a float but 1 as an int), nothing else."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Union:  # Optional[X], Union[X, Y]
        return any(_has_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(item, args[0]) for item in value)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected in (int, float):
        return isinstance(value, (int, float) if expected is float else int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected) -> str:
    """'int' for int and Optional[int] (None is named in the key's help), 'list of str or int' for
    Optional[List[Union[str, int]]]."""
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin is Union:
        return " or ".join(_type_name(arg) for arg in args if arg is not type(None))
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return expected.__name__
