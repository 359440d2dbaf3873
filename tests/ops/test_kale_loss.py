"""kf.kale_loss and kf.log_mean_exp (kale_fast.ops.kale; benchmarked by benchmarks/bench_kale_loss.py): every fused
backend against kale_fast.reference, exact at any size and scale, bad input refused, custom ops and torch.compile;
gradients beyond first order; property-based comparisons with the fp64 oracle; Triton's split reduction."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import kale_fast as kf
from kale_fast import reference
from kale_fast.ops import _backend
from tests.ops._properties import CPU_BACKENDS, ORACLE_RTOL, SETTINGS, close_to_oracle, floats, vectors


SIZES = [1, 2, 127, 4099, 100_003]


DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


# Relative tolerance per dtype: a few units in the last place of the dtype the result is returned in.
RTOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float32: 2e-5, torch.float64: 1e-11}


def _energies(n, dtype, device, scale=3.0, generator=None, contiguous=True):
    """Fresh random energies; non-contiguous ones are every other element of a (n, 2) buffer's column."""
    if contiguous:
        x = torch.randn(n, generator=generator, dtype=torch.float64) * scale
    else:
        x = (torch.randn(n, 2, generator=generator, dtype=torch.float64) * scale)[:, 1]
    return x.to(dtype=dtype, device=device).requires_grad_()


def _loss_and_grads(fn, e_data, e_gen, log_partition):
    inputs = [e_data, e_gen] + ([log_partition] if log_partition is not None else [])
    loss = fn(e_data, e_gen, log_partition)
    return [loss, *torch.autograd.grad(loss, inputs)]


def _assert_close(actual, expected, dtype, rtol=None, scale_floor=1e-30):
    """Closeness relative to each tensor's largest entry (gradients), at least `scale_floor`."""
    rtol = RTOL[dtype] if rtol is None else rtol
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        scale = e.detach().double().abs().max().clamp_min(scale_floor)
        torch.testing.assert_close(a.double(), e.double(), rtol=rtol, atol=rtol * scale.item(), equal_nan=True)


# Every size with every dtype, the log-partition given in every other one: each size and each dtype runs with and
# without it (all pairs of the three factors, in 20 cases a backend instead of their 40 products).
KALE_CASES = [pytest.param(n, dtype, (i + j) % 2 == 1, id=f"{n}-{str(dtype)[6:]}-{'with_a' if (i + j) % 2 else 'dv'}")
              for i, n in enumerate(SIZES) for j, dtype in enumerate(DTYPES)]


