"""kale_fast: fused kernels, samplers and training for Generalized Energy-Based Models trained with KALE."""
from kale_fast.loading import load_gebm
from kale_fast.models import GEBM, ClampedEnergy
from kale_fast.ops import backend, get_backend, kale_loss, log_mean_exp, set_backend, use_backend
from kale_fast.samplers import (HMC, MALA, ULA, ChEES, KineticLangevin, LatentPotential, Metric, SampleResult,
                                SamplerState)
from kale_fast.train.steps import KALETrainer, kale_base_step, kale_energy_step

__version__ = "0.1.0"

__all__ = ["ChEES", "ClampedEnergy", "GEBM", "HMC", "KALETrainer", "KineticLangevin", "LatentPotential", "MALA",
           "Metric", "SampleResult", "SamplerState", "ULA", "backend", "get_backend", "kale_base_step",
           "kale_energy_step", "kale_loss", "load_gebm", "log_mean_exp", "set_backend", "use_backend"]
