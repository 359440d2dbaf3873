"""kale_fast: fused kernels, samplers and training for Generalized Energy-Based Models trained with KALE."""
from kale_fast.loading import load_gebm
from kale_fast.models import GEBM
from kale_fast.ops import get_backend, kale_loss, log_mean_exp, set_backend, use_backend
from kale_fast.samplers import (HMC, MALA, ULA, ChEES, KineticLangevin, LatentPotential, Metric, SampleResult,
                                SamplerState)

__version__ = "0.1.0"

__all__ = ["ChEES", "GEBM", "HMC", "KineticLangevin", "LatentPotential", "MALA", "Metric", "SampleResult",
           "SamplerState", "ULA", "get_backend", "kale_loss", "load_gebm", "log_mean_exp", "set_backend",
           "use_backend"]