@pytest.mark.parametrize("n, dtype, with_a", KALE_CASES)
def test_kale_loss_matches_reference(fused, n, dtype, with_a):
    _, device = fused
    gen = torch.Generator().manual_seed(n * 31 + DTYPES.index(dtype))
    e_data = _energies(n, dtype, device, generator=gen)
    e_gen = _energies(n + 3, dtype, device, generator=gen, contiguous=n % 2 == 1)
    a = torch.tensor(0.7, dtype=torch.float32, device=device, requires_grad=True) if with_a else None
    expected = _loss_and_grads(reference.kale_loss, e_data, e_gen, a)
    _assert_close(_loss_and_grads(kf.kale_loss, e_data, e_gen, a), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kale_loss_energies_of_magnitude_1e4(fused, dtype):
    """Energies up to 1e4 overflow exp; the fused op must agree with the fp64 math (DV form, and A at its optimum)
    up to the conditioning of exp(-(e + A)) at |e| = 1e4: an error of about 1e4 * eps relative to the terms,
    which are of order 1 (d/dA = 1 - mean(exp(-(e + A))) cancels to about 0 at the optimum)."""
    _, device = fused
    gen = torch.Generator().manual_seed(7)
    e_data = _energies(4099, dtype, device, scale=3e3, generator=gen)
    e_gen = _energies(4099, dtype, device, scale=3e3, generator=gen)
    with torch.no_grad():
        e_gen[0], e_gen[1] = -1e4, 1e4
    a_opt = reference.log_mean_exp(-e_gen.detach().double()).to(dtype).requires_grad_()
    for a in (None, a_opt):
        expected = _loss_and_grads(reference.kale_loss, e_data.double(), e_gen.double(),
                                   None if a is None else a.double())
        expected = [t.to(dtype) for t in expected]
        actual = _loss_and_grads(kf.kale_loss, e_data, e_gen, a)
        assert all(torch.isfinite(t).all() for t in actual)
        _assert_close(actual, expected, dtype, rtol=4e4 * torch.finfo(dtype).eps, scale_floor=1.0)


def test_kale_loss_gradcheck_fp64(fused):
    _, device = fused
    gen = torch.Generator().manual_seed(3)
    e_data = _energies(5, torch.float64, device, generator=gen)
    e_gen = _energies(9, torch.float64, device, generator=gen, contiguous=False)
    a = torch.tensor([0.2], dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d, g: kf.kale_loss(d, g), (e_data, e_gen))
    assert torch.autograd.gradcheck(kf.kale_loss, (e_data, e_gen, a))


def test_kale_equals_kl_for_shifted_gaussians(fused):
    """P = N(mu, 1), G = N(0, 1), E(x) = -mu x: with the optimal A = mu^2/2, KALE = -loss = KL = mu^2/2."""
    _, device = fused
    mu, n = 0.8, 100_000
    gen = torch.Generator().manual_seed(11)
    x_data = (torch.randn(n, generator=gen, dtype=torch.float64) + mu).to(device)
    x_gen = torch.randn(n, generator=gen, dtype=torch.float64).to(device)
    e_data, e_gen = -mu * x_data, -mu * x_gen
    kale_with_a = -kf.kale_loss(e_data, e_gen, torch.tensor(mu**2 / 2, dtype=torch.float64, device=device))
    kale_dv = -kf.kale_loss(e_data, e_gen)
    # Monte-Carlo standard error of mean(mu x) + mean(exp(mu x - mu^2/2)) is about
    # sqrt(mu^2 + exp(mu^2) - 1) / sqrt(n) = 0.0039 here; allow 5 of them.
    for kale in (kale_with_a, kale_dv):
        assert abs(kale.item() - mu**2 / 2) < 5 * 0.0039


def test_objective_is_below_donsker_varadhan_with_equality_at_optimal_a(fused):
    _, device = fused
    gen = torch.Generator().manual_seed(5)
    e_data = _energies(1000, torch.float64, device, generator=gen).detach()
    e_gen = _energies(3000, torch.float64, device, generator=gen).detach()
    dv_loss = kf.kale_loss(e_data, e_gen)
    a_opt = kf.log_mean_exp(-e_gen)
    torch.testing.assert_close(kf.kale_loss(e_data, e_gen, a_opt), dv_loss, rtol=0, atol=1e-12)
    for delta in (-3.0, -0.5, -1e-3, 1e-3, 0.5, 3.0):
        assert kf.kale_loss(e_data, e_gen, a_opt + delta) > dv_loss  # -F(E, A) >= -DV(E)


# --- exact at any size and scale (issue 20, items 1-3) -------------------------------------------------------
# Sizes per backend: the Triton interpreter runs each program in Python, so it gets the smallest (2^22 took 18 s
# there; 2^20 already sums across many programs and blocks).
LARGE_SIZES = {"reference": [20, 26], "cpp": [20, 22, 24, 26], "triton": [20], "cuda": [20, 24, 26]}


@pytest.mark.parametrize("log2_n", [20, 22, 24, 26])
def test_mean_of_a_constant_is_exact_at_any_size(fused, log2_n):
    """mean(e_data) of 0.1 (fp32) repeated 2^20 .. 2^26 times, e_gen = 0 (the loss is the mean): within one
    fp32 rounding of 0.1f (a running fp32 sum was off by 1.7e-2 at 2^24); d e_data is the constant 1/N."""
    backend, device = fused
    if log2_n not in LARGE_SIZES[backend]:
        pytest.skip(f"2^{log2_n} elements: too slow for the {backend} backend here")
    e_data = torch.full((2**log2_n,), 0.1, device=device, requires_grad=True)
    loss = kf.kale_loss(e_data, torch.zeros(1, device=device))
    exact = torch.tensor(0.1, dtype=torch.float32).double()
    assert abs(loss.double().item() - exact) <= torch.finfo(torch.float32).eps * exact
    (grad,) = torch.autograd.grad(loss, e_data)
    assert grad.shape == e_data.shape and bool((grad == 2.0**-log2_n).all())


def test_reused_gradient_buffers_are_never_shared():
    """The C++ backward keeps the memory of freed large gradients for the next call of the same size (no page
    faults); a gradient still alive is never handed out again, and a reused one holds the new values."""
    kf.set_backend("cpp")
    n = 2**19  # 2 MiB of fp32: above the 1 MiB from which buffers are kept
    gen = torch.Generator().manual_seed(4)
    e_data = torch.randn(n, generator=gen)
    first, second = (torch.randn(n, generator=gen).requires_grad_() for _ in range(2))
    (grad_first,) = torch.autograd.grad(kf.kale_loss(e_data, first), first)
    kept = grad_first.clone()
    (grad_second,) = torch.autograd.grad(kf.kale_loss(e_data, second), second)
    assert grad_first.data_ptr() != grad_second.data_ptr() and torch.equal(grad_first, kept)
    address = grad_first.data_ptr()
    del grad_first
    (again,) = torch.autograd.grad(kf.kale_loss(e_data, second), second)
    assert again.data_ptr() == address and torch.equal(again, grad_second)  # reused, with the new values
    rows = torch.randn(4, n // 4, generator=gen, requires_grad=True)
    (grad_rows,) = torch.autograd.grad(kf.log_mean_exp(rows, dim=1).sum(), rows)
    torch.testing.assert_close(grad_rows, torch.softmax(rows.detach(), dim=1))


@pytest.mark.parametrize("dtype, c", [(torch.float32, 1e6), (torch.float32, 1e8), (torch.float32, 1e30),
                                      (torch.float32, 3e38), (torch.float64, 1e16), (torch.float64, 1e300)])
def test_gradients_keep_one_over_m_whatever_a(fused, dtype, c):
    """e_gen = c, A = -c, M = 1000: d loss / d e_gen = -1/M (exp(-e_gen - (A + log M)) lost log M in A's rounding:
    -0.000335 at c = 1e8, -1 at 1e30), d A = 0, loss = mean(e_data) + A; without A (Donsker-Varadhan) the same
    -1/M; with e_data = c the loss is 0, up to the rounding of mean(e_data) (3c is not exact: eps * c)."""
    _, device = fused
    e_gen = torch.full((1000,), c, dtype=dtype, device=device, requires_grad=True)
    e_data = torch.full((3,), c, dtype=dtype, device=device, requires_grad=True)
    a = torch.tensor(-c, dtype=dtype, device=device, requires_grad=True)
    eps = torch.finfo(dtype).eps
    loss = kf.kale_loss(e_data, e_gen, a)
    grad_data, grad_gen, grad_a = torch.autograd.grad(loss, (e_data, e_gen, a))
    assert abs(loss.item()) <= eps * c and grad_a.item() == 0.0
    torch.testing.assert_close(grad_gen, torch.full_like(grad_gen, -1e-3), rtol=eps, atol=0)
    torch.testing.assert_close(grad_data, torch.full_like(grad_data, 1 / 3), rtol=eps, atol=0)
    dv = kf.kale_loss(e_data, e_gen)
    (dv_grad_gen,) = torch.autograd.grad(dv, e_gen)
    assert abs(dv.item()) <= eps * c
    torch.testing.assert_close(dv_grad_gen, torch.full_like(dv_grad_gen, -1e-3), rtol=eps, atol=0)


@pytest.mark.parametrize("dtype, big", [(torch.float32, 1e38), (torch.float64, 1e308)])
def test_a_mean_of_finite_values_does_not_overflow(fused, dtype, big):
    """mean(e_data) of 2^16 copies of 1e38 (fp32; 1e308 in fp64) is 1e38, not inf (the sum alone overflows);
    so is mean(exp(-e_gen - A)) when each term is near the largest finite value."""
    _, device = fused
    e_data = torch.full((2**16,), big, dtype=dtype, device=device)
    loss = kf.kale_loss(e_data, torch.zeros(4, dtype=dtype, device=device))
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double().cpu(), torch.tensor(big, dtype=torch.float64), rtol=1e-6, atol=0)
    log_big = math.log(big)
    e_gen = torch.full((2**10,), -log_big, dtype=dtype, device=device)  # exp(-e_gen) = big, each
    with_a = kf.kale_loss(torch.zeros(4, dtype=dtype, device=device), e_gen, 0.0)
    assert torch.isfinite(with_a)
    expected = math.exp(float(torch.tensor(log_big, dtype=dtype)))
    torch.testing.assert_close(with_a.double().cpu(), torch.tensor(expected - 1, dtype=torch.float64), rtol=1e-5,
                               atol=0)


@pytest.mark.parametrize("dtype, c", [(torch.float32, 1e30), (torch.float64, 1e300)])
def test_log_mean_exp_gradient_keeps_one_over_k(fused, dtype, c):
    """A constant row of c: log-mean-exp c, gradient 1/K per element (exp(x - out - log K) lost log K in out's
    rounding at large |c|)."""
    _, device = fused
    x = torch.full((3, 1000), c, dtype=dtype, device=device, requires_grad=True)
    out = kf.log_mean_exp(x, dim=1)
    assert bool((out == c).all())
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(grad, torch.full_like(grad, 1e-3), rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("with_a", [False, True], ids=["dv", "with_a"])
@pytest.mark.parametrize("special", ["nan_data", "nan_gen", "neg_inf_gen", "pos_inf_gen", "all_pos_inf_gen",
                                     "inf_data", "mixed_inf_data"])
def test_kale_loss_nan_and_inf_follow_fp64_math(fused, special, with_a):
    _, device = fused
    gen = torch.Generator().manual_seed(17)
    e_data = torch.randn(50, generator=gen, dtype=torch.float64)
    e_gen = torch.randn(70, generator=gen, dtype=torch.float64)
    if special == "nan_data":
        e_data[3] = math.nan
    elif special == "nan_gen":
        e_gen[4] = math.nan
    elif special == "neg_inf_gen":
        e_gen[5] = -math.inf
    elif special == "pos_inf_gen":
        e_gen[5] = math.inf
    elif special == "all_pos_inf_gen":
        e_gen[:] = math.inf
    elif special == "inf_data":
        e_data[0] = math.inf
    else:
        e_data[0], e_data[1] = math.inf, -math.inf
    e_data, e_gen = e_data.to(device).requires_grad_(), e_gen.to(device).requires_grad_()
    a = torch.tensor(0.1, dtype=torch.float64, device=device, requires_grad=True) if with_a else None
    expected = _loss_and_grads(reference.kale_loss, e_data, e_gen, a)
    actual = _loss_and_grads(kf.kale_loss, e_data, e_gen, a)
    for x, y in zip(actual, expected):
        torch.testing.assert_close(x, y, equal_nan=True)
    if special.startswith("nan"):
        assert torch.isnan(actual[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tiny_factor", [False, True], ids=["factor_folded", "tiny_factor"])
@pytest.mark.parametrize("path", ["exp_kernel", "kept_terms"])
def test_cpp_lean_exp_matches_fp64_over_its_whole_range(dtype, tiny_factor, path):
    """The C++ kernels' lean exp (csrc/vec_math.h) element by element against fp64, from where it reaches 0 through
    the subnormal results to its bound kLeanExpMax: with A = 0 and the incoming gradient -M * factor, the C++
    backward's d e_gen_i = -grad / M * exp(-e_gen_i - A) is factor * exp(-e_gen_i) with nothing rounded before
    the exp. The factor (a power of two) is 1, which exp_lean takes into its last product, or one too small for
    that (2^-100 fp32, 2^-1000 fp64), which multiplies its result. Two paths: the backward kernel op (the exp of
    the gradient's exponent), and kale_loss's eager C++ door (csrc/kale_cpu.h: the forward's kept exp terms times
    a factor per block, or the exp where a block's terms are not exact: one rounding more, fp32 within 2 ulp)."""
    finfo = torch.finfo(dtype)
    factor = (2.0**-100 if dtype == torch.float32 else 2.0**-1000) if tiny_factor else 1.0
    lo, lean_max = (-110.0, 65.0) if dtype == torch.float32 else (-750.0, 660.0)
    log_subnormal = math.log(finfo.smallest_normal * finfo.eps)  # the smallest subnormal's log
    edges = [math.log(finfo.smallest_normal), log_subnormal, log_subnormal - math.log(2), 0.0, -math.inf]
    x = torch.cat([torch.linspace(lo, lean_max, 300_001, dtype=torch.float64).clamp(max=lean_max),
                   torch.tensor([edge * factor for edge in edges for factor in (1 - 1e-9, 1, 1 + 1e-9)])])
    x = x.to(dtype)
    e_data, a, incoming = torch.zeros(1, dtype=dtype), torch.zeros((), dtype=dtype), -x.numel() * factor
    if path == "exp_kernel":
        state = torch.ops.kale_fast.kale_loss_forward(e_data, -x, a)[1]
        grad = torch.ops.kale_fast.kale_loss_backward(torch.tensor(incoming, dtype=dtype), e_data, -x, a, state)[1]
    else:
        e_gen = (-x).requires_grad_()
        loss = kf.kale_loss(e_data, e_gen, a, backend="cpp")
        (grad,) = torch.autograd.grad(loss, e_gen, grad_outputs=torch.tensor(incoming, dtype=dtype))
    expected = factor * torch.exp(x.double())
    assert bool((grad[expected < finfo.smallest_normal] > 0).any())  # subnormal results, not flushed to 0
    # fp32 (minimax polynomial) stays within 1 ulp, fp64 (Pade form) reaches 2 ulp on a few arguments; subnormal
    # results within one unit of the smallest subnormal
    ulps = (1 if path == "exp_kernel" else 2) if dtype == torch.float32 else 3
    bound = ulps * finfo.eps * expected + finfo.smallest_normal * finfo.eps
    error = (grad.double() - expected).abs()
    assert (error <= bound).all(), f"worst at exponent {x[(error / bound).argmax()].item()}"


def test_kale_loss_accepts_python_number_and_one_element_log_partition(fused):
    _, device = fused
    e_data, e_gen = torch.randn(10, device=device), torch.randn(12, device=device)
    expected = reference.kale_loss(e_data, e_gen, torch.tensor(0.5))
    torch.testing.assert_close(kf.kale_loss(e_data, e_gen, 0.5), expected)
    a = torch.full((1, 1), 0.5, device=device, requires_grad=True)
    kf.kale_loss(e_data, e_gen, a).backward()
    assert a.grad.shape == (1, 1)


@pytest.mark.parametrize(
    "args, error, match",
    [
        ((torch.randn(0), torch.randn(3)), ValueError, "e_data must have at least one element"),
        ((torch.randn(3), torch.randn(0)), ValueError, "e_gen must have at least one element"),
        ((torch.randn(3), torch.randn(3, dtype=torch.float64)), TypeError, "one dtype"),
        ((torch.arange(3), torch.randn(3)), TypeError, "e_data must be a floating-point tensor"),
        ((torch.randn(3), [1.0, 2.0]), TypeError, "e_gen must be a torch.Tensor"),
        ((torch.randn(3), torch.randn(3, device="meta")), ValueError, "one device"),
        ((torch.randn(3), torch.randn(3), torch.zeros(2)), ValueError, "log_partition must be a scalar"),
        ((torch.randn(3), torch.randn(3), torch.zeros((), dtype=torch.int64)), TypeError,
         "log_partition must be a floating"),
        ((torch.randn(3), torch.randn(3), "0.5"), TypeError, "log_partition must be a torch.Tensor"),
    ],
)
def test_kale_loss_rejects_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        kf.kale_loss(*args)


@pytest.mark.parametrize("shape, dim, keepdim", [
    ((4099,), None, False), ((1,), None, True), ((3, 10, 7), (0, 2), False), ((3, 10, 7), -1, True),
    ((6, 5), 0, False), ((2, 3, 4), (2, 0, 1), True), ((), None, False), ((24, 33), 1, False),
])  # rows are few: no backend changes path with their number (one program or block per row, and under the C++
# kernels' 32768-element grain), while Triton's interpreter pays for each row
@pytest.mark.parametrize("dtype", DTYPES)
def test_log_mean_exp_matches_reference(fused, shape, dim, keepdim, dtype):
    _, device = fused
    gen = torch.Generator().manual_seed(len(shape) + DTYPES.index(dtype))
    base = torch.randn(*shape, 2, generator=gen, dtype=torch.float64) * 4
    x = base[..., 0].to(dtype=dtype, device=device).requires_grad_()  # non-contiguous
    expected = reference.log_mean_exp(x, dim, keepdim)
    actual = kf.log_mean_exp(x, dim, keepdim)
    weights = torch.randn(expected.shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    _assert_close([actual, *torch.autograd.grad((actual * weights).sum(), x)],
                  [expected, *torch.autograd.grad((expected * weights).sum(), x)], dtype)


def test_log_mean_exp_gradcheck_fp64(fused):
    _, device = fused
    x = torch.randn(2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: kf.log_mean_exp(t, dim=(0, 2)), (x,))
    assert torch.autograd.gradcheck(kf.log_mean_exp, (x,))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=torch.randn(0)), ValueError, "x must have at least one element"),
    (dict(x=torch.arange(4)), TypeError, "floating-point"),
    (dict(x=torch.randn(3, 4), dim=2), ValueError, "out of range"),
    (dict(x=torch.randn(3, 4), dim=(0, -2)), ValueError, "twice"),
    (dict(x=torch.randn(3, 4), dim=()), ValueError, "dim=None"),
    (dict(x=torch.randn(3, 4), dim=1.0), TypeError, "dim must be"),
    (dict(x=torch.randn(3, 4), keepdim=1), TypeError, "keepdim must be a bool"),
])
def test_log_mean_exp_rejects_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        kf.log_mean_exp(**kwargs)


def test_custom_ops_pass_opcheck():
    """torch.library.opcheck: schema, fake (meta) rules and autograd registration agree with the kernels."""
    kf.set_backend("cpp")
    e_data, e_gen = torch.randn(7, dtype=torch.float64), torch.randn(11, dtype=torch.float64)
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    ops = torch.ops.kale_fast
    torch.library.opcheck(ops.kale_loss, (e_data.requires_grad_(), e_gen.requires_grad_(), a, "cpp"))
    torch.library.opcheck(ops.kale_loss, (e_data, e_gen, None, "cpp"))
    loss, state = ops.kale_loss_forward(e_data.detach(), e_gen.detach(), a.detach())
    for a_or_none in (a.detach(), None):
        torch.library.opcheck(ops.kale_loss_forward, (e_data.detach(), e_gen.detach(), a_or_none))
        torch.library.opcheck(ops.kale_loss_backward, (torch.tensor(1.0, dtype=torch.float64), e_data.detach(),
                                                       e_gen.detach(), a_or_none, state))
    rows = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.log_mean_exp_rows, (rows, "cpp"))
    out = ops.log_mean_exp_forward(rows.detach())
    torch.library.opcheck(ops.log_mean_exp_forward, (rows.detach(),))
    torch.library.opcheck(ops.log_mean_exp_backward, (torch.randn(3, dtype=torch.float64), rows.detach(), out))


