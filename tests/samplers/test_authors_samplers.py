"""kale_fast's samplers against the GEBM authors' sampler updates (benchmarks/authors_samplers.py, from
MichaelArbel/GeneralizedEBM), step for step with the same noise, in float64, under the parameter mapping stated
there."""
import pytest
import torch

import kale_fast as kf
from benchmarks import authors_samplers as authors
from kale_fast.models import MLP
from kale_fast.ops import integrators
from kale_fast.samplers import LatentPotential
from kale_fast.samplers.core import StepContext, StepParams
from kale_fast.samplers.leapfrog import eager_leapfrog
from kale_fast.samplers.potentials import value_and_grad
from kale_fast.samplers.state import ChainState, KineticChainState


# --- samplers, step for step ------------------------------------------------------------------------------------

class _GivenNoise:
    """The integrator kernels with the noise (and HMC momentum) given instead of drawn from a seed."""

    def __init__(self, kernels, noise):
        self.kernels, self.noise = kernels, noise

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    def ula_step(self, z, grad, step_size, seed, noise):
        return self.kernels.ula_step(z, grad, step_size, seed, self.noise)

    def mala_propose(self, z, grad, step_size, seed, noise):
        return self.kernels.mala_propose(z, grad, step_size, seed, self.noise)

    def kinetic_langevin_baoa(self, z, v, grad, step_size, friction, seed, noise):
        return self.kernels.kinetic_langevin_baoa(z, v, grad, step_size, friction, seed, self.noise)

    def hmc_draw_momentum(self, z, seed):
        p = self.noise.clone()
        return p, 0.5 * (p * p).sum(1)


class _GivenUniform(StepContext):
    """A step context whose Metropolis uniforms are given (its `uniform` attribute)."""

    def log_uniform(self, like):
        return torch.log(self.uniform)


def _our_step(sampler, potential, state, h, noise, uniform=None, n_leapfrog=0):
    kernels = _GivenNoise(integrators.kernels_for(state.z), noise)
    vg = lambda y: value_and_grad(potential, y)  # noqa: E731  (identity metric: y = z)
    ctx = _GivenUniform(vg, kernels, eager_leapfrog(kernels, vg), torch.Generator())
    ctx.uniform = uniform
    params = StepParams(torch.full((state.z.shape[0],), h), n_leapfrog)
    return sampler.step(state, params, ctx)[0]


def _replayed_draws(seed, z, uniforms=False):
    """The draws an authors' step makes from torch's global generator after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    noise = torch.randn_like(z)
    return (noise, torch.rand(z.shape[0])) if uniforms else noise


@pytest.fixture
def latent_potential(float64):
    torch.manual_seed(0)
    base, energy = MLP(3, 4, (16,)), MLP(4, 1, (16,))
    ours = LatentPotential(base, energy)
    theirs = lambda z: 0.5 * (z * z).sum(1) + energy(base(z)).squeeze(1)  # noqa: E731
    return ours, theirs


@pytest.mark.parametrize("h", [0.01, 0.3])
def test_ula_matches_theirs_with_gamma_2h(latent_potential, h):
    ours_potential, theirs_potential = latent_potential
    z = torch.randn(64, 3)
    noise = _replayed_draws(1, z)
    state = ChainState(z, *value_and_grad(ours_potential, z))
    ours = _our_step(kf.ULA(h, metric="identity"), ours_potential, state, h, noise).z
    torch.manual_seed(1)
    theirs = authors.ula_step(theirs_potential, z, authors.ula_gamma(h))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h", [0.05, 0.5])
def test_mala_proposal_matches_theirs_with_gamma_h(latent_potential, h):
    """Same proposal; their acceptance test scales the reverse term by gamma/4 instead of 1/(4 gamma), so only
    chains both accept are compared (and each side returns either the start or the proposal)."""
    ours_potential, theirs_potential = latent_potential
    z = torch.randn(64, 3)
    noise, uniform = _replayed_draws(2, z, uniforms=True)
    value, grad = value_and_grad(ours_potential, z)
    proposal = z - h * grad + (2 * h) ** 0.5 * noise
    ours = _our_step(kf.MALA(h, metric="identity"), ours_potential, ChainState(z, value, grad), h, noise, uniform).z
    torch.manual_seed(2)
    theirs, _ = authors.mala_step(theirs_potential, z, grad, authors.mala_gamma(h))
    for out in (ours, theirs):
        moved = (out != z).any(1)
        torch.testing.assert_close(out[moved], proposal[moved], rtol=1e-12, atol=1e-12)
    both = (ours != z).any(1) & (theirs != z).any(1)
    assert both.sum() >= 8
    torch.testing.assert_close(ours[both], theirs[both], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("h", [0.05, 0.4])
def test_hmc_matches_theirs_with_lambda_h_over_2_squared(latent_potential, h):
    """One iteration of 2 leapfrog steps from a fresh gradient: positions and Metropolis decisions agree."""
    ours_potential, theirs_potential = latent_potential
    z = torch.randn(64, 3)
    momentum, uniform = _replayed_draws(3, z, uniforms=True)
    value, grad = value_and_grad(ours_potential, z)
    sampler = kf.HMC(h, 2, jitter=0.0, metric="identity")
    ours = _our_step(sampler, ours_potential, ChainState(z, value, grad), h, momentum, uniform, n_leapfrog=2).z
    torch.manual_seed(3)
    theirs = authors.hmc_step(theirs_potential, z, grad.clone(), authors.leapfrog_lambda(h), n_leapfrog=2)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert (ours != z).any(1).sum() >= 8  # most chains accept


@pytest.mark.parametrize("h, friction", [(0.1, 1.0), (0.5, 0.3)])
def test_kinetic_langevin_matches_theirs_with_lambda_h_over_2_squared_where_the_gradient_vanishes(float64, h,
                                                                                                 friction):
    """Their A-B-O-B-A and our B-A-O-A-B splittings coincide without a gradient: this pins the step (2 sqrt
    lambda = h) and the friction (kappa) mappings; with a gradient they are different integrators of the same
    dynamics."""
    flat = lambda z: 0.0 * z.sum(1)  # noqa: E731
    z, v = torch.randn(32, 3), torch.randn(32, 3)
    noise = _replayed_draws(4, z)
    value, grad = value_and_grad(flat, z)
    state = KineticChainState(z, value, grad, v)
    ours = _our_step(kf.KineticLangevin(h, friction, metric="identity"), flat, state, h, noise)
    torch.manual_seed(4)
    theirs_z, theirs_v = authors.kinetic_step(flat, z, v, authors.leapfrog_lambda(h), friction)
    torch.testing.assert_close(ours.z, theirs_z, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.velocity, theirs_v, rtol=1e-12, atol=1e-12)
