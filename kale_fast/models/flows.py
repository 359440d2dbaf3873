"""RealNVP (Dinh et al., 2017): a base with an exact log-density, so that its GEBM has a likelihood
log q(x) = log p_G(x) - E(x) - A; optionally with batch normalisation between the couplings, as the RealNVP of
the MAF paper (Papamakarios et al., 2017) whose UCI numbers the published tables carry."""
import math
from typing import Tuple

import torch
from torch import Tensor, nn

from kale_fast.models.mlp import MLP


class AffineCoupling(nn.Module):
    """y = x where mask = 1; y = x * exp(s(x_masked)) + t(x_masked) elsewhere (s bounded by tanh)."""

    def __init__(self, dim: int, hidden: int, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask)
        self.net = MLP(dim, 2 * dim, (hidden, hidden), activation=nn.ReLU)
        self.scale = nn.Parameter(torch.zeros(dim))

    def _shift_and_log_scale(self, x_masked: Tensor) -> Tuple[Tensor, Tensor]:
        shift, log_scale = self.net(x_masked).chunk(2, dim=1)
        keep = 1 - self.mask
        return shift * keep, torch.tanh(log_scale) * self.scale.exp() * keep

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(x * self.mask)
        return x * torch.exp(log_scale) + shift, log_scale.sum(1)

    def inverse(self, y: Tensor) -> Tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_and_log_scale(y * self.mask)
        return (y - shift) * torch.exp(-log_scale), -log_scale.sum(1)


class BatchNormLayer(nn.Module):
    """The MAF paper's batch normalisation as a bijection, in the density direction x -> u:
    u = (x - m) / sqrt(v + eps) * exp(log_gamma) + beta. Training mode (the density direction only): m, v are the
    batch's mean and variance, and update running averages; eval mode and the sampling direction u -> x: the
    running averages. Evaluate and sample in eval mode, so that the density and the map are the same function."""

    def __init__(self, dim: int, momentum: float = 0.05, eps: float = 1e-5):
        super().__init__()
        self.log_gamma = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.momentum, self.eps = momentum, eps

    def _moments(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean, self.running_var
        mean, var = x.mean(0), x.var(0, unbiased=False)
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
        return mean, var

    def to_latent(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(u, log |det du/dx|) of x (B, dim)."""
        mean, var = self._moments(x)
        log_scale = self.log_gamma - 0.5 * torch.log(var + self.eps)
        return (x - mean) * log_scale.exp() + self.beta, log_scale.sum().expand(x.shape[0])

    def from_latent(self, u: Tensor) -> Tensor:
        """x of u (B, dim), with the running averages."""
        return (u - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(self.running_var + self.eps) + \
            self.running_mean


class RealNVP(nn.Module):
    """z (B, dim) -> x (B, dim) through n_layers affine couplings with alternating masks (the GEBM paper's
    tabular base: 5 layers, hidden width 100), with `batch_norm` a BatchNormLayer between consecutive couplings
    (the MAF paper's RealNVP). `log_prob(x)` is exact (in eval mode where batch_norm: see BatchNormLayer)."""

    def __init__(self, dim: int, n_layers: int = 5, hidden: int = 100, batch_norm: bool = False):
        super().__init__()
        if dim < 2:
            raise ValueError(f"RealNVP needs dim >= 2, got {dim}")
        # from Python numbers, not tensor ops: laid out on the meta device (a saved file's config checked against
        # its weights, models.build), a tensor op would first load torch's meta kernels (seconds)
        masks = [torch.tensor([float((j + i) % 2) for j in range(dim)]) for i in range(n_layers)]
        self.layers = nn.ModuleList(AffineCoupling(dim, hidden, m) for m in masks)
        # norms[i - 1] sits between couplings i - 1 and i (none before the first)
        self.norms = nn.ModuleList(BatchNormLayer(dim) for _ in range(n_layers - 1)) if batch_norm else None
        self.dim = dim

    def forward(self, z: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            if self.norms is not None and i > 0:
                z = self.norms[i - 1].from_latent(z)
            z, _ = layer(z)
        return z

    def inverse(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(z, log |det dz/dx|)."""
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for i in reversed(range(len(self.layers))):
            x, layer_log_det = self.layers[i].inverse(x)
            log_det = log_det + layer_log_det
            if self.norms is not None and i > 0:
                x, norm_log_det = self.norms[i - 1].to_latent(x)
                log_det = log_det + norm_log_det
        return x, log_det

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = log N(f^-1(x); 0, I) + log |det d f^-1 / dx|, (B,)."""
        z, log_det = self.inverse(x)
        return -0.5 * (z * z).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + log_det
