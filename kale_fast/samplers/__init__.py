"""Batched MCMC over chains in a latent space: potentials, ULA, MALA, HMC, ChEES-HMC, kinetic Langevin, warm-up
adaptation (metric, step size, trajectory length), divergences, end-of-run warnings and diagnostics."""
from kale_fast.samplers.base import Sampler
from kale_fast.samplers.checks import SamplerWarning
from kale_fast.samplers.context import build_context
from kale_fast.samplers.core import StepContext, StepParams
from kale_fast.samplers.diagnostics import ess_bulk, ess_tail, rhat
from kale_fast.samplers.hmc import HMC, ChEES
from kale_fast.samplers.kinetic import KineticLangevin
from kale_fast.samplers.langevin import MALA, ULA
from kale_fast.samplers.metric import Metric
from kale_fast.samplers.potentials import LatentPotential, value_and_grad
from kale_fast.samplers.state import ChainState, KineticChainState, SampleResult, SamplerState

__all__ = ["ChEES", "ChainState", "HMC", "KineticChainState", "KineticLangevin", "LatentPotential", "MALA", "Metric",
           "SampleResult", "Sampler", "SamplerState", "SamplerWarning", "StepContext", "StepParams", "ULA",
           "build_context", "ess_bulk", "ess_tail", "rhat", "value_and_grad"]
