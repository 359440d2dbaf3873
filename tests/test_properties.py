"""Property-based tests (hypothesis, derandomized: the same examples every run) of the ops against the fp64
reference (kale_fast.reference) on every backend that runs on the CPU here: reference, cpp, and triton through
its interpreter (tests/conftest.py switches it on). Inputs are rounded to the tested dtype first; the oracle then
computes in fp64 on those values, so the tolerance is the dtype's own rounding of the result."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kale_fast as kf
from kale_fast import reference
from kale_fast.ops import _backend, integrators
from kale_fast.reference import integrators as oracle

CPU_BACKENDS = [name for name in ("reference", "cpp", "triton") if _backend._AVAILABILITY[name].get("cpu") is None]
# A few units in the last place of the dtype results are returned in (as tests/test_kale.py).
RTOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 3e-5, torch.float64: 1e-11}
SETTINGS = settings(derandomize=True, max_examples=12, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _floats(magnitude):
    return st.floats(min_value=-magnitude, max_value=magnitude, allow_nan=False, allow_infinity=False, width=32)


def _vector(max_size=40, magnitude=60.0):
    return st.lists(_floats(magnitude), min_size=1, max_size=max_size)


def _close(actual, expected, dtype):
    """actual (in dtype) against the fp64 oracle, relative to the largest entry of the oracle."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    rtol = RTOL[dtype]
    scale = max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(actual.double(), expected.to(dtype).double(), rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(e_data=_vector(), e_gen=_vector(), a=st.one_of(st.none(), _floats(20.0)),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]))
def test_kale_loss_and_its_gradients_match_the_fp64_oracle(backend, e_data, e_gen, a, dtype):
    inputs = [torch.tensor(e_data, dtype=dtype), torch.tensor(e_gen, dtype=dtype)]
    inputs += [] if a is None else [torch.tensor(a, dtype=torch.float32)]
    oracle_inputs = [t.double().requires_grad_() for t in inputs]
    expected = reference.kale_loss(*oracle_inputs, *([None] if a is None else []))
    expected_grads = torch.autograd.grad(expected, oracle_inputs)
    inputs = [t.requires_grad_() for t in inputs]
    with kf.use_backend(backend):
        loss = kf.kale_loss(*inputs, *([None] if a is None else []))
        grads = torch.autograd.grad(loss, inputs)
    _close(loss, expected.detach(), dtype)
    for grad, expected_grad, t in zip(grads, expected_grads, inputs):
        _close(grad, expected_grad, t.dtype)


def _near(data, dtype, center, max_size=40):
    """center + small integers, rounded to dtype (at large |center| they round to center itself: constant inputs)."""
    offsets = data.draw(st.lists(st.integers(-8, 8), min_size=1, max_size=max_size))
    return (center + torch.tensor(offsets, dtype=torch.float64)).to(dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([torch.float32, torch.float64]), with_a=st.booleans())
def test_kale_loss_is_exact_at_any_scale(backend, data, dtype, with_a):
    """Energies and A of any magnitude up to the dtype's limits, e_gen + A small (the regime where the objective
    is not all overflow or underflow): the loss and gradients against the fp64 oracle on the same values. The
    loss is held to the rounding of its largest term (a mean of values of size |c| is known to eps * |c|);
    the gradients, which do not depend on the magnitude, to the dtype's rounding."""
    max_exponent = int(math.log2(torch.finfo(dtype).max)) - 1

    def magnitude():
        return data.draw(st.sampled_from([-1.0, 1.0])) * 2.0 ** data.draw(st.integers(0, max_exponent)) * 1.375

    c_gen, c_data = magnitude(), magnitude()
    e_gen, e_data = _near(data, dtype, c_gen), _near(data, dtype, c_data)
    inputs = [e_data, e_gen] + ([torch.tensor(-c_gen, dtype=dtype)] if with_a else [])
    oracle_inputs = [t.double().requires_grad_() for t in inputs]
    expected = reference.kale_loss(*oracle_inputs, *([] if with_a else [None]))
    expected_grads = torch.autograd.grad(expected, oracle_inputs)
    inputs = [t.requires_grad_() for t in inputs]
    with kf.use_backend(backend):
        loss = kf.kale_loss(*inputs, *([] if with_a else [None]))
        grads = torch.autograd.grad(loss, inputs)
    terms = max(abs(c_gen), abs(c_data), abs(expected.item()), 1.0)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=0, atol=RTOL[dtype] * terms)
    for grad, expected_grad, t in zip(grads[:2], expected_grads, inputs):
        _close(grad, expected_grad, t.dtype)
    if with_a:  # d A = 1 - mean(exp(-e_gen - A)): a difference of terms of size 1
        torch.testing.assert_close(grads[2].double(), expected_grads[2], rtol=0, atol=RTOL[dtype])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data(), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       keepdim=st.booleans(), offset=_floats(1000.0))