def test_torch_compile_fullgraph():
    """A training-style function calling both ops compiles without graph breaks and matches eager."""
    kf.set_backend("cpp")

    def objective(e_data, e_gen, a):
        return kf.kale_loss(e_data * 2, e_gen, a) + kf.log_mean_exp(e_gen.view(5, 20), dim=1).sum()

    compiled = torch.compile(objective, fullgraph=True)
    e_data, e_gen = torch.randn(50, requires_grad=True), torch.randn(100, requires_grad=True)
    a = torch.tensor(0.1, requires_grad=True)
    expected = objective(e_data, e_gen, a)
    expected_grads = torch.autograd.grad(expected, (e_data, e_gen, a))
    actual = compiled(e_data, e_gen, a)
    torch.testing.assert_close(actual, expected)
    for x, y in zip(torch.autograd.grad(actual, (e_data, e_gen, a)), expected_grads):
        torch.testing.assert_close(x, y)


def test_backend_selection():
    assert kf.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        kf.set_backend("fastest")
    with pytest.raises(TypeError, match="backend must be a str"):
        kf.set_backend(None)
    kf.set_backend("cuda")
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on a cpu tensor"):
        kf.kale_loss(torch.randn(3), torch.randn(3))
    kf.set_backend("reference")
    e_data, e_gen = torch.randn(3), torch.randn(4)
    torch.testing.assert_close(kf.kale_loss(e_data, e_gen), reference.kale_loss(e_data, e_gen))
    kf.set_backend("auto")
    assert kf.get_backend("cpu") == ("cpp" if _backend._AVAILABILITY["cpp"]["cpu"] is None else "reference")
    with kf.use_backend("reference"):
        assert kf.get_backend() == "reference" and kf.get_backend("cpu") == "reference"
    assert kf.get_backend() == "auto"


