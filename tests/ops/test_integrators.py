"""Fused MCMC updates (kale_fast.ops.integrators) against kale_fast.reference.integrators on every backend, plus
the properties the samplers rely on: in-kernel noise statistics and repeatability, leapfrog reversibility and its
O(h^2) energy error; in-place buffers checked; property-based comparisons with the fp64 oracle; the Triton kernels'
tiling, large states and 64-bit noise counters through Triton's interpreter."""
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import kale_fast as kf
from kale_fast.ops import integrators as fused
from kale_fast.reference import integrators as reference
from tests.ops._properties import CPU_BACKENDS, SETTINGS, close_to_oracle, floats


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


@pytest.fixture
def fused_backend_state(fused):
    """A factory of random integrator states on the fused backend's device: (shape, dtype) -> dict."""
    _, device = fused
    return lambda shape, dtype: _state(shape, dtype, device, seed=shape[0] * 7 + shape[1])


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


def _check_energy_error(actual, expected, terms):
    """An energy error (-log of a Metropolis ratio) against the reference's: a difference of sums over the row,
    so rounding is relative to the size of its terms (B,), not of the result; NaN and +-inf must match."""
    tol = 1e-5 if actual.dtype == torch.float32 else 1e-12
    finite = torch.isfinite(expected)
    torch.testing.assert_close(actual[~finite], expected[~finite], equal_nan=True)
    assert ((actual - expected)[finite].abs() <= tol * (1 + terms[finite])).all()


def check_hmc_trajectory_end(s: dict):
    """The fused trajectory end on state s against the reference, outputs, energy error and in-place updates;
    returns (accept_prob, accepted)."""
    z, grad, potential = s["z"].clone(), s["grad"].clone(), s["potential"].clone()
    prob, accepted, energy_error = fused.hmc_trajectory_end(z, s["p"], grad, potential, s["z2"], s["potential2"],
                                                            s["grad2"], s["kinetic"], s["step"], s["log_u"])
    expected = reference.hmc_trajectory_end(s["z"], s["p"], s["grad"], s["potential"], s["z2"], s["potential2"],
                                            s["grad2"], s["kinetic"], s["step"], s["log_u"])
    for actual, want in zip((z, potential, grad, prob), expected[:4]):
        _close(actual, want)
    assert torch.equal(accepted, expected[4])
    end_momentum = s["p"] - 0.5 * s["step"][:, None] * s["grad"]
    terms = (s["potential"].abs() + s["potential2"].abs() + s["kinetic"].abs()
             + 0.5 * (end_momentum * end_momentum).sum(1))
    _check_energy_error(energy_error, expected[5], terms)
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
    h = s["step"][:, None]
    terms = (s["potential"].abs() + s["potential2"].abs() + (((s["z2"] - s["z"] + h * s["grad"]) ** 2).sum(1)
             + ((s["z"] - s["z2"] + h * s["grad2"]) ** 2).sum(1)) / (4 * s["step"]))
    _check_energy_error(energy_error, expected[5], terms)
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


# --- integrator ops: buffers updated in place ---------------------------------------------------------------

# Each in-place op: its arguments and the ones it updates in place (names as in kale_fast.ops.integrators).
IN_PLACE_OPS = {
    "leapfrog_kick_drift": (("z", "p", "grad", "step_size"), ("z", "p")),
    "hmc_trajectory_end": (("z", "p", "grad", "potential", "z0", "potential0", "grad0", "kinetic0", "step_size",
                            "log_uniform"), ("z", "grad", "potential")),
    "mala_accept": (("z", "potential", "grad", "z_prop", "potential_prop", "grad_prop", "step_size", "log_uniform"),
                    ("z_prop", "potential_prop", "grad_prop")),
    "ula_step": (("z", "grad", "step_size"), ("z",)),
    "kinetic_langevin_baoa": (("z", "v", "grad", "step_size", "friction"), ("z", "v")),
}


def _arguments(b=4, n=3):
    """Fresh, separate tensors for every argument name of IN_PLACE_OPS."""
    gen = torch.Generator().manual_seed(0)
    states = ("z", "p", "grad", "z0", "grad0", "z_prop", "grad_prop", "v")
    per_chain = ("potential", "potential0", "kinetic0", "potential_prop", "log_uniform")
    arguments = {name: torch.randn(b, n, generator=gen, dtype=torch.float64) for name in states}
    arguments.update({name: torch.randn(b, generator=gen, dtype=torch.float64) for name in per_chain})
    arguments.update(step_size=torch.full((b,), 0.1, dtype=torch.float64), friction=torch.ones(b, dtype=torch.float64))
    return arguments


