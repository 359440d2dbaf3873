"""The config's six sections, each the keys of one part of a run and the rules among them: DataConfig (what is
read, and how it is split and preprocessed), ModelConfig (the networks), ObjectiveConfig (what the energy and base
steps compute, and how many of each), OptimiserConfig (Adam and the batch), SamplingConfig (the evaluation's
samples and their scores), RunConfig (where the run lives, how long, on what, how it is watched).

Each key's `help` is its one description: the CLI's `--help` and docs/training.md are generated from it. A key's
name is the flat name users write in YAML files and flags; kale_fast.train.config.SECTIONS says which section
holds it. Rules that tie keys of two sections together are TrainConfig's.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Union

from kale_fast.data.splits import SPLITS
from kale_fast.data.tabular import parse_columns
from kale_fast.models.init import INITS
from kale_fast.train.config.keys import (Section, at_least, check_seed, finite, in_unit_interval, key,
                                         unavailable_device)

OBJECTIVES = ("kale", "dv", "ml")
BASES = ("mlp", "realnvp", "zuko-maf", "zuko-nsf", "conv", "sngan32")
FLOW_BASES = ("realnvp", "zuko-maf", "zuko-nsf")  # bases with an exact log-density, whose latent space is the data's
SAMPLERS = ("ula", "mala", "hmc", "kinetic_langevin", "chees")
SPLIT_NAMES = tuple(SPLITS)  # "random", "dkef"
_MAX_NAME_BYTES = 255  # a file name's limit on Linux and macOS file systems


@dataclass
class DataConfig(Section):
    """What is read, and how it is split and preprocessed (kale_fast.data.load_data)."""
    dataset: str = key("8gaussians", "a toy set (kale_fast.data.TOY_DATASETS), 'redwine', 'whitewine', the path of "
                       "a table (delimited text; or a .npz of train/validation/test arrays, taken as they are), "
                       "or images: 'digits' (8x8), 'mnist5k' (28x28), 'cifar10' (32x32, read from "
                       "<data_dir>/cifar-10-batches-py)")
    data_dir: Optional[str] = key(None, "folder of the named data sets' files (default: the KALE_FAST_DATA "
                                  "environment variable); when set, a relative table path in `dataset` is read "
                                  "from it")
    # Tables (redwine, whitewine, a delimited text file; a pre-split .npz takes none of these but `dataset`).
    columns: Optional[List[Union[str, int]]] = key(None, "the columns kept, in this order: header names, 0-based "
                                                   "indices and ranges of them ('3-21': both included; '3:': to "
                                                   "the last), a list or one comma-separated string (e.g. "
                                                   "'0,3-21,alcohol'); none: all (redwine/whitewine: all but "
                                                   "quality)")
    delimiter: Optional[str] = key(None, "the field delimiter, one character; none: detected (csv.Sniffer, among , ; "
                                   "tab |)")
    header: Optional[bool] = key(None, "whether the first line names the columns; none: it does when it holds a "
                                 "field that is not a number")
    max_correlation: Optional[float] = key(None, "drop columns until no two have |Pearson r| above this, greedily: "
                                           "the lowest-index column with such a partner first (DKEF's rule; "
                                           "Parkinsons: 0.98); none: keep all")
    split: str = key("random", "'random': the package's split (U(0, gap) dequantisation, whitening fitted on "
                     "training rows); 'dkef': DKEF's loader bit for bit, the split of the published UCI numbers "
                     "(U(-gap, gap), columns permuted, whitening fitted on all rows)", choices=SPLIT_NAMES)
    split_seed: Optional[int] = key(None, "seed of the split's shuffle and noise, apart from the training `seed`; "
                                    "none: 1 with split dkef (DKEF's), `seed` with split random (as before this key)")
    dequantise: bool = key(True, "add uniform noise of each column's median gap between distinct values (DKEF "
                           "dequantises the wines only: set false for its other sets, e.g. Parkinsons)")
    whiten: bool = key(True, "whiten: zero mean, unit covariance, from the SVD of the first 10^4 rows (see split)")
    n_train: int = key(20000, "toy sets: points drawn for training")
    n_test: int = key(2000, "toy sets: points held out for evaluation; images: held-out images (at most 1/5)")

    def __post_init__(self):
        if isinstance(self.columns, str):  # 'a,3-21' in YAML, as on the command line
            self.columns = parse_columns(self.columns)
        super().__post_init__()

    def check(self) -> None:
        if self.max_correlation is not None and not 0 < self.max_correlation < 1:
            raise ValueError(f"config key 'max_correlation' must be in (0, 1) (none: no filter), got "
                             f"{self.max_correlation}")
        at_least(self, 1, ("n_train", "n_test"))
        check_seed("split_seed", self.split_seed)


@dataclass
class ModelConfig(Section):
    """The networks (kale_fast.models.build_gebm) and where the base's weights start."""
    base: str = key("mlp", "'mlp' generator; flows (exact likelihood; latent_dim = data dim): 'realnvp', "
                    "'zuko-maf' / 'zuko-nsf' (zuko's masked autoregressive and neural spline flows, pip install "
                    "'kale-fast[flows]'); 'conv' for images (ConvBase/ConvEnergy of width `hidden`), or 'sngan32': "
                    "the paper's 32x32 networks", choices=BASES)
    latent_dim: Union[int, str] = key(2, "dimension of the base's latent space (the MCMC chains run there); 'auto' "
                                      "(flow bases): the data's column count, after the correlation filter")
    hidden: int = key(128, "MLP width of the energy (and of an MLP base); conv: channel width")
    depth: int = key(3, "hidden layers of each MLP")
    flow_layers: int = key(5, "flow bases: RealNVP's affine couplings (paper: 5), zuko's transforms")
    flow_hidden: int = key(100, "flow bases: hidden width of each coupling (or MADE) network, two hidden layers "
                           "(paper: 100)")
    flow_batch_norm: bool = key(False, "RealNVP: batch normalisation between the couplings (the MAF paper's "
                                "RealNVP; scored and sampled with its running statistics)")
    base_from: Optional[str] = key(None, "the run whose trained base initialises this run's base: a run name "
                                   "(no '/') is the folder <out_dir>/<name>, a path is read as given")
    energy_clamp: Optional[float] = key(None, "clamp E >= this floor (the authors use -10); none: no clamp")
    spectral_norm: bool = key(False, "spectral normalisation of every energy layer (the paper's image setting)")
    # The authors' options below default to kale_fast's original behaviour: a run's saved config rebuilds the same
    # networks (checkpoints without these keys load), and toy/tabular runs stay as recorded in docs/RESULTS.md.
    spectral_norm_head: bool = key(True, "with spectral_norm, normalise the energy's last Linear layer too "
                                   "(kale_fast's original setting); the authors' 32x32 energy leaves it free: "
                                   "false")
    init: str = key("torch", "initial weights of both networks: 'torch' (PyTorch's defaults) or 'xavier' "
                    "(Xavier-uniform, gain 1, on every Linear/Conv/ConvTranspose weight, the authors' 32x32 "
                    "networks)", choices=INITS)
    faithful: bool = key(False, "the authors' 32x32 recipe in one key (for base: sngan32): sets spectral_norm: "
                         "true, spectral_norm_head: false, init: xavier, eval_idle_network: true, energy_clamp: "
                         "-10; an energy_clamp other than -10 is an error. Off by default so that existing "
                         "configs keep their meaning")

    def check(self) -> None:
        if isinstance(self.latent_dim, str) and self.latent_dim != "auto":
            raise ValueError(f"config key 'latent_dim' must be a positive int or 'auto' (flow bases: the data's "
                             f"dimension), got {self.latent_dim!r}")
        if self.latent_dim == "auto" and self.base not in FLOW_BASES:
            raise ValueError(f"config key 'latent_dim': 'auto' is the data's dimension, the latent space of a flow "
                             f"base ({', '.join(FLOW_BASES)}); base {self.base!r} needs a number")
        at_least(self, 1, ("hidden", "flow_layers", "flow_hidden"))
        if isinstance(self.latent_dim, int) and self.latent_dim < 1:
            raise ValueError(f"config key 'latent_dim' must be >= 1 (or 'auto'), got {self.latent_dim}")
        at_least(self, 0, ("depth",))
        finite(self, ("energy_clamp",))


