"""KALE training steps for a GEBM of any base and energy networks (the paper's Algorithm 1), public as
kf.kale_energy_step, kf.kale_base_step and kf.KALETrainer; kale_fast's own loop (train/loop.py) runs these steps.

- Energy step: kf.kale_loss(E(x_real), E(x_base), A) (A None: the Donsker-Varadhan form) plus
  penalty * mean |grad_x E(x_hat)|^2 on the interpolates x_hat = t x_real + (1 - t) x_base, t ~ U(0, 1) per
  sample; real and base batches go through the energy in one forward, the interpolates in a second one (inside
  the concatenated batch the penalty's double backward would run over all 3n rows: measured 1.2x slower per
  step on the paper's 32x32 networks). The optimizer steps the energy's parameters and A.
- Base step: the minibatch KALE estimate's base-dependent part, -log mean exp(-E(B(z))), whose gradient is the
  softmax(-E)-weighted energy gradient; only the base's parameter gradients are computed.
- KALETrainer holds A (started at its Monte-Carlo optimum log mean exp(-E(B(z))) for the initial networks),
  the two Adam optimisers and a generator, and runs either step eagerly or compiled (compile=True:
  train/compiled_steps.py runs each step, its Adam update included, as one compiled graph).
"""
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from kale_fast.models.gebm import GEBM
from kale_fast.ops import kale_loss, log_mean_exp

# Called with the trained parameters once their gradients are in .grad, before the optimizer's step (the loop
# averages them across torchrun processes).
GradientHook = Callable[[Sequence[Tensor]], None]


class EnergyStep(NamedTuple):
    loss: Tensor     # the KALE (or Donsker-Varadhan) loss, 0-dim, detached
    penalty: Tensor  # penalty * mean |grad_x E(x_hat)|^2, 0-dim, detached (0 without a penalty)


def energy_objective(energies: Callable[[Tensor], Tensor], input_gradient: Callable[[Tensor], Tensor],
                     x_real: Tensor, x_base: Tensor, t: Tensor, log_partition: Optional[Tensor], penalty: float,
                     loss_fn: Callable = kale_loss) -> Tuple[Tensor, Tensor]:
    """(loss, penalty term) of the energy step, for any way of evaluating and differentiating the energy:
    energies(x) (B, ...) -> (B,); input_gradient(x) -> dE/dx summed over the batch, differentiable (create_graph);
    t (n, 1, ...) the interpolation weights; loss_fn(e_data, e_base, A) the KALE loss. The eager step and the
    compiled one (compiled_steps.py) both evaluate this one function."""
    n = len(x_real)
    e_data, e_base = energies(torch.cat([x_real, x_base])).split(n)  # one forward for both
    loss = loss_fn(e_data, e_base, log_partition)
    if penalty <= 0:
        return loss, torch.zeros((), dtype=loss.dtype, device=loss.device)
    grad_hat = input_gradient(t * x_real + (1 - t) * x_base)
    return loss, penalty * grad_hat.pow(2).flatten(1).sum(1).mean()