def _call(op, **replace):
    from kale_fast.ops import integrators

    arguments = {**_arguments(), **replace}
    return getattr(integrators, op)(*[arguments[name] for name in IN_PLACE_OPS[op][0]])


@pytest.mark.parametrize("op", IN_PLACE_OPS)
def test_in_place_buffers_that_require_grad_or_alias_another_are_refused(fused, op):
    names, updated = IN_PLACE_OPS[op]
    shapes = {name: t.shape for name, t in _arguments().items()}
    _call(op)  # separate tensors: accepted
    for name in updated:
        leaf = _arguments()[name].requires_grad_()
        with pytest.raises(ValueError, match=f"{name} is updated in place and must not require grad"):
            _call(op, **{name: leaf})
        with torch.no_grad():  # the check does not depend on grad mode
            with pytest.raises(ValueError, match=f"{name} is updated in place and must not require grad"):
                _call(op, **{name: leaf})
        for other in names:
            if other != name and shapes[other] == shapes[name]:
                shared = _arguments()[name]
                with pytest.raises(ValueError, match=f"(({name}|{other}) is updated in place and shares memory "
                                                     f"with ({name}|{other}))"):
                    _call(op, **{name: shared, other: shared})  # the very same tensor
    buffer = torch.randn(5, 3, dtype=torch.float64)  # overlapping, not identical: two views of one buffer
    other = next(n for n in names if n != updated[0] and shapes[n] == shapes[updated[0]])
    with pytest.raises(ValueError, match="shares memory with"):
        _call(op, **{updated[0]: buffer[:4], other: buffer[1:]})


def test_disjoint_views_of_one_buffer_are_accepted():
    from kale_fast.ops import integrators

    buffer, step = torch.randn(8, 3, dtype=torch.float64), torch.full((4,), 0.1, dtype=torch.float64)
    z, grad = buffer[:4], buffer[4:]
    expected = z - 0.1 * grad
    integrators.ula_step(z, grad, step, noise=torch.zeros(4, 3, dtype=torch.float64))
    torch.testing.assert_close(buffer[:4], expected)


# --- properties against the fp64 oracle (hypothesis; see _properties.py) -------------------------------------

def _states(data, dtype, names, per_chain=()):
    b, n = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5))
    draw = lambda *size, magnitude=5.0: torch.tensor(  # noqa: E731
        data.draw(st.lists(floats(magnitude), min_size=int(torch.Size(size).numel()),
                           max_size=int(torch.Size(size).numel()))), dtype=torch.float64).reshape(size).to(dtype)
    states = {name: draw(b, n) for name in names}
    states.update({name: draw(b, magnitude=20.0) for name in per_chain})
    states["step_size"] = (draw(b, magnitude=1.0).abs() + 0.01).to(dtype)
    return states


def _fp64(states):
    return {name: t.double() for name, t in states.items()}


ELEMENTWISE_DTYPES = st.sampled_from([torch.float32, torch.float64])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data(), dtype=ELEMENTWISE_DTYPES, kick_fraction=st.sampled_from([0.5, 1.0]))
def test_leapfrog_kick_drift_matches_the_oracle(backend, data, dtype, kick_fraction):
    s = _states(data, dtype, ("z", "p", "grad"))
    expected_z, expected_p = reference.leapfrog_kick_drift(**_fp64(s), kick_fraction=kick_fraction)
    with kf.use_backend(backend):
        fused.leapfrog_kick_drift(s["z"], s["p"], s["grad"], s["step_size"], kick_fraction)
    close_to_oracle(s["z"], expected_z, dtype)
    close_to_oracle(s["p"], expected_p, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data(), dtype=ELEMENTWISE_DTYPES)
