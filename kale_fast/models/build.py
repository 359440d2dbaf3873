"""kale_fast's own networks for a GEBM, built from a training config: MLPs or a RealNVP for vectors, conv nets or
the paper's 32x32 networks for images, initialised, spectrally normalised and clamped where the config says so.

`config` is read by attribute only (kale_fast.train.TrainConfig, or anything with its model keys: base,
latent_dim, hidden, depth, flow_layers, flow_hidden, flow_batch_norm, init, spectral_norm, spectral_norm_head,
energy_clamp), so that models never imports train; kf.load_gebm rebuilds a saved GEBM's networks from its
recorded config here.
"""
import math
from typing import Tuple

import torch
from torch import Tensor, nn

from kale_fast.models.conv import ConvBase, ConvEnergy
from kale_fast.models.flows import RealNVP
from kale_fast.models.gebm import GEBM
from kale_fast.models.init import xavier_uniform_init
from kale_fast.models.mlp import MLP
from kale_fast.models.sngan import SNGANBase32, SNGANEnergy32
from kale_fast.models.spectral_norm import with_spectral_norm
from kale_fast.models.zuko_flows import ZukoFlow


class ClampedEnergy(nn.Module):
    """The authors' clamp E >= floor (an option, off by default): energy(x) (N,) -> max(energy(x), floor)."""

    def __init__(self, energy: nn.Module, floor: float):
        super().__init__()
        self.energy, self.floor = energy, floor

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(self.energy(x), min=self.floor)


def base_and_energy(config, data_shape: Tuple[int, ...]) -> Tuple[nn.Module, nn.Module]:
    """The config's base and energy networks for samples of shape data_shape, as constructed (no init, no
    spectral norm, no clamp: build_gebm adds those)."""
    if config.base in ("conv", "sngan32"):
        if len(data_shape) != 3 or (config.base == "sngan32" and tuple(data_shape) != (3, 32, 32)):
            expected = "(3, 32, 32) images" if config.base == "sngan32" else "image data (C, H, W)"
            raise ValueError(f"base {config.base!r} needs {expected}, got samples of shape {tuple(data_shape)}")
        if config.base == "sngan32":
            return SNGANBase32(config.latent_dim), SNGANEnergy32(spectral_norm=False)
        channels, size = data_shape[0], data_shape[1]
        return ConvBase(config.latent_dim, channels, size, config.hidden), ConvEnergy(channels, size, config.hidden)
    if len(data_shape) != 1:
        raise ValueError(f"base {config.base!r} needs vector data, got samples of shape {tuple(data_shape)}: "
                         f"use base: conv for images")
    data_dim = data_shape[0]
    hidden = (config.hidden,) * config.depth
    if config.base == "realnvp" or config.base.startswith("zuko-"):
        if config.latent_dim != data_dim:
            raise ValueError(f"a flow base maps the latent space onto the data: latent_dim must be the data's "
                             f"dimension {data_dim} (or 'auto'), got {config.latent_dim}")
        flow = (RealNVP(data_dim, config.flow_layers, config.flow_hidden, config.flow_batch_norm)
                if config.base == "realnvp" else
                ZukoFlow(config.base[len("zuko-"):], data_dim, config.flow_layers, config.flow_hidden))
        return flow, MLP(data_dim, 1, hidden)
    return MLP(config.latent_dim, data_dim, hidden), MLP(data_dim, 1, hidden)


def build_gebm(config, data_shape: Tuple[int, ...]) -> GEBM:
    """MLPs or a RealNVP for vectors (data_shape (D,)); ConvBase/ConvEnergy of width `hidden`, or the paper's
    32x32 networks, for images; Xavier-initialised, the energy spectrally normalised and clamped where the config
    says so. The GEBM records config.to_dict() and data_shape (GEBM.spec), from which kf.load_gebm rebuilds it."""
    base, energy = base_and_energy(config, data_shape)
    if config.init == "xavier":  # before spectral norm, which reparametrises the weights
        xavier_uniform_init(base)
        xavier_uniform_init(energy)
    if config.spectral_norm:
        energy = with_spectral_norm(energy, head=config.spectral_norm_head)
    if config.energy_clamp is not None:
        energy = ClampedEnergy(energy, config.energy_clamp)
    spec = dict(config=config.to_dict(), data_shape=list(data_shape))  # how kf.load_gebm rebuilds the networks
    return GEBM(base, energy, config.latent_dim, spec)


def build_gebm_for_weights(config, data_shape, weights: dict, source) -> GEBM:
    """build_gebm(config, data_shape) for saved weights (a GEBM's state_dict, e.g. a checkpoint's "gebm"), checked
    before anything is allocated: the data shape is bounded by the weights' size (every energy reads the whole
    sample), and the networks are laid out on the meta device (no memory) and must hold no more numbers than the
    weights. So a config that is not the one the weights were trained with (a crafted file saying hidden: 200000
    beside 48 KB of weights) is a ValueError naming `source` (the file), and what is built is about as large as the
    weights already read; loading the weights then checks their names and shapes exactly."""
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise ValueError(f"{source}: its weights are not a state dict of tensors")
    if (not isinstance(data_shape, (list, tuple)) or len(data_shape) not in (1, 3)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in data_shape)):
        raise ValueError(f"{source}: its data_shape must be (D,) or (C, H, W) of positive ints, got {data_shape!r}")
    saved = sum(v.numel() for v in weights.values())
    if math.prod(data_shape) > saved:
        raise ValueError(f"{source}: its data_shape {tuple(data_shape)} is larger than its {saved} weights allow: "
                         f"the file was altered")
    with torch.device("meta"):  # the networks as constructed (spectral norm, which adds vectors, left out)
        layout = sum(p.numel() for net in base_and_energy(config, tuple(data_shape)) for p in net.state_dict().values())
    if layout > saved:
        raise ValueError(f"{source}: its config describes networks of {layout} numbers, its weights hold {saved}: "
                         f"the file was altered, or its config is not the one it was trained with")
    return build_gebm(config, tuple(data_shape))