def test_backend_environment_variable(monkeypatch):
    """Read at import (a fresh process), checked at first use (a bad value, as read, checked here in-process:
    tests/cli/test_errors.py runs a process with one end to end)."""
    code = "import kale_fast as kf; print(kf.get_backend())"
    ok = subprocess.run([sys.executable, "-c", code], env={"KALE_FAST_BACKEND": "reference"},
                        capture_output=True, text=True)
    assert ok.stdout.strip() == "reference", ok.stderr
    monkeypatch.setattr(_backend, "_process_default", "gpu")
    with pytest.raises(ValueError, match="KALE_FAST_BACKEND must be one of"):
        kf.get_backend()


def test_custom_op_path_matches_eager_path(fused):
    """The torch.compile front door (custom ops) and the eager one (autograd.Function) give the same numbers."""
    backend, device = fused
    e_data = torch.randn(300, dtype=torch.float64, device=device, requires_grad=True)
    e_gen = torch.randn(500, dtype=torch.float64, device=device, requires_grad=True)
    a = torch.tensor(0.2, dtype=torch.float64, device=device, requires_grad=True)
    eager = kf.kale_loss(e_data, e_gen, a)
    via_op = torch.ops.kale_fast.kale_loss(e_data, e_gen, a, backend)[0]
    torch.testing.assert_close(via_op, eager)
    for x, y in zip(torch.autograd.grad(via_op, (e_data, e_gen, a)), torch.autograd.grad(eager, (e_data, e_gen, a))):
        torch.testing.assert_close(x, y)
    rows = torch.randn(4, 33, dtype=torch.float64, device=device, requires_grad=True)
    eager_rows = kf.log_mean_exp(rows, dim=1)
    op_rows = torch.ops.kale_fast.log_mean_exp_rows(rows, backend)
    torch.testing.assert_close(op_rows, eager_rows)
    weights = torch.randn(4, dtype=torch.float64, device=device)
    torch.testing.assert_close(torch.autograd.grad((op_rows * weights).sum(), rows)[0],
                               torch.autograd.grad((eager_rows * weights).sum(), rows)[0])