def test_langevin_updates_match_the_oracle(backend, data, dtype):
    s = _states(data, dtype, ("z", "v", "grad", "noise"))
    s["friction"] = s["step_size"] * 3
    o = _fp64(s)
    expected_prop = reference.mala_propose(o["z"], o["grad"], o["step_size"], o["noise"])
    expected_z, expected_v = reference.kinetic_langevin_baoa(**o)
    with kf.use_backend(backend):
        proposal = fused.mala_propose(s["z"], s["grad"], s["step_size"], noise=s["noise"])
        ula_z = s["z"].clone()
        fused.ula_step(ula_z, s["grad"], s["step_size"], noise=s["noise"])
        fused.kinetic_langevin_baoa(s["z"], s["v"], s["grad"], s["step_size"], s["friction"], noise=s["noise"])
    for actual, expected in ((proposal, expected_prop), (ula_z, expected_prop), (s["z"], expected_z),
                             (s["v"], expected_v)):
        close_to_oracle(actual, expected, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data())
def test_metropolis_tests_match_the_oracle(backend, data):
    """fp64 only: in fp32 an accept decision within rounding of its threshold may rightly differ."""
    s = _states(data, torch.float64, ("z", "p", "grad", "z0", "grad0", "z_prop", "grad_prop"),
                ("potential", "potential0", "kinetic0", "potential_prop", "log_uniform"))
    s["log_uniform"] = -s["log_uniform"].abs()
    hmc_args = [s[k].clone() for k in ("z", "p", "grad", "potential", "z0", "potential0", "grad0", "kinetic0",
                                       "step_size", "log_uniform")]
    mala_args = [s[k].clone() for k in ("z", "potential", "grad", "z_prop", "potential_prop", "grad_prop",
                                        "step_size", "log_uniform")]
    expected_hmc = reference.hmc_trajectory_end(*[t.clone() for t in hmc_args])
    expected_mala = reference.mala_accept(*[t.clone() for t in mala_args])
    with kf.use_backend(backend):
        hmc_prob, hmc_accepted, hmc_error = fused.hmc_trajectory_end(*hmc_args)
        mala_prob, mala_accepted, mala_error = fused.mala_accept(*mala_args)
    hmc_actual = (hmc_args[0], hmc_args[3], hmc_args[2], hmc_prob)  # z, potential, grad updated in place
    mala_actual = (mala_args[3], mala_args[4], mala_args[5], mala_prob)  # the proposal becomes the state
    for actual, expected in zip((*hmc_actual, *mala_actual), (*expected_hmc[:4], *expected_mala[:4])):
        close_to_oracle(actual, expected, torch.float64)
    assert torch.equal(hmc_accepted, expected_hmc[4]) and torch.equal(mala_accepted, expected_mala[4])
    close_to_oracle(hmc_error, expected_hmc[5], torch.float64)
    close_to_oracle(mala_error, expected_mala[5], torch.float64)


# --- Triton kernels through the interpreter: the tiling (rows split over programs, partial sums added by a
# second pass, rejected rows restored tile by tile) against the reference, large shapes, 64-bit Philox counters,
# fp64 noise ---------------------------------------------------------------------------------------------------

@pytest.fixture
def small_tiles(monkeypatch, triton_integrators):
    """Tiles of at most 64 elements and second passes of 2 partials a step: many tiles at small shapes."""
    monkeypatch.setattr(triton_integrators, "_MAX_TILE", 64)
    monkeypatch.setattr(triton_integrators, "_MIN_TILE", 16)
    monkeypatch.setattr(triton_integrators, "_SUM_TILE", 2)


@pytest.mark.parametrize("shape", [(1, 1), (256, 11), (4096, 2), (64, 4096), (3, 100_000), (1, 1 << 22),
                                   (1 << 20, 1), (1 << 20, 1 << 21)])
