"""The state of one training run and its round: networks, optimisers, RNG (Trainer), the KALE steps of the public
KALETrainer with the batch drawn and the idle network's mode set, the maximum-likelihood step of a flow alone, and
validation with early stopping. `state_dict` holds everything a resume needs; train/loop.py runs the rounds.

Round k: n_iter_d_init (k = 0) or n_iter_d energy steps, then one base step (none with energy_only); the steps
are the public ones of train/steps.py (kf.KALETrainer: the KALE loss plus the gradient penalty, then the base's
-log mean exp(-E(B(z)))), eager or compiled (`compile`). With objective "ml" a flow base is trained by maximum
likelihood alone (the baseline of the tabular results); energy_only with base_from trains an energy on a frozen,
pre-trained base.
"""
import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from kale_fast.models import GEBM, build_gebm
from kale_fast.train import distributed
from kale_fast.train.checkpoints import check_same_data, load_run
from kale_fast.train.config import FLOW_BASES, ModelConfig, TrainConfig
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
    base_average: Optional[AveragedModel] = None    # base_ema's moving average of the flow's weights and statistics

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
    def scored_base(self) -> nn.Module:
        """The base that validation scores and best.pt keeps: with base_ema, the averaged one."""
        return self.gebm.base if self.base_average is None else self.base_average.module

    @property
    def stopped_early(self) -> bool:
        return 0 < self.config.run.patience <= self.stale_validations

    @classmethod
    def create(cls, config: TrainConfig, train_data: Tensor, data_hash: Optional[str] = None) -> "Trainer":
        """data_hash: the fingerprint of the run's splits; a base_from run trained on other data is refused."""
        torch.manual_seed(config.run.seed)
        device = torch.device(config.run.device)
        gebm = build_gebm(config.model, tuple(train_data.shape[1:])).to(device)
        if config.model.base_from is not None:
            base_run = load_run(config.base_run_dir(), config.run.device)
            check_same_data(base_run.data_hash, data_hash, f"base_from run {config.base_run_dir()}")
            check_same_base(base_run.config.model, config.model)
            gebm.base.load_state_dict(base_run.gebm.base.state_dict())
        if config.objective.eval_idle_network:  # the authors estimate the first A in eval mode (batch-norm statistics)
            gebm.eval()
        objective, optimiser = config.objective, config.optimiser
        steps = KALETrainer(gebm, penalty=objective.penalty, objective="dv" if objective.objective == "dv" else "kale",
                            lr_energy=optimiser.lr_energy, lr_base=optimiser.lr_base,
                            betas=(optimiser.beta1, optimiser.beta2), n_partition_samples=objective.n_partition_samples,
                            generator=torch.Generator(device=device).manual_seed(config.run.seed + 1),
                            compile=config.run.compile,
                            # (no hook on one process: a compiled step then runs its optimizer inside the graph)
                            reduce_gradients=distributed.average_gradients if distributed.rank_and_size()[1] > 1
                            else None)
        distributed.broadcast_parameters([*gebm.parameters(), steps.log_partition])
        rank, _ = distributed.rank_and_size()
        if rank:  # each process draws its own batches
            steps.generator.manual_seed(config.run.seed + 1 + 7919 * rank)
        return cls(config, gebm, steps, tuple(train_data.shape[1:]), data_hash=data_hash,
                   energy_average=moving_average(gebm.energy, optimiser.energy_ema, optimiser.ema_warmup),
                   base_average=moving_average(gebm.base, optimiser.base_ema, optimiser.ema_warmup))

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
                    **({"energy_average": self.energy_average.state_dict()} if self.energy_average else {}),
                    **({"base_average": self.base_average.state_dict()} if self.base_average else {}))

    def scored_state_dict(self) -> dict:
        """The GEBM's weights that validation scores and best.pt keeps: with energy_ema, the averaged energy's; with
        base_ema, the averaged base's."""
        state = self.gebm.state_dict()
        for name, average in (("energy", self.energy_average), ("base", self.base_average)):
            if average is not None:
                state.update({f"{name}.{key}": value.detach().clone()
                              for key, value in average.module.state_dict().items()})
        return state

    def load_state_dict(self, state: dict) -> None:
        self.gebm.load_state_dict(state["gebm"])
        with torch.no_grad():
            self.log_partition.copy_(state["log_partition"])
        self.energy_optimizer.load_state_dict(state["energy_optimizer"])
        self.base_optimizer.load_state_dict(state["base_optimizer"])
        if self.energy_average is not None:
            self.energy_average.load_state_dict(state["energy_average"])
        if self.base_average is not None:
            self.base_average.load_state_dict(state["base_average"])
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

    def _energy_step_modes(self) -> None:
        if self.config.objective.eval_idle_network:
            self.gebm.base.eval()
            self.gebm.energy.train()

    def energy_step(self, train_data: Tensor) -> Dict[str, Tensor]:
        self._energy_step_modes()
        metrics = self.steps.energy_step(self._batch(train_data))
        if self.energy_average is not None:
            self.energy_average.update_parameters(self.gebm.energy)
        return metrics

    def _batch(self, train_data: Tensor) -> Tensor:
        """A minibatch of batch_size rows drawn with replacement by the run's generator."""
        index = torch.randint(0, len(train_data), (self.config.optimiser.batch_size,), generator=self.generator,
                              device=train_data.device)
        return train_data[index]

    def _noisy_batch(self, train_data: Tensor) -> Tensor:
        """_batch's rows plus data_noise * N(0, I) from the run's generator (data_noise 0: the rows, no draw, so
        that a run without noise consumes the generator as before): maximum likelihood of the data smoothed by a
        Gaussian kernel, the textbook cure for a flow that overfits a small table."""
        batch, std = self._batch(train_data), self.config.objective.data_noise
        if not std:
            return batch
        return batch + std * torch.randn(batch.shape, generator=self.generator, device=batch.device,
                                         dtype=batch.dtype)

    def base_step(self, train_data: Tensor) -> Dict[str, Tensor]:
        if self.config.objective.eval_idle_network:
            self.gebm.base.train()
            self.gebm.energy.eval()
        if self.config.objective.objective != "ml":
            return self.steps.base_step(self.config.optimiser.batch_size)
        # the baseline: maximum likelihood of the flow alone
        loss = -self.gebm.base.log_prob(self._noisy_batch(train_data)).mean()
        self.base_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(self.gebm.base.parameters())
        self.base_optimizer.step()
        if self.base_average is not None:
            self.base_average.update_parameters(self.gebm.base)
        return dict(base_loss=loss.detach())

    def round(self, train_data: Tensor) -> Dict[str, float]:
        """One round: the energy steps (none for maximum likelihood), then a base step (unless energy_only)."""
        objective = self.config.objective
        n_energy = objective.n_iter_d_init if self.rounds_done == 0 and objective.n_iter_d_init else objective.n_iter_d
        metrics = {}
        if objective.objective != "ml":
            if self.energy_average is None:  # the round's steps together (compiled: n_iter_d of them per call)
                self._energy_step_modes()
                metrics = self.steps.energy_steps(lambda: self._batch(train_data), n_energy, objective.n_iter_d)
            else:  # energy_ema: the average follows every step
                for _ in range(n_energy):
                    metrics = self.energy_step(train_data)
        if not objective.energy_only:
            metrics.update(self.base_step(train_data))
        self.rounds_done += 1
        metrics["log_partition"] = self.log_partition.detach()
        return metrics

    @property
    def validation_key(self) -> str:
        """What validation scores: 'validation_nll' (nats; lower is better) where the GEBM has a density (a flow
        base), else 'validation_kale' (higher is better) of an energy on a frozen base."""
        return "validation_nll" if self.config.model.base in FLOW_BASES else "validation_kale"

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
        base = self.scored_base
        training = base.training
        if self.validation_key == "validation_nll":
            base.eval()
        try:
            return self._validation_score(validation_data)
        finally:
            base.train(training)

    def _validation_score(self, validation_data: Tensor) -> float:
        if self.config.objective.objective == "ml":
            return -self.scored_base.log_prob(validation_data).mean().item()
        gebm = self.gebm if self.energy_average is None else GEBM(
            self.gebm.base, self.energy_average.module, self.gebm.latent_dim, self.gebm.spec)
        generator = torch.Generator(device=validation_data.device).manual_seed(self.config.run.seed + 3)
        n_samples = self.config.objective.n_partition_samples
        if self.validation_key == "validation_kale":
            return gebm.kale(validation_data, n_samples, generator=generator).item()
        log_partition, _ = gebm.log_partition(n_samples, generator=generator)
        return -gebm.log_prob(validation_data, log_partition).mean().item()

    def record_validation(self, score: float) -> bool:
        """Update the early-stopping state with a validation score (`validation_key`); True when it is the best so
        far. best_validation holds it as a loss (lower is better): the NLL, or minus the KALE estimate; with
        validation_smoothing a, the moving average a s + (1 - a) loss of the losses so far. With lr_decay_patience
        P, every P-th validation in a row without improvement multiplies both Adam learning rates by lr_decay (the
        optimisers' states, which checkpoints hold, carry the rates: a resume continues them)."""
        loss = score if self.validation_key == "validation_nll" else -score
        if self.smoothed_validation is not None:
            smoothing = self.config.run.validation_smoothing
            loss = smoothing * self.smoothed_validation + (1 - smoothing) * loss
        self.smoothed_validation = loss
        if loss < self.best_validation:
            self.best_validation, self.stale_validations = loss, 0
            return True
        self.stale_validations += 1
        optimiser = self.config.optimiser
        if optimiser.lr_decay_patience and self.stale_validations % optimiser.lr_decay_patience == 0:
            for group in (*self.energy_optimizer.param_groups, *self.base_optimizer.param_groups):
                group["lr"] *= optimiser.lr_decay
        return False