@dataclass
class ObjectiveConfig(Section):
    """What the steps compute (kale_fast.train.KALETrainer) and how many of each a round takes."""
    objective: str = key("kale", "'kale': learned log-partition A; 'dv': Donsker-Varadhan form; 'ml': maximum "
                         "likelihood of a flow base alone (the baseline)", choices=OBJECTIVES)
    energy_only: bool = key(False, "keep the base frozen, train the energy only")
    n_iter_d_init: int = key(100, "energy steps before the first base step (paper: 100)")
    n_iter_d: int = key(5, "energy steps per base step (paper: 5)")
    penalty: float = key(0.1, "lambda of lambda * mean |grad_x E(x_hat)|^2 (paper: 1 images, 0.1 tabular; 0: off)")
    n_partition_samples: int = key(10000, "base samples of the Monte-Carlo A: its initial value and validation "
                                   "NLLs")
    data_noise: float = key(0.0, "objective ml: add Gaussian noise of this standard deviation (in the data's "
                            "units, standardised for tables) to each training batch of the flow, fresh each step "
                            "from the run's generator (0: off); validation and test score clean data")
    eval_idle_network: bool = key(False, "put the network a step does not train in eval mode, as the authors do: "
                                  "the base during energy steps (a batch-norm base then shows the energy the "
                                  "samples it gives when sampling, with running statistics that move only in base "
                                  "steps), the energy during base steps (no spectral-norm power iteration there)")

    def check(self) -> None:
        at_least(self, 1, ("n_iter_d",))
        at_least(self, 0, ("n_iter_d_init",))
        if self.n_partition_samples < 2:
            raise ValueError(f"config key 'n_partition_samples' must be >= 2, got {self.n_partition_samples}")
        finite(self, ("penalty", "data_noise"))
        if self.data_noise < 0:
            raise ValueError(f"config key 'data_noise' must be >= 0 (0: off), got {self.data_noise}")
        if self.penalty < 0:
            raise ValueError(f"config key 'penalty' must be >= 0 (0: no gradient penalty), got {self.penalty}")


