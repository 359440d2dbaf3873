"""kale_loss's eager door on the C++ backend (the kernels with their autograd in C++, csrc/kale_autograd.cpp)
against the oracle and against its other doors: gradcheck and gradgradcheck in fp64 (create_graph=True runs the
reference's differentiable closed forms), torch.func (the autograd.Function), no_grad and inference mode."""
import pytest
import torch

import kale_fast as kf
from kale_fast import reference
from kale_fast.ops import _backend

pytestmark = pytest.mark.skipif(_backend._AVAILABILITY["cpp"]["cpu"] is not None, reason="needs kale_fast._C")


def _inputs(seed, n=37, m=29):
    gen = torch.Generator().manual_seed(seed)
    e_data = torch.randn(n, generator=gen, dtype=torch.float64).requires_grad_()
    e_gen = (2 * torch.randn(m, generator=gen, dtype=torch.float64)).requires_grad_()
    a = torch.randn((), generator=gen, dtype=torch.float64).requires_grad_()
    return e_data, e_gen, a


@pytest.mark.parametrize("with_a", [True, False])
def test_the_cpp_door_is_the_kernels_autograd_in_cpp_and_matches_the_oracle(with_a):
    e_data, e_gen, a = _inputs(1)
    inputs = (e_data, e_gen, a) if with_a else (e_data, e_gen)
    loss = kf.kale_loss(*inputs, backend="cpp")
    assert "KaleLoss" in loss.grad_fn.name()  # no Python autograd.Function on this path
    want = reference.kale_loss(*inputs, *([] if with_a else [None]))
    torch.testing.assert_close(loss, want, rtol=1e-13, atol=1e-13)
    for got, expected in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("with_a", [True, False])
def test_gradcheck_and_gradgradcheck_through_the_cpp_door(with_a):
    e_data, e_gen, a = _inputs(2, n=6, m=5)
    inputs = (e_data, e_gen, a) if with_a else (e_data, e_gen)
    fn = lambda *args: kf.kale_loss(*args, backend="cpp")  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_torch_func_takes_the_autograd_function_door_to_the_same_gradient():
    e_data, e_gen, a = (t.detach() for t in _inputs(3))
    func_grad = torch.func.grad(lambda g: kf.kale_loss(e_data, g, a, backend="cpp"))(e_gen)
    g = e_gen.clone().requires_grad_()
    (eager_grad,) = torch.autograd.grad(kf.kale_loss(e_data, g, a, backend="cpp"), g)
    torch.testing.assert_close(func_grad, eager_grad, rtol=1e-14, atol=0)


def test_no_grad_and_inference_mode_give_the_value():
    e_data, e_gen, a = _inputs(4)
    want = kf.kale_loss(e_data, e_gen, a, backend="cpp").detach()
    with torch.no_grad():
        torch.testing.assert_close(kf.kale_loss(e_data, e_gen, a, backend="cpp"), want, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(kf.kale_loss(e_data.detach(), e_gen.detach(), a.detach(), backend="cpp"), want,
                                   rtol=0, atol=0)


def test_bf16_energies_get_a_bf16_loss_and_fp32_accurate_gradients():
    e_data, e_gen, _ = _inputs(5, n=300, m=200)
    low = [t.detach().bfloat16().requires_grad_() for t in (e_data, e_gen)]
    loss = kf.kale_loss(*low, backend="cpp")
    assert loss.dtype == torch.bfloat16
    grads = torch.autograd.grad(loss, low)
    oracle_inputs = [t.detach().double().requires_grad_() for t in low]
    exact = torch.autograd.grad(reference.kale_loss(*oracle_inputs, None), oracle_inputs)
    for got, want in zip(grads, exact):
        torch.testing.assert_close(got.double(), want, rtol=1e-2, atol=1e-4)
