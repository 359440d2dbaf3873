"""Gradients of kf.kale_loss and kf.log_mean_exp beyond the first-order fp32/fp64 comparisons of test_kale.py:
low-precision inputs against an fp64 oracle element by element, double backward and torch.func transforms,
on every backend."""
import pytest
import torch

import kale_fast as kf
from kale_fast import reference

LOW_PRECISION = [torch.bfloat16, torch.float16]


def _assert_each_element_close(actual, expected, dtype):
    """Every element within one rounding of `dtype` of the fp64 value (a half unit in the last place, relative),
    or below the smallest subnormal of `dtype` where the value underflows. (A test relative to the largest
    element, as in test_kale.py, would let a wrong small weight pass.)"""
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