@dataclass
class OptimiserConfig(Section):
    """The two Adam optimisers (energy and A; base), the batch of each step, and the energy's weight average."""
    batch_size: int = key(256, "samples per step, per process (under torchrun the global batch is "
                          "batch_size x processes)")
    lr_energy: float = key(1e-4, "Adam learning rate of the energy and of A")
    lr_base: float = key(1e-4, "Adam learning rate of the base")
    beta1: float = key(0.5, "Adam beta1 of both optimisers (paper: 0.5)")
    beta2: float = key(0.999, "Adam beta2 of both optimisers")
    energy_ema: float = key(0.0, "average the energy's weights over training, e = a e + (1 - a) w after every "
                            "energy step, with this a in [0, 1) (0: off; needs validate_every): validation scores "
                            "the average, and best.pt, which evaluation and sampling read, holds it")
    base_ema: float = key(0.0, "objective ml: average the flow's weights and batch-norm statistics over training, "
                          "b = a b + (1 - a) w after every base step, with this a in [0, 1) (0: off; needs "
                          "validate_every): validation scores the average, and best.pt (what base_from, evaluation "
                          "and sampling read) holds it")
    ema_warmup: bool = key(False, "warm up energy_ema's and base_ema's average: its n-th update uses the decay "
                           "min(a, (n + 1) / (n + 10)), so that early on it averages about the last tenth to fifth "
                           "of the steps (a run that converges within a few thousand steps is not held back by its "
                           "first weights) and reaches a after 9 / (1 - a) - 10 updates")
    lr_decay: float = key(1.0, "multiply both Adam learning rates by this factor in (0, 1] each time "
                          "lr_decay_patience validations in a row have not improved on the best (1: constant rates)")
    lr_decay_patience: int = key(0, "validations without improvement before each lr_decay (0: never; needs "
                                 "validate_every; below patience, or patience stops the run first)")

    def check(self) -> None:
        at_least(self, 1, ("batch_size",))
        at_least(self, 0, ("lr_decay_patience",))
        finite(self, ("lr_energy", "lr_base", "beta1", "beta2"))
        for name in ("lr_energy", "lr_base"):
            if not getattr(self, name) > 0:
                raise ValueError(f"config key {name!r} must be > 0, got {getattr(self, name)}")
        in_unit_interval(self, ("beta1", "beta2"))
        in_unit_interval(self, ("energy_ema", "base_ema"), " (0: off)")
        finite(self, ("lr_decay",))
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"config key 'lr_decay' must be in (0, 1] (1: constant rates), got {self.lr_decay}")
        if self.lr_decay != 1 and not self.lr_decay_patience:
            raise ValueError("config key 'lr_decay' applies after lr_decay_patience validations without "
                             "improvement: set lr_decay_patience too")