def test_kale_loss_refuses_more_than_one_energy_per_sample():
    """An energy network with two outputs gives (N, 2): refused, not averaged as 2N energies; (N, 1) is fine."""
    e_data, e_gen = torch.randn(8, 1), torch.randn(6)
    torch.testing.assert_close(kf.kale_loss(e_data, e_gen), kf.kale_loss(e_data.reshape(-1), e_gen))
    with pytest.raises(ValueError, match=r"e_data must hold one energy per sample, shape \(N,\) or \(N, 1\)"):
        kf.kale_loss(torch.randn(8, 2), e_gen)
    with pytest.raises(ValueError, match="e_gen must hold one energy per sample"):
        kf.kale_loss(e_data, torch.randn(3, 2))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("dim, keepdim", [(1, False), ((0, 2), True), (-1, True), (None, False)])
def test_log_mean_exp_compiles_fullgraph_with_dim(backend, dim, keepdim):
    import kale_fast as kf

    torch._dynamo.reset()
    with kf.use_backend(backend):
        compiled = torch.compile(lambda x: kf.log_mean_exp(x, dim=dim, keepdim=keepdim), fullgraph=True)
        x = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(compiled(x).sum(), x)
        out = compiled(x)
    dims = (0, 1, 2) if dim is None else dim
    count = x[0, 0, 0].numel() * np.prod([x.shape[d] for d in ((dims,) if isinstance(dims, int) else dims)])
    expected = torch.logsumexp(x, dim=dims, keepdim=keepdim) - np.log(count)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grad, torch.autograd.grad(expected.sum(), x)[0])


