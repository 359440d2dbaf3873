"""RealNVP (Dinh et al., 2017): a base with an exact log-density, so that its GEBM has a likelihood
log q(x) = log p_G(x) - E(x) - A."""
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


class RealNVP(nn.Module):
    """z (B, dim) -> x (B, dim) through n_layers affine couplings with alternating masks (the GEBM paper's
    tabular base: 5 layers, hidden width 100). `log_prob(x)` is exact."""

    def __init__(self, dim: int, n_layers: int = 5, hidden: int = 100):
        super().__init__()
        if dim < 2:
            raise ValueError(f"RealNVP needs dim >= 2, got {dim}")
        # from Python numbers, not tensor ops: laid out on the meta device (a saved file's config checked against
        # its weights, models.build), a tensor op would first load torch's meta kernels (seconds)
        masks = [torch.tensor([float((j + i) % 2) for j in range(dim)]) for i in range(n_layers)]
        self.layers = nn.ModuleList(AffineCoupling(dim, hidden, m) for m in masks)
        self.dim = dim

    def forward(self, z: Tensor) -> Tensor:
        for layer in self.layers:
            z, _ = layer(z)
        return z

    def inverse(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """(z, log |det dz/dx|)."""
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in reversed(self.layers):
            x, layer_log_det = layer.inverse(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = log N(f^-1(x); 0, I) + log |det d f^-1 / dx|, (B,)."""
        z, log_det = self.inverse(x)
        return -0.5 * (z * z).sum(1) - 0.5 * self.dim * math.log(2 * math.pi) + log_det