def interpolation_weights(x_real: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """t ~ U(0, 1), one per sample, shaped (n, 1, ...) to broadcast over a sample."""
    return torch.rand(len(x_real), *([1] * (x_real.dim() - 1)), generator=generator, device=x_real.device)


def _check_batches(x_real: Tensor, x_base: Tensor) -> None:
    if not isinstance(x_real, Tensor) or not isinstance(x_base, Tensor):
        raise TypeError(f"x_real and x_base must be tensors, got {type(x_real).__name__} and {type(x_base).__name__}")
    if x_real.shape != x_base.shape:
        raise ValueError(f"x_real and x_base must have the same shape (n, ...): got {tuple(x_real.shape)} and "
                         f"{tuple(x_base.shape)}")


def _energies(energy: nn.Module) -> Callable[[Tensor], Tensor]:
    return lambda x: energy(x).reshape(x.shape[0])


def kale_energy_step(energy: nn.Module, optimizer: torch.optim.Optimizer, x_real: Tensor, x_base: Tensor,
                     log_partition: Optional[Tensor] = None, *, penalty: float = 0.0,
                     generator: Optional[torch.Generator] = None, t: Optional[Tensor] = None,
                     reduce_gradients: Optional[GradientHook] = None) -> EnergyStep:
    """One optimizer step of the energy (and A) on the KALE loss plus the gradient penalty.

    energy: a module x (n, ...) -> energies (n,) or (n, 1).
    optimizer: over the energy's parameters and log_partition (zeroed and stepped here).
    x_real: a data batch (n, ...); x_base: base samples B(z) (n, ...), no gradient needed.
    log_partition: A, a 0-dim trainable tensor; None: the Donsker-Varadhan form (no A).
    penalty: lambda of penalty * mean |grad_x E(x_hat)|^2 on random interpolates x_hat (0: none).
    generator: draws the interpolation weights t (or pass t itself, (n, 1, ...)).
    reduce_gradients: called with the energy's parameters (and A) after the backward, before the step.
    Returns EnergyStep(loss, penalty), detached 0-dim tensors (no host synchronisation)."""
    _check_batches(x_real, x_base)
    if t is None and penalty > 0:
        t = interpolation_weights(x_real, generator)
    energies = _energies(energy)

    def input_gradient(x_hat: Tensor) -> Tensor:
        x_hat = x_hat.detach().requires_grad_(True)
        (grad_hat,) = torch.autograd.grad(energies(x_hat).sum(), x_hat, create_graph=True)
        return grad_hat

    loss, penalty_term = energy_objective(energies, input_gradient, x_real, x_base.detach(), t, log_partition,
                                          penalty)
    optimizer.zero_grad(set_to_none=True)
    (loss + penalty_term).backward()
    if reduce_gradients is not None:
        reduce_gradients([*energy.parameters(), *([] if log_partition is None else [log_partition])])
    optimizer.step()
    return EnergyStep(loss.detach(), penalty_term.detach())


def kale_base_step(base: nn.Module, energy: nn.Module, optimizer: torch.optim.Optimizer, z: Tensor, *,
                   reduce_gradients: Optional[GradientHook] = None) -> Tensor:
    """One optimizer step of the base on -log mean exp(-E(B(z))) (the minibatch KALE estimate's base-dependent
    part); z: latents (n, latent_dim). The energy's parameters get no gradient. optimizer: over the base's
    parameters. Returns the loss, detached, 0-dim."""
    params = [p for p in base.parameters() if p.requires_grad]
    loss = -log_mean_exp(-_energies(energy)(base(z)))
    grads = torch.autograd.grad(loss, params)  # no energy parameter gradients
    for param, grad in zip(params, grads):
        param.grad = grad
    if reduce_gradients is not None:
        reduce_gradients(params)
    optimizer.step()
    return loss.detach()


def adam(params, lr: float, betas: Tuple[float, float], device: torch.device, fused: bool = False):
    """Adam over params: fused where asked (and always on CUDA), else the foreach implementation."""
    options = dict(fused=True) if fused or device.type == "cuda" else dict(foreach=True)
    return torch.optim.Adam(params, lr=lr, betas=betas, **options)


class KALETrainer:
    """KALE training of a GEBM of networks of one's own: A, the two Adam optimisers and the random draws.

    gebm: kf.GEBM(base, energy, latent_dim), any modules (wrap the energy in kf.ClampedEnergy(energy, floor) for
      the authors' clamp E >= floor).
    penalty: lambda of the gradient penalty; objective: "kale" (learned A) or "dv" (Donsker-Varadhan, no A).
    lr_energy (also A's), lr_base, betas: Adam's.
    n_partition_samples: base samples of A's initial value, the Monte-Carlo log mean exp(-E(B(z))).
    generator: draws latents and interpolation weights (default: a CPU/GPU generator seeded with `seed`).
    compile: run each step (gradients and Adam's update) as one torch.compile'd graph; same results as eager
      up to fp32 rounding, given the same draws. Not for batch norm or spectral norm (a ValueError). Fixes glibc's
      malloc thresholds for the whole process (train/heap.py: freed heap stays mapped for the next call;
      KALE_FAST_KEEP_FREED_HEAP=0 or glibc's own MALLOC_*_THRESHOLD_ settings leave malloc alone).
    reduce_gradients: called on the trained parameters before each optimizer step (data-parallel averaging).

    energy_step(x_real) -> {"energy_loss", "penalty"}; base_step(n) -> {"base_loss"}; values are 0-dim tensors.
    """

    def __init__(self, gebm: GEBM, *, penalty: float = 0.1, objective: str = "kale", lr_energy: float = 1e-3,
                 lr_base: float = 1e-3, betas: Tuple[float, float] = (0.5, 0.999), n_partition_samples: int = 10_000,
                 generator: Optional[torch.Generator] = None, seed: int = 0, compile: bool = False,
                 reduce_gradients: Optional[GradientHook] = None):
        if not isinstance(gebm, GEBM):
            raise TypeError(f"gebm must be a kf.GEBM(base, energy, latent_dim), got {type(gebm).__name__}")
        if objective not in ("kale", "dv"):
            raise ValueError(f"objective must be 'kale' or 'dv', got {objective!r}")
        if not penalty >= 0:
            raise ValueError(f"penalty must be >= 0, got {penalty!r}")
        device = gebm._device()
        self.gebm, self.penalty, self.objective, self.reduce_gradients = gebm, float(penalty), objective, \
            reduce_gradients
        self.generator = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
        # A starts at the Monte-Carlo log mean exp(-E(B(z))) of the initial networks, its optimum.
        initial_a, _ = gebm.log_partition(n_partition_samples, generator=self.generator)
        self.log_partition = nn.Parameter(initial_a.to(device))
        # (A stays in the optimiser under "dv", without a gradient: one layout of optimiser state for both)
        self.energy_optimizer = adam([*gebm.energy.parameters(), self.log_partition], lr_energy, betas, device,
                                     fused=compile)
        self.base_optimizer = adam(gebm.base.parameters(), lr_base, betas, device, fused=compile)
        self.compiled = None
        if compile:
            from kale_fast.train.compiled_steps import CompiledSteps
            from kale_fast.train.heap import keep_freed_heap

            self.compiled = CompiledSteps(gebm.base, gebm.energy, self.penalty, objective)
            keep_freed_heap()  # a compiled call's buffers, freed at its end, stay mapped for the next

    def latent(self, n: int) -> Tensor:
        """n latents z ~ N(0, I), (n, latent_dim), from the trainer's generator."""
        dtype = next(self.gebm.base.parameters(), torch.empty(0)).dtype  # fp64 networks get fp64 latents
        return torch.randn(n, self.gebm.latent_dim, generator=self.generator, device=self.log_partition.device,
                           dtype=dtype)

    def energy_step(self, x_real: Tensor) -> Dict[str, Tensor]:
        """One energy step on the data batch x_real (n, ...) against n fresh base samples."""
        z = self.latent(len(x_real))
        a = self.log_partition if self.objective == "kale" else None
        t = interpolation_weights(x_real, self.generator)  # drawn with or without a penalty: one random stream
        if self.compiled is None:
            with torch.no_grad():
                x_base = self.gebm.base(z)
            step = kale_energy_step(self.gebm.energy, self.energy_optimizer, x_real, x_base, a, penalty=self.penalty,
                                    t=t, reduce_gradients=self.reduce_gradients)
        else:  # the base samples are computed inside the compiled step
            step = self.compiled.energy_step(self.energy_optimizer, x_real, z, t, a, self.reduce_gradients)
        return dict(energy_loss=step.loss, penalty=step.penalty)

    def energy_steps(self, draw_batch: Callable[[], Tensor], n: int, steps_per_call: int = 5) -> Dict[str, Tensor]:
        """n energy steps, each on a data batch draw_batch() (n, ...) against fresh base samples; the metrics of
        the last. The same steps and random draws, in the same order, as energy_step(draw_batch()) n times; compiled
        (and without a gradient hook), steps_per_call steps run as one compiled call (one graph per count of
        steps: keep it the same from call to call; a remainder of n gets a graph of its own)."""
        if self.compiled is None or self.reduce_gradients is not None:
            return self._energy_steps_one_by_one(draw_batch, n)
        a = self.log_partition if self.objective == "kale" else None
        metrics = {}
        for first in range(0, n, steps_per_call):
            draws = []
            for _ in range(min(steps_per_call, n - first)):  # eager's order: the batch, then z, then t
                x_real = draw_batch()
                draws.append((x_real, self.latent(len(x_real)), interpolation_weights(x_real, self.generator)))
            x_reals, zs, ts = (torch.stack(column) for column in zip(*draws))
            step = self.compiled.energy_steps(self.energy_optimizer, x_reals, zs, ts, a)
            if step is None:  # an optimizer the graph cannot run: step by step, with the draws already made
                for x_real, z, t in draws:
                    step = self.compiled.energy_step(self.energy_optimizer, x_real, z, t, a, None)
            metrics = dict(energy_loss=step.loss, penalty=step.penalty)
        return metrics

    def _energy_steps_one_by_one(self, draw_batch: Callable[[], Tensor], n: int) -> Dict[str, Tensor]:
        metrics = {}
        for _ in range(n):
            metrics = self.energy_step(draw_batch())
        return metrics

    def base_step(self, n: int) -> Dict[str, Tensor]:
        """One base step on n fresh latents."""
        z = self.latent(n)
        if self.compiled is None:
            loss = kale_base_step(self.gebm.base, self.gebm.energy, self.base_optimizer, z,
                                  reduce_gradients=self.reduce_gradients)
        else:
            loss = self.compiled.base_step(self.base_optimizer, z, self.reduce_gradients)
        return dict(base_loss=loss)
