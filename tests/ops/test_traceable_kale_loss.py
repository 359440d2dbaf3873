"""kale_fast.ops.kale.traceable_kale_loss (the KALE loss in plain torch ops that compiled training steps trace)
against the oracle: values and gradients in fp64 on fresh random inputs, fp32 within its rounding, and traced
by torch.compile through torch.func.grad."""
import pytest
import torch

from kale_fast import reference
from kale_fast.ops.kale import traceable_kale_loss


def _inputs(seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    e_data = (3 * torch.randn(100, generator=gen, dtype=torch.float64) + 1).to(dtype).requires_grad_()
    e_gen = (4 * torch.randn(77, 1, generator=gen, dtype=torch.float64) - 2).to(dtype).requires_grad_()
    a = torch.randn((), generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    return e_data, e_gen, a


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("with_a", [True, False])
def test_value_and_gradients_match_the_reference_in_fp64(seed, with_a):
    e_data, e_gen, a = _inputs(seed)
    inputs = (e_data, e_gen, a) if with_a else (e_data, e_gen)
    got = traceable_kale_loss(*inputs, *([] if with_a else [None]))
    want = reference.kale_loss(*inputs, *([] if with_a else [None]))
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs)):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)


def test_fp32_is_within_fp32_rounding_of_the_fp64_oracle():
    e_data, e_gen, a = _inputs(7, torch.float32)
    got = traceable_kale_loss(e_data, e_gen, a)
    assert got.dtype == torch.float32
    want = reference.kale_loss(e_data.double(), e_gen.double(), a.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


def test_torch_compile_traces_it_under_torch_func_grad():
    e_data, e_gen, a = (t.detach() for t in _inputs(3))
    grad = torch.func.grad(lambda g: traceable_kale_loss(e_data, g, a))
    compiled = torch.compile(grad, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(e_gen), torch.func.grad(lambda g: reference.kale_loss(e_data, g, a))(e_gen))
