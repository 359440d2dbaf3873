"""Networks for GEBMs: bases (generators) and energies, and the builder of kale_fast's own from a config."""
from kale_fast.models.build import ClampedEnergy, build_gebm
from kale_fast.models.flows import RealNVP
from kale_fast.models.gebm import GEBM
from kale_fast.models.init import INITS, xavier_uniform_init
from kale_fast.models.mlp import MLP
from kale_fast.models.sngan import SNGANBase32, SNGANEnergy32
from kale_fast.models.spectral_norm import with_spectral_norm

__all__ = ["ClampedEnergy", "GEBM", "INITS", "MLP", "RealNVP", "SNGANBase32", "SNGANEnergy32", "build_gebm",
           "with_spectral_norm", "xavier_uniform_init"]