def moving_average(network: nn.Module, decay: float, warmup: bool = False) -> Optional[AveragedModel]:
    """The exponential moving average of network's weights (None for decay 0): the first update copies them, the
    n-th after it sets a = d a + (1 - d) w with d = decay, or with warmup d = min(decay, (n + 1) / (n + 10))
    (TensorFlow's ExponentialMovingAverage with num_updates). The warm-up's early average is polynomial-decay
    averaging (Shamir and Zhang 2013): update k's weight grows like k^8, so the average spans about the last 10-20%
    of the steps and follows a run that converges early, instead of keeping the weight decay^n on its first state;
    d reaches decay after 9 / (1 - decay) - 10 updates (8,990 for 0.999). use_buffers: it carries the buffers too
    (spectral norm's power-iteration vectors, batch norm's running statistics), averaged alike; AveragedModel's
    n_averaged, in its state dict, carries n across a resume."""
    if not decay:
        return None
    if not warmup:
        return AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)

    def warmed_up(averages, weights, n_averaged: Tensor) -> None:
        n = int(n_averaged)  # updates before this one, >= 1 (the first copied)
        get_ema_multi_avg_fn(min(decay, (n + 1) / (n + 10)))(averages, weights, n_averaged)

    return AveragedModel(network, multi_avg_fn=warmed_up, use_buffers=True)


def check_same_base(base_model: ModelConfig, model: ModelConfig) -> None:
    """Refuse a base_from run whose base was built with other keys (`base_model`, its model section), naming them
    (rather than a state-dict error)."""
    flow = ("flow_layers", "flow_hidden")
    shape_keys = {"realnvp": flow + ("flow_batch_norm",), "zuko-maf": flow, "zuko-nsf": flow,
                  "mlp": ("hidden", "depth"), "conv": ("hidden",)}
    keys = ("base", "latent_dim") + shape_keys.get(model.base, ())
    differing = [key for key in keys if getattr(base_model, key) != getattr(model, key)]
    if differing:
        values = ", ".join(f"{key}: {getattr(base_model, key)!r} there, {getattr(model, key)!r} here"
                           for key in differing)
        raise ValueError(f"config key 'base_from': the base run's network was built with other keys ({values}); "
                         f"set them as the base run did")