def test_log_mean_exp_and_its_gradient_match_the_fp64_oracle(backend, data, shape, dtype, keepdim, offset):
    n = torch.Size(shape).numel()
    values = data.draw(st.lists(_floats(30.0), min_size=n, max_size=n))
    x = (torch.tensor(values, dtype=torch.float64).reshape(shape) + offset).to(dtype)
    dims = data.draw(st.one_of(st.none(), st.sets(st.integers(0, len(shape) - 1), min_size=1).map(sorted)))
    dim = None if dims is None else dims[0] if len(dims) == 1 else tuple(dims)
    oracle_x = x.double().requires_grad_()
    expected = reference.log_mean_exp(oracle_x, dim=dim, keepdim=keepdim)
    (expected_grad,) = torch.autograd.grad(expected.sum(), oracle_x)
    x.requires_grad_()
    with kf.use_backend(backend):
        out = kf.log_mean_exp(x, dim=dim, keepdim=keepdim)
        (grad,) = torch.autograd.grad(out.sum(), x)
    _close(out, expected.detach(), dtype)
    _close(grad, expected_grad, dtype)
    # the gradient of each reduced slice is a softmax: it sums to 1 up to the accumulation's rounding
    slices = grad.double().sum(dim=dims if dims is not None else list(range(len(shape))))
    torch.testing.assert_close(slices, torch.ones_like(slices), rtol=0, atol=50 * RTOL[dtype])


def _states(data, dtype, names, per_chain=()):
    b, n = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 5))
    draw = lambda *size, magnitude=5.0: torch.tensor(  # noqa: E731
        data.draw(st.lists(_floats(magnitude), min_size=int(torch.Size(size).numel()),
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
    expected_z, expected_p = oracle.leapfrog_kick_drift(**_fp64(s), kick_fraction=kick_fraction)
    with kf.use_backend(backend):
        integrators.leapfrog_kick_drift(s["z"], s["p"], s["grad"], s["step_size"], kick_fraction)
    _close(s["z"], expected_z, dtype)
    _close(s["p"], expected_p, dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data(), dtype=ELEMENTWISE_DTYPES)
def test_langevin_updates_match_the_oracle(backend, data, dtype):
    s = _states(data, dtype, ("z", "v", "grad", "noise"))
    s["friction"] = s["step_size"] * 3
    o = _fp64(s)
    expected_prop = oracle.mala_propose(o["z"], o["grad"], o["step_size"], o["noise"])
    expected_z, expected_v = oracle.kinetic_langevin_baoa(**o)
    with kf.use_backend(backend):
        proposal = integrators.mala_propose(s["z"], s["grad"], s["step_size"], noise=s["noise"])
        ula_z = s["z"].clone()
        integrators.ula_step(ula_z, s["grad"], s["step_size"], noise=s["noise"])
        integrators.kinetic_langevin_baoa(s["z"], s["v"], s["grad"], s["step_size"], s["friction"], noise=s["noise"])
    for actual, expected in ((proposal, expected_prop), (ula_z, expected_prop), (s["z"], expected_z),
                             (s["v"], expected_v)):
        _close(actual, expected, dtype)


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
    expected_hmc = oracle.hmc_trajectory_end(*[t.clone() for t in hmc_args])
    expected_mala = oracle.mala_accept(*[t.clone() for t in mala_args])
    with kf.use_backend(backend):
        hmc_prob, hmc_accepted = integrators.hmc_trajectory_end(*hmc_args)
        mala_prob, mala_accepted, mala_error = integrators.mala_accept(*mala_args)
    hmc_actual = (hmc_args[0], hmc_args[3], hmc_args[2], hmc_prob)  # z, potential, grad updated in place
    mala_actual = (mala_args[3], mala_args[4], mala_args[5], mala_prob)  # the proposal becomes the state
    for actual, expected in zip((*hmc_actual, *mala_actual), (*expected_hmc[:4], *expected_mala[:4])):
        _close(actual, expected, torch.float64)
    assert torch.equal(hmc_accepted, expected_hmc[4]) and torch.equal(mala_accepted, expected_mala[4])
    _close(mala_error, expected_mala[5], torch.float64)
