"""Fused MCMC updates (kale_fast.ops.integrators) against kale_fast.reference.integrators, plus the
properties the samplers rely on: in-kernel noise statistics and repeatability, leapfrog reversibility and
its O(h^2) energy error."""
import math

import pytest
import torch

from kale_fast.ops import integrators as fused
from kale_fast.reference import integrators as reference

SHAPES = [(1, 1), (37, 13), (64, 128), (5, 300)]


def _state(shape, dtype, device, seed):
    gen = torch.Generator().manual_seed(seed)
    b, n = shape

    def rand(*size, scale=1.0):
        return (scale * torch.randn(*size, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device)

    p = rand(b, n)
    return dict(z=rand(b, n), p=p, grad=rand(b, n), noise=rand(b, n), z2=rand(b, n), grad2=rand(b, n),
                potential=rand(b, scale=3), potential2=rand(b, scale=3), kinetic=0.5 * (p * p).sum(1) + rand(b),
                step=(0.05 + torch.rand(b, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device),
                friction=(0.1 + 2 * torch.rand(b, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device),
                log_u=torch.log(torch.rand(b, generator=gen, dtype=torch.float64)).to(dtype=dtype, device=device))


def _close(actual, expected):
    tol = dict(rtol=1e-5, atol=1e-5) if actual.dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(actual, expected, **tol, equal_nan=True)


DTYPES = [torch.float32, torch.float64]


def check_leapfrog_kick_drift(s: dict) -> None:
    """The fused kick-drift (half and full kick) against the reference on state s."""
    for kick in (0.5, 1.0):
        z, p = s["z"].clone(), s["p"].clone()
        fused.leapfrog_kick_drift(z, p, s["grad"], s["step"], kick)
        z_ref, p_ref = reference.leapfrog_kick_drift(s["z"], s["p"], s["grad"], s["step"], kick)
        _close(z, z_ref), _close(p, p_ref)


def check_hmc_trajectory_end(s: dict):
    """The fused trajectory end on state s against the reference, outputs and in-place updates; returns
    (accept_prob, accepted)."""
    z, grad, potential = s["z"].clone(), s["grad"].clone(), s["potential"].clone()
    prob, accepted = fused.hmc_trajectory_end(z, s["p"], grad, potential, s["z2"], s["potential2"], s["grad2"],
                                              s["kinetic"], s["step"], s["log_u"])
    expected = reference.hmc_trajectory_end(s["z"], s["p"], s["grad"], s["potential"], s["z2"], s["potential2"],
                                            s["grad2"], s["kinetic"], s["step"], s["log_u"])
    for actual, want in zip((z, potential, grad, prob), expected[:4]):
        _close(actual, want)
    assert torch.equal(accepted, expected[4])
    return prob, accepted


def check_mala_accept(s: dict):
    """The fused MALA test on state s against the reference, outputs and in-place updates; returns accepted."""
    z2, potential2, grad2 = s["z2"].clone(), s["potential2"].clone(), s["grad2"].clone()
    prob, accepted, energy_error = fused.mala_accept(s["z"], s["potential"], s["grad"], z2, potential2, grad2,
                                                     s["step"], s["log_u"])
    expected = reference.mala_accept(s["z"], s["potential"], s["grad"], s["z2"], s["potential2"], s["grad2"],
                                     s["step"], s["log_u"])
    for actual, want in zip((z2, potential2, grad2, prob), expected[:4]):
        _close(actual, want)
    assert torch.equal(accepted, expected[4])
    # -log ratio: a difference of sums over the row, so rounding is relative to the terms' size, not the result's
    h = s["step"][:, None]
    terms = (s["potential"].abs() + s["potential2"].abs() + (((s["z2"] - s["z"] + h * s["grad"]) ** 2).sum(1)
             + ((s["z"] - s["z2"] + h * s["grad2"]) ** 2).sum(1)) / (4 * s["step"]))
    tol = 1e-5 if energy_error.dtype == torch.float32 else 1e-12
    finite = torch.isfinite(expected[5])
    torch.testing.assert_close(energy_error[~finite], expected[5][~finite], equal_nan=True)  # NaN and +-inf
    assert ((energy_error - expected[5])[finite].abs() <= tol * (1 + terms[finite])).all()
    return accepted


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_leapfrog_kick_drift_matches_reference(fused_backend_state, shape, dtype):
    check_leapfrog_kick_drift(fused_backend_state(shape, dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_hmc_trajectory_end_matches_reference(fused_backend_state, shape, dtype):
    s = fused_backend_state(shape, dtype)
    if shape[0] > 2:  # a NaN and an infinite proposal: both must be rejected
        s["potential"][0], s["potential"][1] = math.nan, -math.inf
    prob, accepted = check_hmc_trajectory_end(s)
    if shape[0] > 2:
        assert not accepted[:2].any() and (prob[:2] == 0).all()
    assert 0 < accepted.sum() < shape[0] or shape[0] < 5  # the random cases mix accepts and rejects


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_mala_propose_and_accept_match_reference(fused_backend_state, shape, dtype):
    s = fused_backend_state(shape, dtype)
    z_prop = fused.mala_propose(s["z"], s["grad"], s["step"], noise=s["noise"])
    _close(z_prop, reference.mala_propose(s["z"], s["grad"], s["step"], s["noise"]))
    if shape[0] > 2:
        s["potential2"][0], s["potential2"][1] = math.nan, math.inf
    accepted = check_mala_accept(s)
    if shape[0] > 2:
        assert not accepted[:2].any()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ula_and_kinetic_langevin_match_reference(fused_backend_state, shape, dtype):
    s = fused_backend_state(shape, dtype)
    z = s["z"].clone()
    fused.ula_step(z, s["grad"], s["step"], noise=s["noise"])
    _close(z, reference.ula_step(s["z"], s["grad"], s["step"], s["noise"]))
    z, v = s["z"].clone(), s["p"].clone()
    fused.kinetic_langevin_baoa(z, v, s["grad"], s["step"], s["friction"], noise=s["noise"])
    z_ref, v_ref = reference.kinetic_langevin_baoa(s["z"], s["p"], s["grad"], s["step"], s["friction"], s["noise"])
    _close(z, z_ref), _close(v, v_ref)


def test_in_kernel_noise_is_standard_normal_and_repeatable(fused_backend_state):
    """ULA with grad = 0 and h = 1/2 moves z by exactly the kernel's noise xi."""
    s = fused_backend_state((512, 128), torch.float64)
    device = s["z"].device
    zeros, half = torch.zeros(512, 128, dtype=torch.float64, device=device), torch.full((512,), 0.5, dtype=torch.float64,
                                                                                        device=device)

    def draw(seed):
        z = zeros.clone()
        fused.ula_step(z, zeros, half, generator=torch.Generator(device=device).manual_seed(seed))
        return z

    xi = draw(0)
    n = xi.numel()
    assert abs(xi.mean().item()) < 5 / math.sqrt(n)
    assert abs(xi.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs(((xi.flatten() > 1.96).double().mean() - 0.025).item()) < 5 * math.sqrt(0.025 / n)
    flat = xi.flatten()
    assert abs(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1].item()) < 5 / math.sqrt(n)
    assert torch.equal(xi, draw(0)) and not torch.equal(xi, draw(1))


def test_hmc_draw_momentum_is_standard_normal_with_its_kinetic_energy(fused_backend_state):
    s = fused_backend_state((512, 128), torch.float64)
    momentum, kinetic = fused.hmc_draw_momentum(s["z"], generator=torch.Generator(device=s["z"].device).manual_seed(3))
    _close(kinetic, 0.5 * (momentum * momentum).sum(1))
    n = momentum.numel()
    assert abs(momentum.mean().item()) < 5 / math.sqrt(n) and abs(momentum.var().item() - 1) < 5 * math.sqrt(2 / n)


def _gaussian_grad(z):
    return z.clone()  # U(z) = |z|^2 / 2 (a copy: the in-place ops refuse a grad that aliases z)


def _leapfrog(z, p, h, n_steps):
    z, p = z.clone(), p.clone()
    step = torch.full(z.shape[:1], h, dtype=z.dtype, device=z.device)
    for i in range(n_steps):
        fused.leapfrog_kick_drift(z, p, _gaussian_grad(z), step, 0.5 if i == 0 else 1.0)
    p -= 0.5 * h * _gaussian_grad(z)
    return z, p


def test_leapfrog_is_reversible_and_its_energy_error_shrinks_as_h_squared(fused_backend_state):
    s = fused_backend_state((16, 7), torch.float64)
    z0, p0 = s["z"], s["p"]
    z1, p1 = _leapfrog(z0, p0, 0.1, 25)
    z_back, p_back = _leapfrog(z1, -p1, 0.1, 25)
    torch.testing.assert_close(z_back, z0, rtol=0, atol=1e-12)
    torch.testing.assert_close(-p_back, p0, rtol=0, atol=1e-12)

    def energy_error(h):  # same trajectory length 2.0
        z, p = _leapfrog(z0, p0, h, round(2.0 / h))
        return ((0.5 * (z**2 + p**2).sum(1)) - 0.5 * (z0**2 + p0**2).sum(1)).abs().max().item()

    ratio = energy_error(0.2) / energy_error(0.1)
    assert 3.0 < ratio < 5.0  # h^2: halving h divides the error by about 4


def test_bad_state_is_rejected():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="p must be a contiguous tensor like z"):
        fused.leapfrog_kick_drift(z, torch.randn(4, 2), z, torch.ones(4))
    with pytest.raises(ValueError, match="step_size must be a"):
        fused.ula_step(z, z, torch.ones(3))
    with pytest.raises(ValueError, match="z must be a contiguous"):
        fused.ula_step(torch.randn(4, 3, dtype=torch.float16), z, torch.ones(4))
    with pytest.raises(TypeError, match="kick_fraction must be a number"):
        fused.leapfrog_kick_drift(z, torch.randn(4, 3), torch.randn(4, 3), torch.ones(4), "0.5")


def test_kernels_for_runs_under_torch_compile_fullgraph(fused_backend_state):
    """The kernels `kernels_for` returns trace as opaque ops (fake rules, in-place updates per their schemas)
    and give the eager numbers, with in-kernel noise from one seed."""
    s = fused_backend_state((8, 5), torch.float64)
    seed = fused.seed(s["z"], torch.Generator(device=s["z"].device).manual_seed(1))

    def steps(z, p, v, grad, step_size, friction):
        kernels = fused.kernels_for(z)
        kernels.leapfrog_kick_drift(z, p, grad, step_size, 0.5)
        z_prop = kernels.mala_propose(z, grad, step_size, seed, None)
        kernels.ula_step(z_prop, grad, step_size, seed, None)
        kernels.kinetic_langevin_baoa(z_prop, v, grad, step_size, friction, seed, None)
        momentum, kinetic = kernels.hmc_draw_momentum(z, seed)
        return z_prop, momentum, kinetic

    def run(fn):
        state = [s[name].clone() for name in ("z", "p", "p", "grad", "step", "friction")]
        return [*fn(*state), *state[:3]]

    for actual, expected in zip(run(torch.compile(steps, fullgraph=True, backend="aot_eager")), run(steps)):
        _close(actual, expected)
