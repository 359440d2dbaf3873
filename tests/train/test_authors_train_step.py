"""kale_fast against the GEBM authors' published algorithm (MichaelArbel/GeneralizedEBM), in float64.

- Their 32x32 networks, written here from their models (generator.py / discriminator.py, nn_type 'sngan': the
  legacy torch.nn.utils.spectral_norm hook on the seven convolutions, a free last Linear layer, the clamp
  relu(E + 10) - 10), against kale_fast's SNGANBase32 / SNGANEnergy32 built by `faithful: true`, on the same
  weights.
- Their training procedure (benchmarks/authors_train_step.py, on those twin networks) against the Trainer with
  `faithful: true`: gradients, losses and parameters over energy and base steps with the same batches.
- Their sampler updates (benchmarks/authors_samplers.py) against kale_fast's samplers, step for step with the same
  noise, under the parameter mapping stated there.
"""
import copy

import pytest
import torch
from torch import nn

import kale_fast as kf
from benchmarks import authors_samplers as authors
from benchmarks.authors_train_step import AuthorsTrainStep
from kale_fast.models import MLP
from kale_fast.ops import integrators
from kale_fast.samplers import LatentPotential
from kale_fast.samplers.core import StepContext, StepParams
from kale_fast.samplers.leapfrog import eager_leapfrog
from kale_fast.samplers.potentials import value_and_grad
from kale_fast.samplers.state import ChainState, KineticChainState
from kale_fast.train import TrainConfig, Trainer
from kale_fast.models import build_gebm

LATENT = 8


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


# --- their networks ---------------------------------------------------------------------------------------------

