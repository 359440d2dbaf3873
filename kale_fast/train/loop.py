"""The KALE training loop of the GEBM paper (Algorithm 1), thin and resumable.

Round k: n_iter_d_init (k = 0) or n_iter_d energy steps, then one base step (none with energy_only); the steps
are the public ones of train/steps.py (kf.KALETrainer: the KALE loss plus the gradient penalty, then the base's
-log mean exp(-E(B(z)))), eager or compiled (`compile`).
With objective "ml" a flow base is trained by maximum likelihood alone (the baseline of the tabular results),
and energy_only with base_from trains an energy on a frozen, pre-trained base.
With validate_every, the validation NLL of the flow (ml) or of the GEBM (kale, dv; A by Monte Carlo) is scored
every validate_every rounds, or, without a density (an energy on a frozen non-flow base: the fine-tuning stage),
the validation KALE; the best state goes to best.pt, which load_run prefers, and `patience` validations
without improvement end training early (the literature's protocol for the tabular results).
A run lives in <out_dir>/<name>/: config.yaml, checkpoint.pt (atomic), best.pt, metrics.jsonl, summary.json, plots.
The networks are built in kale_fast.models (build_gebm), the data read in kale_fast.data (load_data), checkpoints
read and checked in train/checkpoints.py, metric lines written by train/metrics_log.py.
"""
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kale_fast._io import atomic_torch_save, atomic_write_text
from kale_fast.data import data_hash, load_data
from kale_fast.models import GEBM, build_gebm
from kale_fast.train import distributed, run_folder
from kale_fast.train.checkpoints import check_resumable, check_same_data, load_run, read_state
from kale_fast.train.config import FLOW_BASES, TrainConfig
from kale_fast.train.metrics_log import MetricsLog
from kale_fast.train.plots import training_curves
from kale_fast.train.progress import stage
from kale_fast.train.run_folder import BEST, CHECKPOINT, CONFIG, METRICS, TRAINING_PLOT
from kale_fast.train.steps import KALETrainer


