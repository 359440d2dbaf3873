"""kale_fast's own networks for a GEBM, built from a training config: MLPs or a RealNVP for vectors, conv nets or
the paper's 32x32 networks for images, initialised, spectrally normalised and clamped where the config says so.

`model` is the config's model section, read by attribute only (kale_fast.train.config.ModelConfig, or anything
with its keys: base, latent_dim, hidden, depth, flow_layers, flow_hidden, flow_batch_norm, init, spectral_norm,
spectral_norm_head, energy_clamp, and to_dict), so that models never imports train; kf.load_gebm rebuilds a saved
GEBM's networks from its recorded model keys here.
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


def base_and_energy(model, data_shape: Tuple[int, ...]) -> Tuple[nn.Module, nn.Module]:
    """The model section's base and energy networks for samples of shape data_shape, as constructed (no init, no
    spectral norm, no clamp: build_gebm adds those)."""
    if model.base in ("conv", "sngan32"):
        if len(data_shape) != 3 or (model.base == "sngan32" and tuple(data_shape) != (3, 32, 32)):
            expected = "(3, 32, 32) images" if model.base == "sngan32" else "image data (C, H, W)"
            raise ValueError(f"base {model.base!r} needs {expected}, got samples of shape {tuple(data_shape)}")
        if model.base == "sngan32":
            return SNGANBase32(model.latent_dim), SNGANEnergy32(spectral_norm=False)
        channels, size = data_shape[0], data_shape[1]
        return ConvBase(model.latent_dim, channels, size, model.hidden), ConvEnergy(channels, size, model.hidden)
    if len(data_shape) != 1:
        raise ValueError(f"base {model.base!r} needs vector data, got samples of shape {tuple(data_shape)}: "
                         f"use base: conv for images")
    data_dim = data_shape[0]
    hidden = (model.hidden,) * model.depth
    if model.base == "realnvp" or model.base.startswith("zuko-"):
        if model.latent_dim != data_dim:
            raise ValueError(f"a flow base maps the latent space onto the data: latent_dim must be the data's "
                             f"dimension {data_dim} (or 'auto'), got {model.latent_dim}")
        flow = (RealNVP(data_dim, model.flow_layers, model.flow_hidden, model.flow_batch_norm)
                if model.base == "realnvp" else
                ZukoFlow(model.base[len("zuko-"):], data_dim, model.flow_layers, model.flow_hidden))
        return flow, MLP(data_dim, 1, hidden)
    return MLP(model.latent_dim, data_dim, hidden), MLP(data_dim, 1, hidden)


def build_gebm(model, data_shape: Tuple[int, ...]) -> GEBM:
    """MLPs or a RealNVP for vectors (data_shape (D,)); ConvBase/ConvEnergy of width `hidden`, or the paper's
    32x32 networks, for images; Xavier-initialised, the energy spectrally normalised and clamped where the model
    section says so. The GEBM records model.to_dict() and data_shape (GEBM.spec), from which kf.load_gebm rebuilds
    it."""
    base, energy = base_and_energy(model, data_shape)
    if model.init == "xavier":  # before spectral norm, which reparametrises the weights
        xavier_uniform_init(base)
        xavier_uniform_init(energy)
    if model.spectral_norm:
        energy = with_spectral_norm(energy, head=model.spectral_norm_head)
    if model.energy_clamp is not None:
        energy = ClampedEnergy(energy, model.energy_clamp)
    spec = dict(config=model.to_dict(), data_shape=list(data_shape))  # how kf.load_gebm rebuilds the networks
    return GEBM(base, energy, model.latent_dim, spec)


def build_gebm_for_weights(model, data_shape, weights: dict, source) -> GEBM:
    """build_gebm(model, data_shape) for saved weights (a GEBM's state_dict, e.g. a checkpoint's "gebm"), checked
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
        layout = sum(p.numel() for net in base_and_energy(model, tuple(data_shape)) for p in net.state_dict().values())
    if layout > saved:
        raise ValueError(f"{source}: its config describes networks of {layout} numbers, its weights hold {saved}: "
                         f"the file was altered, or its config is not the one it was trained with")
    return build_gebm(model, tuple(data_shape))
