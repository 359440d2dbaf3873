"""Batched MCMC over chains in a latent space: potentials, ULA, MALA, HMC, kinetic Langevin, step-size
adaptation and diagnostics."""
from kale_fast.samplers.base import ChainState, SampleResult, Sampler, SamplerState
from kale_fast.samplers.diagnostics import effective_sample_size, split_rhat
from kale_fast.samplers.hmc import HMC
from kale_fast.samplers.kinetic import KineticLangevin
from kale_fast.samplers.langevin import MALA, ULA
from kale_fast.samplers.potentials import LatentPotential, value_and_grad

__all__ = ["ChainState", "HMC", "KineticLangevin", "LatentPotential", "MALA", "SampleResult", "Sampler",
           "SamplerState", "ULA", "effective_sample_size", "split_rhat", "value_and_grad"]
