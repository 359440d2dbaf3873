"""A faithful reimplementation, for cost comparison, of one training step of the GEBM authors' code
(MichaelArbel/GeneralizedEBM, trainer.py `iteration` and compute.py), written from its algorithm, not copied.
The math is kale_fast.train.Trainer's with `faithful: true` (tests/train/test_authors_train_step.py checks one
energy step and one base step against the Trainer in float64); the cost is theirs:
- energy step (base in eval mode, energy in train mode): real, base and interpolate batches through the energy in
  three separate forwards (so spectral norm runs three power iterations), the penalty's input gradient by
  autograd.grad(create_graph=True), then one backward; Adam;
- base step (base in train mode, energy in eval mode): the energy on a real batch and on base samples, the loss
  -mean(E(x_real) + log mean exp(-E(B(z)))) (their `kale` criterion for the generator, with the minibatch
  log-partition), one `.backward()` with every parameter requiring grad: the energy's parameter gradients of both
  terms are computed and thrown away (the -mean E(x_real) term does not depend on the base).
Left out: their default `grad_clip: 1`, which maps each energy gradient g to 2g / (1 + g^2) before Adam (not in
kale_fast either).
"""
import math
from typing import Optional

import torch
from torch import Tensor, nn


class AuthorsTrainStep:
    """Their energy and base steps over (base, energy, A), with their own Adam optimisers (betas of their
    training config). Latents z and interpolation weights alpha are drawn here unless given (the test gives
    them, to replay the same randomness as the Trainer)."""

    def __init__(self, base: nn.Module, energy: nn.Module, latent_dim: int, penalty: float, lr: float = 1e-4,
                 log_partition: float = 0.0):
        self.base, self.energy, self.latent_dim, self.penalty = base, energy, latent_dim, penalty
        reference = next(energy.parameters())
        self.log_partition = nn.Parameter(torch.full((), log_partition, dtype=reference.dtype,
                                                     device=reference.device))
        self.energy_optimizer = torch.optim.Adam([*energy.parameters(), self.log_partition], lr=lr, betas=(0.5, 0.999))
        self.base_optimizer = torch.optim.Adam(base.parameters(), lr=lr, betas=(0.5, 0.999))

    def _latent(self, n: int, like: Tensor) -> Tensor:
        return torch.randn(n, self.latent_dim, device=like.device, dtype=like.dtype)

    def energy_step(self, x_real: Tensor, z: Optional[Tensor] = None, alpha: Optional[Tensor] = None) -> Tensor:
        n = len(x_real)
        z = self._latent(n, x_real) if z is None else z
        self.base.eval()
        self.energy.train()
        self.energy_optimizer.zero_grad()
        with torch.no_grad():
            x_fake = self.base(z)
        e_real, e_fake = self.energy(x_real), self.energy(x_fake)
        loss = (e_real + self.log_partition).mean() + torch.exp(-(e_fake + self.log_partition)).mean() - 1
        if alpha is None:
            alpha = torch.rand(n, *([1] * (x_real.dim() - 1)), device=x_real.device, dtype=x_real.dtype)
        x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
        e_hat = self.energy(x_hat)
        (grad,) = torch.autograd.grad(e_hat, x_hat, grad_outputs=torch.ones_like(e_hat), create_graph=True,
                                      retain_graph=True)
        penalty = self.penalty * (grad.reshape(n, -1) ** 2).sum(1).mean()
        (loss + penalty).backward()
        self.energy_optimizer.step()
        return loss.detach()

    def base_step(self, x_real: Tensor, z: Optional[Tensor] = None) -> Tensor:
        n = len(x_real)
        z = self._latent(n, x_real) if z is None else z
        self.base.train()
        self.energy.eval()
        self.base_optimizer.zero_grad()
        e_real, e_fake = self.energy(x_real), self.energy(self.base(z))
        batch_log_partition = torch.logsumexp(-e_fake, 0) - math.log(n)
        loss = -(e_real + batch_log_partition).mean()
        loss.backward()
        self.base_optimizer.step()
        return loss.detach()