# --- gradients beyond first order: low precision against fp64 element by element, double backward,
# torch.func transforms, on every backend --------------------------------------------------------------------

LOW_PRECISION = [torch.bfloat16, torch.float16]


def _assert_each_element_close(actual, expected, dtype):
    """Every element within one rounding of `dtype` of the fp64 value (a half unit in the last place, relative),
    or below the smallest subnormal of `dtype` where the value underflows. (A test relative to the largest
    element, as test_kale_loss_matches_reference's, would let a wrong small weight pass.)"""
    rounding = torch.finfo(dtype).eps  # twice the half-unit, for the fp32 work before the last rounding
    underflow = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps
    assert actual.dtype == dtype
    error = (actual.double() - expected).abs()
    bound = rounding * expected.abs() + underflow
    assert (error <= bound).all(), f"worst element {(error / bound).argmax().item()}: {actual} vs {expected}"


def _low_precision_rows(dtype, generator):
    """Rows whose values are exact in `dtype`, far from 0 (where a result rounded to `dtype` loses most digits)
    and spread over a few units (so that the weights differ)."""
    first = torch.tensor([[300.0, 299.0, 298.0, 297.0, 270.0]])
    offsets = torch.tensor([[1000.0], [-500.0], [60.0]])
    spread = torch.randn(3, 5, generator=generator) * 2
    return torch.cat([first, offsets + spread]).to(dtype).requires_grad_()


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_log_mean_exp_gradients_in_low_precision_match_fp64(fused, dtype):
    _, device = fused
    x = _low_precision_rows(dtype, torch.Generator().manual_seed(1)).to(device).detach().requires_grad_()
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25], device=device)
    (grad,) = torch.autograd.grad((kf.log_mean_exp(x, dim=1).float() * weights).sum(), x)
    x64 = x.detach().double().requires_grad_()
    (expected,) = torch.autograd.grad((reference.log_mean_exp(x64, dim=1) * weights.double()).sum(), x64)
    _assert_each_element_close(grad, expected, dtype)
    # The softmax weights of each row sum to 1 (times the row's weight), up to one rounding per element.
    sums = grad.double().sum(dim=1)
    torch.testing.assert_close(sums, weights.double(), rtol=5 * torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
@pytest.mark.parametrize("with_a", [False, True], ids=["dv", "with_a"])
def test_kale_loss_gradients_in_low_precision_match_fp64(fused, dtype, with_a):
    _, device = fused
    gen = torch.Generator().manual_seed(2)
    e_data = (torch.randn(6, generator=gen) + 50).to(dtype=dtype, device=device).requires_grad_()
    e_gen = (torch.randn(9, generator=gen) * 2 - 250).to(dtype=dtype, device=device).requires_grad_()
    a = torch.tensor(251.0, device=device, requires_grad=True) if with_a else None
    inputs = (e_data, e_gen)
    grads = torch.autograd.grad(kf.kale_loss(e_data, e_gen, a), inputs)
    doubles = [t.detach().double().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(reference.kale_loss(*doubles, None if a is None else a.double()), doubles)
    for actual, oracle in zip(grads, expected):
        _assert_each_element_close(actual, oracle, dtype)


def _fp64_inputs(device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    e_data = torch.randn(4, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    e_gen = torch.randn(6, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    a = torch.tensor(0.4, dtype=torch.float64, device=device, requires_grad=True)
    return e_data, e_gen, a


def test_kale_loss_double_backward_passes_gradgradcheck(fused):
    _, device = fused
    e_data, e_gen, a = _fp64_inputs(device)
    assert torch.autograd.gradgradcheck(kf.kale_loss, (e_data, e_gen, a))
    assert torch.autograd.gradgradcheck(lambda d, g: kf.kale_loss(d, g), (e_data, e_gen))


def test_log_mean_exp_double_backward_passes_gradgradcheck(fused):
    _, device = fused
    x = torch.randn(3, 2, 4, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: kf.log_mean_exp(t, dim=(0, 2)), (x,))
    assert torch.autograd.gradgradcheck(kf.log_mean_exp, (x,))


def test_second_order_terms_match_the_reference(fused):
    """The issue's example: d/de of |dL/de|^2 + sum(e) must keep the second-order term (it came back [1, 1, 1])."""
    _, device = fused
    e_data, e_gen, a = _fp64_inputs(device, seed=5)
    for fn, oracle in ((kf.kale_loss, reference.kale_loss), (kf.log_mean_exp, reference.log_mean_exp)):
        results = []
        for f in (fn, oracle):
            args = (e_data, e_gen) if f in (kf.kale_loss, reference.kale_loss) else (e_gen,)
            (g,) = torch.autograd.grad(f(*args), e_gen, create_graph=True)
            assert g.grad_fn is not None
            results.append(torch.autograd.grad((g ** 2).sum() + e_gen.sum(), e_gen)[0])
        torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(results[0], torch.ones_like(results[0]))


def test_torch_func_grad_hessian_and_vmap(fused):
    """torch.func.grad, its nesting and vmap; forward mode (jvp, jacfwd) is not implemented."""
    _, device = fused
    e_data, e_gen, a = (t.detach() for t in _fp64_inputs(device, seed=7))
    a_term = lambda g: kf.kale_loss(e_data, g, a)  # noqa: E731
    a_oracle = lambda g: reference.kale_loss(e_data, g, a)  # noqa: E731
    torch.testing.assert_close(torch.func.grad(a_term)(e_gen), torch.func.grad(a_oracle)(e_gen))
    hessian = torch.func.jacrev(torch.func.jacrev(a_term))(e_gen)  # reverse over reverse (no forward mode)
    torch.testing.assert_close(hessian, torch.func.jacrev(torch.func.jacrev(a_oracle))(e_gen))
    rows = torch.randn(5, 3, 4, dtype=torch.float64, device=device)
    per_sample = torch.func.vmap(lambda r: kf.log_mean_exp(r, dim=1))(rows)
    torch.testing.assert_close(per_sample, reference.log_mean_exp(rows, dim=2))
    per_sample_grad = torch.func.vmap(torch.func.grad(lambda r: kf.log_mean_exp(r)))(rows)
    torch.testing.assert_close(per_sample_grad, torch.softmax(rows.reshape(5, -1), dim=1).reshape(rows.shape))
    batched_loss = torch.func.vmap(lambda g: kf.kale_loss(e_data, g))(rows.reshape(5, -1))
    torch.testing.assert_close(batched_loss, torch.stack([reference.kale_loss(e_data, g) for g in rows.reshape(5, -1)]))


# --- properties against the fp64 oracle (hypothesis; see _properties.py) -------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(e_data=vectors(), e_gen=vectors(), a=st.one_of(st.none(), floats(20.0)),
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
    close_to_oracle(loss, expected.detach(), dtype)
    for grad, expected_grad, t in zip(grads, expected_grads, inputs):
        close_to_oracle(grad, expected_grad, t.dtype)


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
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=0, atol=ORACLE_RTOL[dtype] * terms)
    for grad, expected_grad, t in zip(grads[:2], expected_grads, inputs):
        close_to_oracle(grad, expected_grad, t.dtype)
    if with_a:  # d A = 1 - mean(exp(-e_gen - A)): a difference of terms of size 1
        torch.testing.assert_close(grads[2].double(), expected_grads[2], rtol=0, atol=ORACLE_RTOL[dtype])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@SETTINGS
@given(data=st.data(), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32, torch.float64]),
       keepdim=st.booleans(), offset=floats(1000.0))
def test_log_mean_exp_and_its_gradient_match_the_fp64_oracle(backend, data, shape, dtype, keepdim, offset):
    n = torch.Size(shape).numel()
    values = data.draw(st.lists(floats(30.0), min_size=n, max_size=n))
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
    close_to_oracle(out, expected.detach(), dtype)
    close_to_oracle(grad, expected_grad, dtype)
    # the gradient of each reduced slice is a softmax: it sums to 1 up to the accumulation's rounding
    slices = grad.double().sum(dim=dims if dims is not None else list(range(len(shape))))
    torch.testing.assert_close(slices, torch.ones_like(slices), rtol=0, atol=50 * ORACLE_RTOL[dtype])


# --- Triton's split reduction through the interpreter ---------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 5000), (2, 3000), (40, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_log_mean_exp_matches_torch(triton_kale, shape, dtype):
    """Few long rows are split over programs (a combine pass merges them); many short rows are not."""
    assert (triton_kale.log_mean_exp_splits(*shape, torch.device("cpu")) > 1) == (shape[1] > 1024)
    gen = torch.Generator().manual_seed(shape[1])
    x = (10 * torch.randn(shape, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()
    out = kf.log_mean_exp(x, dim=1)
    x64 = x.detach().double().requires_grad_()
    want = torch.logsumexp(x64, dim=1) - math.log(shape[1])
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), want, **tol)
    weights = torch.randn(shape[0], generator=gen, dtype=torch.float64)
    (out.double() * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)