class AuthorsBase(nn.Module):
    """Their 'sngan' Generator: dense -> (512, 4, 4), BN-ReLU-ConvT(4, 2, 1) x 3, BN-ReLU-ConvT(64 -> 3, 3, 1, 1),
    tanh (layer indices as in kale_fast's SNGANBase32, so that state dicts map by name)."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.dense = nn.Linear(latent_dim, 4 * 4 * 512)
        self.main = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(), nn.ConvTranspose2d(512, 256, 4, 2, 1),
                                  nn.BatchNorm2d(256), nn.ReLU(), nn.ConvTranspose2d(256, 128, 4, 2, 1),
                                  nn.BatchNorm2d(128), nn.ReLU(), nn.ConvTranspose2d(128, 64, 4, 2, 1),
                                  nn.BatchNorm2d(64), nn.ReLU(), nn.ConvTranspose2d(64, 3, 3, 1, 1), nn.Tanh())

    def forward(self, z):
        return self.main(self.dense(z).view(-1, 512, 4, 4))


class AuthorsEnergy(nn.Module):
    """Their 'sngan' Discriminator: seven LeakyReLU(0.1) convolutions under the legacy spectral-norm hook, a free
    Linear(8192 -> 1), then relu(E + 10) - 10."""

    def __init__(self):
        super().__init__()
        specs = [(3, 64, 3, 1), (64, 128, 4, 2), (128, 128, 3, 1), (128, 256, 4, 2), (256, 256, 3, 1),
                 (256, 512, 4, 2), (512, 512, 3, 1)]
        layers = []
        for c_in, c_out, kernel, stride in specs:
            layers += [nn.utils.spectral_norm(nn.Conv2d(c_in, c_out, kernel, stride, 1)), nn.LeakyReLU(0.1)]
        self.main = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(4 * 4 * 512, 1)

    def forward(self, x):
        out = self.fc(self.main(x))
        return (torch.relu(out + 10) - 10).view(-1, 1).squeeze(1)


def _their_name(key: str) -> str:
    """Our parameter or buffer name under theirs: project/net -> dense/main, features/head -> main/fc, the
    parametrization's (original, _u, _v) -> the hook's (weight_orig, weight_u, weight_v)."""
    key = key.removeprefix("energy.")  # the ClampedEnergy wrapper
    key = (key.replace("project.", "dense.").replace("net.", "main.").replace("features.", "main.")
           .replace("head.", "fc."))
    return (key.replace("parametrizations.weight.original", "weight_orig")
            .replace("parametrizations.weight.0._u", "weight_u").replace("parametrizations.weight.0._v", "weight_v"))


def _authors_state(ours: nn.Module, theirs: nn.Module) -> dict:
    """Our state dict under their names (every entry accounted for)."""
    renamed = {_their_name(key): value.clone() for key, value in ours.state_dict().items()}
    assert set(renamed) == set(theirs.state_dict()), set(renamed) ^ set(theirs.state_dict())
    return renamed


def _assert_same_grads(ours: nn.Module, theirs: nn.Module) -> None:
    their_params = dict(theirs.named_parameters())
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.grad, their_params[_their_name(name)].grad, rtol=1e-8, atol=1e-12,
                                   msg=name)


def _spectral_layers(energy: nn.Module):
    return [m for m in energy.modules() if hasattr(m, "parametrizations")]


def _converge_power_iteration(ours: nn.Module, theirs: nn.Module) -> None:
    """Set every spectral norm's (u, v) to the exact top singular pair of its weight, on both networks. Ours runs
    two power iterations per energy step (real and base batches share a forward), theirs three, and the two
    torch implementations order an iteration's updates differently: from the exact pair any number of iterations
    stays there, so the comparison depends on neither."""
    theirs_convs = [m for m in theirs.modules() if hasattr(m, "weight_orig")]
    for layer, twin in zip(_spectral_layers(ours), theirs_convs, strict=True):
        weight = layer.parametrizations.weight.original.detach().flatten(1)  # (out, in), out <= in here
        u = torch.linalg.eigh(weight @ weight.T).eigenvectors[:, -1]  # cheaper than an SVD of the weight
        v = torch.nn.functional.normalize(weight.T @ u, dim=0)
        u = torch.nn.functional.normalize(weight @ v, dim=0)
        with torch.no_grad():
            layer.parametrizations.weight[0]._u.copy_(u)
            layer.parametrizations.weight[0]._v.copy_(v)
            twin.weight_u.copy_(u)
            twin.weight_v.copy_(v)


def _faithful_config(**values) -> TrainConfig:
    return TrainConfig.from_dict(dict(base="sngan32", faithful=True, latent_dim=LATENT, batch_size=4, penalty=1.0,
                                      lr_energy=1e-4, lr_base=1e-4, n_partition_samples=16, **values))


def test_faithful_sets_the_authors_options_and_refuses_another_clamp():
    config = _faithful_config()
    assert (config.spectral_norm, config.spectral_norm_head, config.init, config.eval_idle_network,
            config.energy_clamp) == (True, False, "xavier", True, -10.0)
    assert TrainConfig.from_dict(config.to_dict()) == config  # a saved config reads back the same
    with pytest.raises(ValueError, match="energy_clamp"):
        _faithful_config(energy_clamp=-5.0)
    with pytest.raises(ValueError, match="'init' must be one of"):
        TrainConfig(init="kaiming")
    default = TrainConfig()  # kale_fast's original behaviour unless asked
    assert (default.spectral_norm, default.spectral_norm_head, default.init, default.eval_idle_network,
            default.energy_clamp) == (False, True, "torch", False, None)


def test_the_faithful_networks_are_the_authors_on_the_same_weights(float64):
    torch.manual_seed(0)
    gebm = build_gebm(_faithful_config(), (3, 32, 32))
    base, energy = AuthorsBase(LATENT), AuthorsEnergy()
    base.load_state_dict(_authors_state(gebm.base, base))
    energy.load_state_dict(_authors_state(gebm.energy, energy))
    z, x = torch.randn(5, LATENT), torch.rand(5, 3, 32, 32) * 2 - 1
    # torch's spectral-norm parametrization updates u then v in its power iteration, the legacy hook v then u:
    # from the exact singular pair both stay there
    _converge_power_iteration(gebm.energy, energy)
    for mode in ("train", "eval"):  # batch statistics / running statistics; power iteration or none
        for net in (gebm, base, energy):
            net.train(mode == "train")
        torch.testing.assert_close(gebm.base(z), base(z), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gebm.energies(x), energy(x), rtol=1e-12, atol=1e-12)
    # the clamp is active: a large bias drives every E to the floor on both
    with torch.no_grad():
        gebm.energy.energy.head.bias.fill_(-50.0)
        energy.fc.bias.fill_(-50.0)
    torch.testing.assert_close(gebm.energies(x), energy(x), rtol=0, atol=0)
    assert torch.all(energy(x) == -10.0)


def test_the_spectral_norm_head_option_and_xavier_init(float64):
    torch.manual_seed(0)
    free, normalised = (build_gebm(TrainConfig(base="sngan32", spectral_norm=True, spectral_norm_head=head),
                                   (3, 32, 32)).energy for head in (False, True))
    assert all(hasattr(net.features[0], "parametrizations") for net in (free, normalised))
    assert not hasattr(free.head, "parametrizations") and hasattr(normalised.head, "parametrizations")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        normalised.load_state_dict(free.state_dict(), strict=False)  # the same weights, the head's own under it
        normalised.head.parametrizations.weight.original.copy_(free.head.weight)
        assert not torch.allclose(free.eval()(x), normalised.eval()(x))
    # Xavier-uniform, gain 1: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), so sd = a / sqrt(3)
    gebm = build_gebm(_faithful_config(), (3, 32, 32))
    for layer in (gebm.base.project, gebm.base.net[2], gebm.energy.energy.features[12], gebm.energy.energy.head):
        weight = getattr(layer, "parametrizations", None)
        weight = weight.weight.original if weight is not None else layer.weight
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert weight.abs().max() <= bound and weight.abs().max() > 0.99 * bound
        # thousands of entries: the sample sd is within 5% of a / sqrt(3) (PyTorch's default is ~1.7x smaller)
        assert abs(weight.std().item() / (bound / 3 ** 0.5) - 1) < 0.05


def test_faithful_trainer_steps_match_the_authors_training_step(float64):
    """An energy step, a base step and an energy step of the Trainer (faithful: true) against the authors'
    steps on their twin networks: the same batches, latents and interpolation weights (replayed from the
    Trainer's generator), gradients and losses at each step and every parameter and buffer at the end."""
    config = _faithful_config()
    data = torch.rand(32, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    ours = Trainer.create(config, data)
    ours.log_partition.data = ours.log_partition.data.double()  # the Trainer keeps A in float32
    base, energy = AuthorsBase(LATENT), AuthorsEnergy()
    base.load_state_dict(_authors_state(ours.gebm.base, base))
    energy.load_state_dict(_authors_state(ours.gebm.energy, energy))
    theirs = AuthorsTrainStep(base, energy, LATENT, config.penalty, lr=config.lr_energy,
                              log_partition=ours.log_partition.item())
    n = config.batch_size

    def replay():
        return torch.Generator().set_state(ours.generator.get_state())

    def energy_step():
        _converge_power_iteration(ours.gebm.energy, energy)
        g = replay()  # the Trainer's draws, in its order: batch indices, latents, interpolation weights
        x_real = data[torch.randint(0, len(data), (n,), generator=g)]
        z = torch.randn(n, LATENT, generator=g)
        alpha = torch.rand(n, 1, 1, 1, generator=g)
        ours_loss = ours.energy_step(data)["energy_loss"]
        theirs_loss = theirs.energy_step(x_real, z, alpha)
        torch.testing.assert_close(ours_loss, theirs_loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ours.log_partition.grad, theirs.log_partition.grad, rtol=1e-9, atol=1e-12)
        _assert_same_grads(ours.gebm.energy, energy)

    def base_step():
        z = torch.randn(n, LATENT, generator=replay())
        x_real = data[:n]  # their base loss adds -mean E(x_real), which does not depend on the base
        ours_loss = ours.base_step(data)["base_loss"]
        theirs_loss = theirs.base_step(x_real, z)
        with torch.no_grad():
            torch.testing.assert_close(ours_loss, theirs_loss + ours.gebm.energies(x_real).mean(), rtol=1e-10,
                                       atol=1e-12)
        _assert_same_grads(ours.gebm.base, base)

    energy_step()
    base_step()
    energy_step()  # Adam's second step, on a base whose running statistics moved
    torch.testing.assert_close(ours.log_partition.detach(), theirs.log_partition.detach(), rtol=1e-10, atol=1e-12)
    for net, twin in ((ours.gebm.base, base), (ours.gebm.energy, energy)):
        expected = twin.state_dict()
        for key, value in _authors_state(net, twin).items():  # parameters, running statistics, (u, v)
            torch.testing.assert_close(value, expected[key], rtol=1e-8, atol=1e-11, msg=key)


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
