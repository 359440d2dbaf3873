"""A faithful reimplementation, for cost comparison only, of one training step of the GEBM authors' code
(MichaelArbel/GeneralizedEBM, trainer.py), written from its algorithm, not copied: the same math as
kale_fast.train.Trainer (KALE with a learned A and a gradient penalty for the energy; -log mean exp(-E(B(z)))
for the base), computed the way their loop computes it:
- energy step: real, base and interpolate batches through the energy in three separate forwards (so spectral
  norm runs three power iterations), the penalty's input gradient by autograd.grad(create_graph=True), then one
  backward; Adam with torch's defaults for the device;
- base step: the base and the energy forward with every parameter requiring grad, one `.backward()` (so the
  energy's parameter gradients are computed and thrown away).
"""
import math

import torch
from torch import Tensor, nn


class AuthorsTrainStep:
    """Their energy and base steps over (base, energy, A), with their own Adam optimisers."""

    def __init__(self, base: nn.Module, energy: nn.Module, latent_dim: int, penalty: float, lr: float = 1e-4):
        self.base, self.energy, self.latent_dim, self.penalty = base, energy, latent_dim, penalty
        device = next(energy.parameters()).device
        self.log_partition = nn.Parameter(torch.zeros((), device=device))
        self.energy_optimizer = torch.optim.Adam([*energy.parameters(), self.log_partition], lr=lr, betas=(0.5, 0.999))
        self.base_optimizer = torch.optim.Adam(base.parameters(), lr=lr, betas=(0.5, 0.999))

    def _latent(self, n: int, like: Tensor) -> Tensor:
        return torch.randn(n, self.latent_dim, device=like.device)

    def energy_step(self, x_real: Tensor) -> Tensor:
        n = len(x_real)
        x_fake = self.base(self._latent(n, x_real)).detach()
        self.energy_optimizer.zero_grad()
        e_real, e_fake = self.energy(x_real), self.energy(x_fake)
        loss = e_real.mean() + self.log_partition + torch.exp(-e_fake - self.log_partition).mean() - 1
        alpha = torch.rand(n, *([1] * (x_real.dim() - 1)), device=x_real.device)
        x_hat = (alpha * x_real + (1 - alpha) * x_fake).requires_grad_(True)
        e_hat = self.energy(x_hat)
        (grad,) = torch.autograd.grad(e_hat, x_hat, grad_outputs=torch.ones_like(e_hat), create_graph=True,
                                      retain_graph=True, only_inputs=True)
        penalty = self.penalty * (grad.reshape(n, -1).norm(2, dim=1) ** 2).mean()
        (loss + penalty).backward()
        self.energy_optimizer.step()
        return loss.detach()

    def base_step(self, batch_size: int, like: Tensor) -> Tensor:
        self.base_optimizer.zero_grad()
        e_fake = self.energy(self.base(self._latent(batch_size, like)))
        loss = -(torch.logsumexp(-e_fake.reshape(-1), 0) - math.log(batch_size))
        loss.backward()
        self.base_optimizer.step()
        return loss.detach()