@dataclass
class Trainer:
    """Models, optimisers and RNG of one run (`steps`, the public KALETrainer, runs the KALE steps); `state_dict`
    holds everything a resume needs."""
    config: TrainConfig
    gebm: GEBM
    steps: KALETrainer
    data_shape: Tuple[int, ...]  # of one sample: the checkpoint rebuilds the networks from it, without the data
    rounds_done: int = 0
    best_validation: float = math.inf  # early stopping: the best validation NLL so far (its state is in best.pt)
    stale_validations: int = 0         # and how many validations since have not improved on it
    smoothed_validation: Optional[float] = None  # the moving average of validation losses (validation_smoothing)
    data_hash: Optional[str] = None    # kale_fast.data.data_hash of the run's splits
    energy_average: Optional[AveragedModel] = None  # energy_ema's moving average of the energy's weights

    @property
    def log_partition(self) -> nn.Parameter:
        return self.steps.log_partition

    @property
    def energy_optimizer(self) -> torch.optim.Optimizer:
        return self.steps.energy_optimizer

    @property
    def base_optimizer(self) -> torch.optim.Optimizer:
        return self.steps.base_optimizer

    @property
    def generator(self) -> torch.Generator:
        return self.steps.generator

    @property
    def stopped_early(self) -> bool:
        return 0 < self.config.patience <= self.stale_validations

    @classmethod
    def create(cls, config: TrainConfig, train_data: Tensor, data_hash: Optional[str] = None) -> "Trainer":
        """data_hash: the fingerprint of the run's splits; a base_from run trained on other data is refused."""
        torch.manual_seed(config.seed)
        device = torch.device(config.device)
        gebm = build_gebm(config, tuple(train_data.shape[1:])).to(device)
        if config.base_from is not None:
            base_run = load_run(config.base_run_dir(), config.device)
            check_same_data(base_run.data_hash, data_hash, f"base_from run {config.base_run_dir()}")
            check_same_base(base_run.config, config)
            gebm.base.load_state_dict(base_run.gebm.base.state_dict())
        if config.eval_idle_network:  # the authors estimate the initial A in eval mode (running batch-norm statistics)
            gebm.eval()
        steps = KALETrainer(gebm, penalty=config.penalty, objective="dv" if config.objective == "dv" else "kale",
                            lr_energy=config.lr_energy, lr_base=config.lr_base, betas=(config.beta1, config.beta2),
                            n_partition_samples=config.n_partition_samples,
                            generator=torch.Generator(device=device).manual_seed(config.seed + 1),
                            compile=config.compile, reduce_gradients=distributed.average_gradients)
        distributed.broadcast_parameters([*gebm.parameters(), steps.log_partition])
        rank, _ = distributed.rank_and_size()
        if rank:  # each process draws its own batches
            steps.generator.manual_seed(config.seed + 1 + 7919 * rank)
        # use_buffers: the average carries the energy's buffers too (spectral norm's power-iteration vectors)
        average = AveragedModel(gebm.energy, multi_avg_fn=get_ema_multi_avg_fn(config.energy_ema),
                                use_buffers=True) if config.energy_ema else None
        return cls(config, gebm, steps, tuple(train_data.shape[1:]), data_hash=data_hash, energy_average=average)

    def state_dict(self) -> dict:
        """Collective under torchrun: the RNG states of every process are gathered."""
        rng = distributed.gather_objects((self.generator.get_state().cpu(), torch.get_rng_state()))
        return dict(config=self.config.to_dict(), data_shape=self.data_shape, data_hash=self.data_hash,
                    rounds_done=self.rounds_done,
                    best_validation=self.best_validation, stale_validations=self.stale_validations,
                    smoothed_validation=self.smoothed_validation,
                    gebm=self.gebm.state_dict(),
                    log_partition=self.log_partition.detach().clone(),
                    energy_optimizer=self.energy_optimizer.state_dict(),
                    base_optimizer=self.base_optimizer.state_dict(), rng=rng,
                    **({"energy_average": self.energy_average.state_dict()} if self.energy_average else {}))

    def scored_state_dict(self) -> dict:
        """The GEBM's weights that validation scores and best.pt keeps: with energy_ema, the averaged energy's."""
        state = self.gebm.state_dict()
        if self.energy_average is not None:
            state.update({f"energy.{key}": value.detach().clone()
                          for key, value in self.energy_average.module.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.gebm.load_state_dict(state["gebm"])
        with torch.no_grad():
            self.log_partition.copy_(state["log_partition"])
        self.energy_optimizer.load_state_dict(state["energy_optimizer"])
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        if self.energy_average is not None:
            self.energy_average.load_state_dict(state["energy_average"])
        rank, size = distributed.rank_and_size()
        if len(state["rng"]) != size:
            raise ValueError(f"the checkpoint was written by {len(state['rng'])} process(es); resume it with as "
                             f"many, not {size}")
        generator_state, torch_state = state["rng"][rank]
        self.generator.set_state(generator_state)
        torch.set_rng_state(torch_state)
        self.rounds_done = state["rounds_done"]
        # (checkpoints written before early stopping existed lack these two)
        self.best_validation = state.get("best_validation", math.inf)
        self.stale_validations = state.get("stale_validations", 0)
        self.smoothed_validation = state.get("smoothed_validation")

    # --- the two steps: KALETrainer's, with the batch drawn and the idle network's mode set here ------------

    def energy_step(self, train_data: Tensor) -> Dict[str, Tensor]:
        if self.config.eval_idle_network:
            self.gebm.base.eval()
            self.gebm.energy.train()
        index = torch.randint(0, len(train_data), (self.config.batch_size,), generator=self.generator,
                              device=train_data.device)
        metrics = self.steps.energy_step(train_data[index])
        if self.energy_average is not None:
            self.energy_average.update_parameters(self.gebm.energy)
        return metrics

    def base_step(self, train_data: Tensor) -> Dict[str, Tensor]:
        if self.config.eval_idle_network:
            self.gebm.base.train()
            self.gebm.energy.eval()
        if self.config.objective != "ml":
            return self.steps.base_step(self.config.batch_size)
        # the baseline: maximum likelihood of the flow alone
        index = torch.randint(0, len(train_data), (self.config.batch_size,), generator=self.generator,
                              device=train_data.device)
        loss = -self.gebm.base.log_prob(train_data[index]).mean()
        self.base_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.gebm.base.parameters())
        self.base_optimizer.step()
        return dict(base_loss=loss.detach())

    def round(self, train_data: Tensor) -> Dict[str, float]:
        """One round: the energy steps (none for maximum likelihood), then a base step (unless energy_only)."""
        config = self.config
        n_energy = config.n_iter_d_init if self.rounds_done == 0 and config.n_iter_d_init else config.n_iter_d
        metrics = {}
        for _ in range(0 if config.objective == "ml" else n_energy):
            metrics = self.energy_step(train_data)
        if not config.energy_only:
            metrics.update(self.base_step(train_data))
        self.rounds_done += 1
        metrics["log_partition"] = self.log_partition.detach()
        return metrics

    @property
    def validation_key(self) -> str:
        """What validation scores: 'validation_nll' (nats; lower is better) where the GEBM has a density (a flow
        base), else 'validation_kale' (higher is better) of an energy on a frozen base."""
        return "validation_nll" if self.config.base in FLOW_BASES else "validation_kale"

    @torch.no_grad()
    def validation_score(self, validation_data: Tensor) -> float:
        """The validation split's score, `validation_key`:
        - validation_nll: mean NLL of the flow for "ml", else of the GEBM with A estimated from
          n_partition_samples base samples;
        - validation_kale: the KALE estimate -mean E(x_val) - log mean exp(-E(B(z))) over n_partition_samples base
          samples, the authors' criterion for selecting an energy on a frozen base (larger: the energy explains
          more of the data's difference from the base).
        The base samples come from a fixed seed: common random numbers across validations, training's RNG untouched.
        A flow base scores in eval mode (a batch-norm flow: with its running statistics, the density evaluated).
        """
        base = self.gebm.base
        training = base.training
        if self.validation_key == "validation_nll":
            base.eval()
        try:
            return self._validation_score(validation_data)
        finally:
            base.train(training)

    def _validation_score(self, validation_data: Tensor) -> float:
        if self.config.objective == "ml":
            return -self.gebm.base.log_prob(validation_data).mean().item()
        gebm = self.gebm if self.energy_average is None else GEBM(
            self.gebm.base, self.energy_average.module, self.gebm.latent_dim, self.gebm.spec)
        generator = torch.Generator(device=validation_data.device).manual_seed(self.config.seed + 3)
        if self.validation_key == "validation_kale":
            return gebm.kale(validation_data, self.config.n_partition_samples, generator=generator).item()
        log_partition, _ = gebm.log_partition(self.config.n_partition_samples, generator=generator)
        return -gebm.log_prob(validation_data, log_partition).mean().item()

    def record_validation(self, score: float) -> bool:
        """Update the early-stopping state with a validation score (`validation_key`); True when it is the best so
        far. best_validation holds it as a loss (lower is better): the NLL, or minus the KALE estimate; with
        validation_smoothing a, the moving average a s + (1 - a) loss of the losses so far."""
        loss = score if self.validation_key == "validation_nll" else -score
        if self.smoothed_validation is not None:
            loss = self.config.validation_smoothing * self.smoothed_validation + (
                1 - self.config.validation_smoothing) * loss
        self.smoothed_validation = loss
        if loss < self.best_validation:
            self.best_validation, self.stale_validations = loss, 0
            return True
        self.stale_validations += 1
        return False


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) the run <out_dir>/<name>; returns its folder. Never overwrites another run's files; the
    folder is locked while training (a second process training the same run is refused with a RuntimeError),
    and a run that stopped before its first checkpoint is started over (run_folder.prepare says how each case
    goes). Under torchrun (WORLD_SIZE > 1) the processes train data-parallel and rank 0 owns the folder."""
    distributed.init_from_environment(torch.device(config.device))
    rank, _ = distributed.rank_and_size()
    run_dir = Path(config.out_dir) / config.name
    check_base_run(config)
    config = inherit_flow_keys(config, announce=progress and rank == 0)
    created = rank == 0 and not run_dir.exists()
    lock = run_folder.RunFolderLock(run_dir) if rank == 0 else None
    try:
        resuming = run_folder.prepare(run_dir, resume) if rank == 0 else None
        resuming = distributed.gather_objects(resuming)[0]  # rank 0's verdict, on every process
        _train_in(run_dir, config, resuming, progress)
    except BaseException:
        if created:  # a start that failed before training began leaves no half-made folder behind
            run_folder.remove_unstarted(run_dir)
        raise
    finally:
        if lock is not None:
            lock.release()
    return run_dir


def check_same_base(base_config: TrainConfig, config: TrainConfig) -> None:
    """Refuse a base_from run whose base was built with other keys, naming them (rather than a state-dict error)."""
    flow = ("flow_layers", "flow_hidden")
    shape_keys = {"realnvp": flow + ("flow_batch_norm",), "zuko-maf": flow, "zuko-nsf": flow,
                  "mlp": ("hidden", "depth"), "conv": ("hidden",)}
    keys = ("base", "latent_dim") + shape_keys.get(config.base, ())
    differing = [key for key in keys if getattr(base_config, key) != getattr(config, key)]
    if differing:
        values = ", ".join(f"{key}: {getattr(base_config, key)!r} there, {getattr(config, key)!r} here"
                           for key in differing)
        raise ValueError(f"config key 'base_from': the base run's network was built with other keys ({values}); "
                         f"set them as the base run did")


# The keys that build a flow base, which a base_from run's config supplies where this config leaves them unset
FLOW_NETWORK_KEYS = ("base", "latent_dim", "flow_layers", "flow_hidden", "flow_batch_norm")


def inherit_flow_keys(config: TrainConfig, announce: bool = False) -> TrainConfig:
    """With base_from a run of a flow base: config with each of FLOW_NETWORK_KEYS that it leaves at TrainConfig's
    default set to the base run's value, so that a second stage need not repeat the first's network
    (configs/tabular_kale.yaml names none). A key set here to another value than the base run's is left as it
    is, and check_same_base refuses it. announce: print what was taken."""
    base_dir = config.base_run_dir()
    if base_dir is None or not (base_dir / CHECKPOINT).is_file():
        return config  # no base run: check_base_run and load_run say so
    saved = read_state(base_dir / CHECKPOINT, "cpu")["config"]
    if saved.get("base") not in FLOW_BASES:
        return config
    defaults = TrainConfig()
    taken = {key: saved[key] for key in FLOW_NETWORK_KEYS
             if key in saved and getattr(config, key) == getattr(defaults, key) and saved[key] != getattr(config, key)}
    if not taken:
        return config
    if announce:
        print(f"from the base run {base_dir}: " + " ".join(f"{key}={value}" for key, value in taken.items()))
    return dataclasses.replace(config, **taken)


def check_base_run(config: TrainConfig) -> None:
    """Refuse a base_from that names no run folder, before any folder is made, saying where it was looked for."""
    base_dir = config.base_run_dir()
    if base_dir is not None and not base_dir.is_dir():
        where = (f"the run name {config.base_from!r} is looked up in out_dir {config.out_dir!r}"
                 if base_dir != Path(config.base_from) else "a path is read as given")
        raise FileNotFoundError(f"config key 'base_from': no run folder {base_dir} ({where}): train the base run "
                                f"first, or point --base-from at the run folder of a trained base")


def _train_in(run_dir: Path, config: TrainConfig, resume: bool, progress: bool) -> None:
    rank, size = distributed.rank_and_size()
    checkpoint = run_dir / CHECKPOINT
    splits = load_data(config)
    config = config.with_data_dim(splits.train.shape[1])  # latent_dim 'auto': the data's columns, as loaded
    if config.validate_every and splits.validation is None:
        raise ValueError(f"validate_every needs a data set with a validation split (toys, UCI, CSV); "
                         f"{config.dataset!r} has none")
    train_data = splits.train.to(config.device)
    validation_data = splits.validation.to(config.device) if config.validate_every else None
    trainer = Trainer.create(config, train_data, data_hash(splits))
    if resume:
        state = read_state(checkpoint, config.device)
        check_resumable(state["config"], config)
        check_same_data(state.get("data_hash"), trainer.data_hash, f"checkpoint {checkpoint}")
        try:
            trainer.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:  # torch's words for tampering
            raise ValueError(f"{checkpoint}: its state does not fit this run's networks and optimisers (the file "
                             f"was altered): {type(error).__name__}: {' '.join(str(error).split())[:300]}") from None
    writer = rank == 0
    if writer and not resume:
        atomic_write_text(config.to_yaml(), run_dir / CONFIG)

    def check_finite(done: int) -> None:
        """Stop a diverged run before it logs or saves non-finite numbers. The parameters are replicated, so
        every process reaches the same verdict (no collective needed)."""
        params = [*trainer.gebm.parameters(), trainer.log_partition]
        if not torch.isfinite(torch.stack([p.detach().float().abs().sum() for p in params]).sum()):
            raise FloatingPointError(
                f"training diverged: non-finite parameters after round {done}. {checkpoint} keeps the last state "
                f"saved before (every {config.checkpoint_every} rounds); start a new run with smaller lr_energy / "
                f"lr_base or a larger penalty")

    def save():
        state = trainer.state_dict()  # collective: every process takes part
        if writer:
            atomic_torch_save({**state, "world_size": size}, checkpoint)

    start = time.perf_counter()
    if writer and size > 1:
        print(f"batch_size {config.batch_size} per process: {size} processes, a global batch of "
              f"{config.batch_size * size}")
    log = MetricsLog(run_dir, trainer.rounds_done, announce=progress) if writer else None
    with stage(f"training {config.name}", config.n_iter, progress and writer, initial=trainer.rounds_done) as bar:
        while trainer.rounds_done < config.n_iter and not trainer.stopped_early:
            metrics = trainer.round(train_data)
            done = trainer.rounds_done
            validating = config.validate_every and done % config.validate_every == 0
            if validating:  # every process computes the same number: no collective needed
                score = metrics[trainer.validation_key] = trainer.validation_score(validation_data)
                if trainer.record_validation(score) and writer:
                    atomic_torch_save({"gebm": trainer.scored_state_dict(), "rounds_done": done,
                                       "log_partition": trainer.log_partition.detach().clone(),
                                       trainer.validation_key: score}, run_dir / BEST)
            logging = validating or done % config.log_every == 0 or done == config.n_iter
            saving = done % config.checkpoint_every == 0 or done == config.n_iter or trainer.stopped_early
            if logging or saving:
                check_finite(done)
            if writer and logging:
                values = {k: float(v) for k, v in metrics.items()}  # one host synchronisation per log line
                log.write(done, time.perf_counter() - start, values)
                bar.set_postfix({k: f"{v:.3f}" for k, v in values.items() if k != "penalty"})
            if saving:
                save()
            bar.update(1)
    if log is not None:
        log.close()
    if config.n_iter == 0 or trainer.rounds_done == 0:
        save()
    if writer:
        training_curves(run_dir / METRICS, run_dir / TRAINING_PLOT)
    distributed.check_replicas_agree([*trainer.gebm.parameters(), trainer.log_partition])