@dataclass
class SamplingConfig(Section):
    """The evaluation's GEBM samples (kale_fast.train.sampling.make_sampler) and how they are scored."""
    sampler: str = key("mala", "latent sampler of the evaluation samples", choices=SAMPLERS)
    sampler_steps: int = key(100, "MCMC iterations kept per evaluation chain (after sampler_steps // 2 warm-up "
                             "iterations)")
    step_size: float = key(0.05, "initial step size of the sampler (MALA and HMC adapt it during warm-up)")
    n_eval: int = key(2000, "samples compared with held-out data at the end")
    feature_net: Optional[str] = key(None, "images: FID/KID features from this file of weights (a state dict or "
                                     ".safetensors, read without running code) of Inception-v3 (FID proper, needs "
                                     "torch-fidelity) or of DigitFeatures; none: a classifier of the data set's "
                                     "labels trained here, reported as 'fid_like'")

    def check(self) -> None:
        at_least(self, 1, ("sampler_steps", "n_eval"))
        finite(self, ("step_size",))
        if not self.step_size > 0:
            raise ValueError(f"config key 'step_size' must be > 0, got {self.step_size}")


@dataclass
class RunConfig(Section):
    """Where the run lives, how long it trains, on what device, how it is watched (validation, early stopping,
    metric lines, checkpoints), and the seed of all of it."""
    name: str = key("toy", "the run's folder name: the run lives in <out_dir>/<name>")
    out_dir: str = key("runs", "folder that holds the run folders")
    seed: int = key(0, "seed of the networks' initialisation, the batches and the evaluation")
    device: str = key("cpu", "torch device: cpu, cuda, cuda:1, ... (one this machine has)")
    n_iter: int = key(1000, "rounds: base steps (energy_only: rounds of n_iter_d energy steps)")
    compile: bool = key(False, "run each step (gradients and Adam's update) as one torch.compile'd graph (same "
                        "results as eager up to fp32 rounding; compilation takes tens of seconds at the start; "
                        "not with batch norm (conv, sngan32) or spectral_norm)")
    validate_every: int = key(0, "rounds between validations (0: off): the validation NLL with a flow base, else "
                              "the validation KALE of an energy on a frozen base (energy_only); needs a data set "
                              "with a validation split (toys, UCI, CSV); the best state is kept in best.pt")
    patience: int = key(0, "stop after this many validations without improvement (0: never stop early)")
    validation_smoothing: float = key(0.0, "early stopping and best.pt judge an exponential moving average of the "
                                      "validation scores, s = a s + (1 - a) score, with this a in [0, 1) (0: each "
                                      "score as it is): a state is not chosen for one lucky validation")
    log_every: int = key(50, "rounds between metric lines")
    checkpoint_every: int = key(200, "rounds between checkpoints (and one at the end)")

    def check(self) -> None:
        device_problem = unavailable_device(self.device)
        if device_problem:
            raise ValueError(f"config key 'device' (--device): {device_problem}")
        at_least(self, 1, ("log_every", "checkpoint_every"))
        at_least(self, 0, ("n_iter", "validate_every", "patience"))
        check_seed("seed", self.seed)
        in_unit_interval(self, ("validation_smoothing",), " (0: off)")
        if self.patience and not self.validate_every:
            raise ValueError("config key 'patience' counts validations: set validate_every too")
        if not self.name or self.name in (".", "..") or Path(self.name).name != self.name or "\0" in self.name:
            raise ValueError(f"config key 'name' must be a folder name inside out_dir (no '/', not '.' or '..'), "
                             f"got {self.name!r}")
        if len(self.name.encode()) > _MAX_NAME_BYTES:
            raise ValueError(f"config key 'name' must be at most {_MAX_NAME_BYTES} bytes (a folder name), got "
                             f"{len(self.name.encode())} bytes: {self.name[:40]!r}...")