def test_gpu_tiling_covers_the_state_within_limits(monkeypatch, triton_integrators, shape):
    monkeypatch.setattr(triton_integrators, "_MAX_TILE", 2048)
    n_rows, n_cols = shape
    t = triton_integrators.tiling(n_rows, n_cols, 264)  # two programs per multiprocessor of an H100
    assert t.block_cols * t.col_tiles >= n_cols > t.block_cols * (t.col_tiles - 1)
    assert t.rows * t.row_blocks >= n_rows > t.rows * (t.row_blocks - 1)
    assert t.rows == 1 or t.col_tiles == 1  # several rows per program only when one tile spans a row
    assert t.rows * t.block_cols <= 2048 and t.grid[0] <= 2**31 - 1
    assert 1 <= t.num_warps <= 8 and t.sum_rows * t.sum_block <= 1024
    assert t.grid[0] >= min(264, n_rows * n_cols // 2048)  # programs enough to fill the device, if elements are
    if shape == (256, 11):
        assert t.grid[0] == 16  # was one program


def _metropolis_state(shape, dtype):
    s = _state(shape, dtype, "cpu", seed=shape[0] + shape[1])
    b = shape[0]
    s["log_u"][0] = -math.inf  # accepted wherever the ratio is finite
    if b > 1:
        s["log_u"][1] = math.inf  # rejected
    if b > 2:
        s["potential"][2] = s["potential2"][2] = math.nan  # rejected
    return s


def _check_all_updates(shape, dtype):
    """Every Triton update against the reference on one state (noise given, so results are comparable)."""
    s = _metropolis_state(shape, dtype)
    check_leapfrog_kick_drift(s)
    prob, accepted = check_hmc_trajectory_end(s)
    assert shape[0] < 2 or (accepted[0] != accepted[1])  # both branches of the restore ran
    accepted = check_mala_accept(s)
    _close(fused.mala_propose(s["z"], s["grad"], s["step"], noise=s["noise"]),
           reference.mala_propose(s["z"], s["grad"], s["step"], s["noise"]))
    z, v = s["z"].clone(), s["p"].clone()
    fused.kinetic_langevin_baoa(z, v, s["grad"], s["step"], s["friction"], noise=s["noise"])
    z_ref, v_ref = reference.kinetic_langevin_baoa(s["z"], s["p"], s["grad"], s["step"], s["friction"], s["noise"])
    _close(z, z_ref), _close(v, v_ref)
    momentum, kinetic = fused.hmc_draw_momentum(s["z"], generator=torch.Generator().manual_seed(1))
    _close(kinetic, 0.5 * (momentum * momentum).sum(1))


# Each tiling once, fp32 and fp64 by turns (the tiling does not depend on the dtype; every update runs in both).
@pytest.mark.parametrize("shape, dtype", [((3, 300), torch.float32), ((5, 64), torch.float64),
                                          ((2, 1000), torch.float64), ((40, 3), torch.float32)])
def test_tiled_updates_match_reference(small_tiles, triton_integrators, shape, dtype):
    t = triton_integrators.tiling(*shape, triton_integrators.target_programs(torch.device("cpu")))
    assert (t.col_tiles > 2) == (shape[1] > 128)  # (3, 300): 5 tiles a row, partials added 2 at a time
    _check_all_updates(shape, dtype)


@pytest.mark.parametrize("shape", [(1, 1 << 22), (1 << 20, 1),
                                   pytest.param((1 << 20, 2), marks=pytest.mark.slow)])  # 10 s interpreted
def test_large_states_match_reference(triton_interpreter, shape):
    s = _metropolis_state(shape, torch.float64)
    prob, accepted = check_hmc_trajectory_end(s)
    if shape[0] > 1:
        momentum, kinetic = fused.hmc_draw_momentum(s["z"], generator=torch.Generator().manual_seed(2))
        _close(kinetic, 0.5 * (momentum * momentum).sum(1))
        assert abs(momentum.mean().item()) < 5 / math.sqrt(momentum.numel())


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_counters_are_64_bit(triton_interpreter, dtype):
    """The noise at element offset 2^32 + i is not the noise at i (a 32-bit counter would wrap)."""
    import triton.language as tl

    from tests.ops._triton_noise import randn_kernel

    seed = torch.tensor([12345])

    def draw(base):
        out = torch.empty(1024, dtype=dtype)
        randn_kernel[(1,)](seed, out, base, DTYPE=tl.float64 if dtype == torch.float64 else tl.float32, BLOCK=1024)
        return out

    low, high = draw(0), draw(2**32)
    assert torch.isfinite(low).all() and torch.isfinite(high).all()
    assert (low != high).all()
    assert abs(torch.corrcoef(torch.stack([low, high]))[0, 1].item()) < 5 / math.sqrt(1024)


def test_fp64_noise_has_fp64_resolution(triton_interpreter):
    """fp64 states get normals from 53-bit uniforms, not fp32 normals widened."""
    z = torch.zeros(64, 256, dtype=torch.float64)
    fused.ula_step(z, torch.zeros_like(z), torch.full((64,), 0.5, dtype=torch.float64),
                   generator=torch.Generator().manual_seed(0))
    assert (z.float().double() != z).float().mean().item() > 0.99
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel()) and abs(z.var().item() - 1) < 5 * math.sqrt(2 / z.numel())
