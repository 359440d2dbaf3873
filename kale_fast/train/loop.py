"""The KALE training loop of the GEBM paper (Algorithm 1), thin and resumable: train() runs the rounds of a Trainer
(train/trainer.py: the networks, optimisers and steps), validating, logging and checkpointing as the run section
says.

With validate_every, the validation NLL of the flow (ml) or of the GEBM (kale, dv; A by Monte Carlo) is scored
every validate_every rounds, or, without a density (an energy on a frozen non-flow base: the fine-tuning stage),
the validation KALE; the best state goes to best.pt, which load_run prefers, and `patience` validations
without improvement end training early (the literature's protocol for the tabular results).
A run lives in <out_dir>/<name>/: config.yaml, checkpoint.pt (atomic), best.pt, metrics.jsonl, summary.json, plots.
The networks are built in kale_fast.models (build_gebm), the data read in kale_fast.data (load_data), checkpoints
read and checked in train/checkpoints.py, metric lines written by train/metrics_log.py.
"""
import time
from pathlib import Path

import torch

from kale_fast._io import atomic_torch_save, atomic_write_text
from kale_fast.data import data_hash, load_data
from kale_fast.train import distributed, run_folder
from kale_fast.train.checkpoints import check_resumable, check_same_data, read_state
from kale_fast.train.config import FLOW_BASES, TrainConfig
from kale_fast.train.metrics_log import MetricsLog
from kale_fast.train.plots import training_curves
from kale_fast.train.progress import stage
from kale_fast.train.run_folder import BEST, CHECKPOINT, CONFIG, METRICS, TRAINING_PLOT
from kale_fast.train.trainer import Trainer


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume) the run <out_dir>/<name>; returns its folder. Never overwrites another run's files; the
    folder is locked while training (a second process training the same run is refused with a RuntimeError),
    and a run that stopped before its first checkpoint is started over (run_folder.prepare says how each case
    goes). Under torchrun (WORLD_SIZE > 1) the processes train data-parallel and rank 0 owns the folder."""
    distributed.init_from_environment(torch.device(config.run.device))
    rank, _ = distributed.rank_and_size()
    run_dir = Path(config.run.out_dir) / config.run.name
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


# The keys that build a flow base, which a base_from run's config supplies where this config leaves them unset
FLOW_NETWORK_KEYS = ("base", "latent_dim", "flow_layers", "flow_hidden", "flow_batch_norm")


def inherit_flow_keys(config: TrainConfig, announce: bool = False) -> TrainConfig:
    """With base_from a run of a flow base: config with each of FLOW_NETWORK_KEYS that it leaves at TrainConfig's
    default set to the base run's value, so that a second stage need not repeat the first's network
    (configs/tabular_kale.yaml names none). A key set here to another value than the base run's is left as it
    is, and check_same_base refuses it. announce: print what was taken."""
    taken = flow_keys_from_base_run(config)
    if not taken:
        return config
    if announce:
        print(f"from the base run {config.base_run_dir()}: " + " ".join(f"{k}={v}" for k, v in taken.items()))
    return config.replace(**taken)


def flow_keys_from_base_run(config: TrainConfig) -> dict:
    """The keys inherit_flow_keys takes from config's base_from run, {key: the base run's value}; {} without a
    trained flow base run (check_base_run and load_run say what is missing)."""
    base_dir = config.base_run_dir()
    if base_dir is None or not (base_dir / CHECKPOINT).is_file():
        return {}
    saved = read_state(base_dir / CHECKPOINT, "cpu")["config"]
    if saved.get("base") not in FLOW_BASES:
        return {}
    keys, defaults = config.to_dict(), TrainConfig().to_dict()
    return {key: saved[key] for key in FLOW_NETWORK_KEYS
            if key in saved and keys[key] == defaults[key] and saved[key] != keys[key]}


def check_base_run(config: TrainConfig) -> None:
    """Refuse a base_from that names no run folder, before any folder is made, saying where it was looked for."""
    base_dir = config.base_run_dir()
    if base_dir is not None and not base_dir.is_dir():
        where = (f"the run name {config.model.base_from!r} is looked up in out_dir {config.run.out_dir!r}"
                 if base_dir != Path(config.model.base_from) else "a path is read as given")
        raise FileNotFoundError(f"config key 'base_from': no run folder {base_dir} ({where}): train the base run "
                                f"first, or point --base-from at the run folder of a trained base")


def _train_in(run_dir: Path, config: TrainConfig, resume: bool, progress: bool) -> None:
    rank, size = distributed.rank_and_size()
    checkpoint = run_dir / CHECKPOINT
    splits = load_data(config.data, config.run.seed)
    config = config.with_data_dim(splits.train.shape[1])  # latent_dim 'auto': the data's columns, as loaded
    run = config.run
    if run.validate_every and splits.validation is None:
        raise ValueError(f"validate_every needs a data set with a validation split (toys, UCI, CSV); "
                         f"{config.data.dataset!r} has none")
    train_data = splits.train.to(run.device)
    validation_data = splits.validation.to(run.device) if run.validate_every else None
    trainer = Trainer.create(config, train_data, data_hash(splits))
    if resume:
        state = read_state(checkpoint, run.device)
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
                f"saved before (every {run.checkpoint_every} rounds); start a new run with smaller lr_energy / "
                f"lr_base or a larger penalty")

    def save():
        state = trainer.state_dict()  # collective: every process takes part
        if writer:
            atomic_torch_save({**state, "world_size": size}, checkpoint)

    start = time.perf_counter()
    if writer and size > 1:
        print(f"batch_size {config.optimiser.batch_size} per process: {size} processes, a global batch of "
              f"{config.optimiser.batch_size * size}")
    log = MetricsLog(run_dir, trainer.rounds_done, announce=progress) if writer else None
    with stage(f"training {run.name}", run.n_iter, progress and writer, initial=trainer.rounds_done) as bar:
        while trainer.rounds_done < run.n_iter and not trainer.stopped_early:
            metrics = trainer.round(train_data)
            done = trainer.rounds_done
            validating = run.validate_every and done % run.validate_every == 0
            if validating:  # every process computes the same number: no collective needed
                score = metrics[trainer.validation_key] = trainer.validation_score(validation_data)
                if trainer.record_validation(score) and writer:
                    atomic_torch_save({"gebm": trainer.scored_state_dict(), "rounds_done": done,
                                       "log_partition": trainer.log_partition.detach().clone(),
                                       trainer.validation_key: score}, run_dir / BEST)
            logging = validating or done % run.log_every == 0 or done == run.n_iter
            saving = done % run.checkpoint_every == 0 or done == run.n_iter or trainer.stopped_early
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
    if run.n_iter == 0 or trainer.rounds_done == 0:
        save()
    if writer:
        training_curves(run_dir / METRICS, run_dir / TRAINING_PLOT)
    distributed.check_replicas_agree([*trainer.gebm.parameters(), trainer.log_partition])
