"""kale_fast against the GEBM authors' published algorithm (MichaelArbel/GeneralizedEBM), in float64.

- Their 32x32 networks, written here from their models (generator.py / discriminator.py, nn_type 'sngan': the
  legacy torch.nn.utils.spectral_norm hook on the seven convolutions, a free last Linear layer, the clamp
  relu(E + 10) - 10), against kale_fast's SNGANBase32 / SNGANEnergy32 built by `faithful: true`, on the same
  weights.
- Their training procedure (benchmarks/authors_train_step.py, on those twin networks) against the Trainer with
  `faithful: true`: gradients, losses and parameters over energy and base steps with the same batches.

The authors' sampler updates are compared in tests/samplers/test_authors_samplers.py.
"""
import pytest
import torch
from torch import nn

from benchmarks.authors_train_step import AuthorsTrainStep
from kale_fast.models import build_gebm
from kale_fast.train import TrainConfig, Trainer


LATENT = 8


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
    return TrainConfig.from_dict({**dict(base="sngan32", faithful=True, latent_dim=LATENT, batch_size=4, penalty=1.0,
                                         lr_energy=1e-4, lr_base=1e-4, n_partition_samples=16), **values})


def test_faithful_sets_the_authors_options_and_refuses_another_clamp():
    config = _faithful_config()
    assert (config.model.spectral_norm, config.model.spectral_norm_head, config.model.init,
            config.objective.eval_idle_network, config.model.energy_clamp) == (True, False, "xavier", True, -10.0)
    assert TrainConfig.from_dict(config.to_dict()) == config  # a saved config reads back the same
    with pytest.raises(ValueError, match="energy_clamp"):
        _faithful_config(energy_clamp=-5.0)
    with pytest.raises(ValueError, match="'init' must be one of"):
        TrainConfig(init="kaiming")
    default = TrainConfig()  # kale_fast's original behaviour unless asked
    assert (default.model.spectral_norm, default.model.spectral_norm_head, default.model.init,
            default.objective.eval_idle_network, default.model.energy_clamp) == (False, True, "torch", False, None)


def test_the_faithful_networks_are_the_authors_on_the_same_weights(float64):
    torch.manual_seed(0)
    gebm = build_gebm(_faithful_config().model, (3, 32, 32))
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
    free, normalised = (build_gebm(TrainConfig(base="sngan32", spectral_norm=True, spectral_norm_head=head).model,
                                   (3, 32, 32)).energy for head in (False, True))
    assert all(hasattr(net.features[0], "parametrizations") for net in (free, normalised))
    assert not hasattr(free.head, "parametrizations") and hasattr(normalised.head, "parametrizations")
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        normalised.load_state_dict(free.state_dict(), strict=False)  # the same weights, the head's own under it
        normalised.head.parametrizations.weight.original.copy_(free.head.weight)
        assert not torch.allclose(free.eval()(x), normalised.eval()(x))
    # Xavier-uniform, gain 1: U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), so sd = a / sqrt(3)
    gebm = build_gebm(_faithful_config().model, (3, 32, 32))
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
    Trainer's generator), gradients and losses at each step and every parameter and buffer at the end. Batches
    of 2 (batch norm's smallest): the 32x32 networks' fp64 double backward is the test's whole cost."""
    config = _faithful_config(batch_size=2)
    data = torch.rand(32, 3, 32, 32) * 2 - 1
    torch.manual_seed(0)
    ours = Trainer.create(config, data)
    ours.log_partition.data = ours.log_partition.data.double()  # the Trainer keeps A in float32
    base, energy = AuthorsBase(LATENT), AuthorsEnergy()
    base.load_state_dict(_authors_state(ours.gebm.base, base))
    energy.load_state_dict(_authors_state(ours.gebm.energy, energy))
    theirs = AuthorsTrainStep(base, energy, LATENT, config.objective.penalty, lr=config.optimiser.lr_energy,
                              log_partition=ours.log_partition.item())
    n = config.optimiser.batch_size

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
