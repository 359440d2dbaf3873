"""Networks for GEBMs: bases (generators) and energies."""
from kale_fast.models.flows import RealNVP
from kale_fast.models.gebm import GEBM
from kale_fast.models.init import INITS, xavier_uniform_init
from kale_fast.models.mlp import MLP
from kale_fast.models.sngan import SNGANBase32, SNGANEnergy32
from kale_fast.models.spectral_norm import with_spectral_norm

__all__ = ["GEBM", "INITS", "MLP", "RealNVP", "SNGANBase32", "SNGANEnergy32", "with_spectral_norm",
           "xavier_uniform_init"]
