"""kale_loss's eager door on the C++ backend (the kernels with their autograd in C++, csrc/kale_autograd.cpp)
against the oracle and against its other doors: gradcheck and gradgradcheck in fp64 (create_graph=True runs the
reference's differentiable closed forms), torch.func (the autograd.Function), no_grad and inference mode."""
import math

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


def _blocks_of_every_kind(dtype, seed):
    """e_gen over 5 of the C++ kernels' 2048-element blocks plus a tail: energies near 0 (with A, terms kept
    relative to 0), near 300 (relative to the block's max; with A, the factor exp(max) below the normal range: the
    backward recomputes the block), one block spread over 200 (fp32: terms below the normal range, recomputed), one
    with an infinity, and a tail of 77."""
    gen = torch.Generator().manual_seed(seed)
    parts = [torch.randn(2048, generator=gen, dtype=torch.float64) * 3,
             torch.randn(2048, generator=gen, dtype=torch.float64) + 300,
             torch.linspace(-100, 100, 2048, dtype=torch.float64),
             torch.cat([torch.randn(2047, generator=gen, dtype=torch.float64), torch.tensor([math.inf])]),
             torch.randn(2048, generator=gen, dtype=torch.float64) * 5 + 10,
             torch.randn(77, generator=gen, dtype=torch.float64)]
    return torch.cat(parts).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("a", [None, 0.5, -80.0], ids=["dv", "a", "a_beyond_lean"])
def test_kept_exp_terms_give_the_oracles_gradient_and_repeat_exactly(dtype, a):
    """The eager C++ door keeps the forward's exp terms and scales them into d e_gen (csrc/kale_cpu.h), or
    recomputes a block whose terms are not exact. Against the fp64 oracle element by element, within the rounding
    of the gradient's exponent (eps * |exponent|, as the backward kernel op, checked alike) and a few roundings
    more (with A, a block's terms are relative to 0, so that their exponent is the gradient's); a second backward
    of the same graph (retain_graph) gives the same bits (the kept terms are left as they are); the loss is the
    no_grad loss bit for bit."""
    e_gen = _blocks_of_every_kind(dtype, seed=6)
    e_data = torch.randn(100, dtype=dtype)
    log_partition = None if a is None else torch.tensor(a, dtype=dtype)
    leaf = e_gen.clone().requires_grad_()
    loss = kf.kale_loss(e_data, leaf, log_partition, backend="cpp")
    incoming = torch.tensor(0.75, dtype=dtype)
    (kept,) = torch.autograd.grad(loss, leaf, grad_outputs=incoming, retain_graph=True)
    (again,) = torch.autograd.grad(loss, leaf, grad_outputs=incoming)
    assert torch.equal(kept, again)
    with torch.no_grad():
        assert torch.equal(loss, kf.kale_loss(e_data, e_gen, log_partition, backend="cpp"))
    state = torch.ops.kale_fast.kale_loss_forward(e_data, e_gen, log_partition)[1]
    kernel = torch.ops.kale_fast.kale_loss_backward(incoming, e_data, e_gen, log_partition, state)[1]

    oracle_gen = e_gen.double().requires_grad_()
    oracle = reference.kale_loss(e_data.double(), oracle_gen, None if a is None else torch.tensor(a).double())
    (want,) = torch.autograd.grad(oracle, oracle_gen, grad_outputs=incoming.double())
    t = -oracle_gen.detach() - (0.0 if a is None else a)
    # the exponent as the kernels round it (with A and a max of t beyond the lean exp's range, -log M enters it)
    exponent = (t - torch.logsumexp(t[t.isfinite()], 0)) if a is None else t.abs() + math.log(t.numel())
    # (the general exp, beyond the lean one's range, flushes results below about 2 smallest normals to 0)
    eps, tiny = torch.finfo(dtype).eps, 2 * torch.finfo(dtype).smallest_normal
    bound = eps * (4 + exponent.abs()) * want.abs() + tiny
    # fp32 with A: exp(300) overflows to -inf, and near the largest value so does the exp before its factor 1/M
    beyond = want.abs() > torch.finfo(dtype).max / e_gen.numel()
    if a is None and dtype == torch.float64:  # the kept path ran: its products round unlike the exp here (fp32
        assert not torch.equal(kept, kernel)  # and A: the same bits on these inputs)
    for grad in (kept, kernel):
        special = (grad.double() == want) | (grad.isnan() & want.isnan()) | (grad.isinf() & beyond)
        assert ((grad.double() - want).abs() <= bound)[~special].all()
    if oracle.abs() <= torch.finfo(dtype).max:  # fp32 with A: the spread block's mean exp overflows, to inf
        torch.testing.assert_close(loss.double(), oracle.detach(), rtol=8 * eps, atol=0)


def test_a_detached_e_gen_gives_the_oracles_gradients_in_e_data_and_a():
    e_data, e_gen, a = _inputs(7)
    loss = kf.kale_loss(e_data, e_gen.detach(), a, backend="cpp")
    got = torch.autograd.grad(loss, (e_data, a))
    want = torch.autograd.grad(reference.kale_loss(e_data, e_gen.detach(), a), (e_data, a))
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-14)


def test_fake_tensors_and_dispatch_modes_see_the_op_where_e_gen_requires_grad():
    """The kept variant runs past the dispatcher, so it must stay off where Python dispatch is involved: a
    dispatch mode (flop counters, debug modes) sees kale_loss_forward, and FakeTensorMode gives a fake loss."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    e_data, e_gen = torch.randn(64), torch.randn(300, requires_grad=True)
    with _recording_mode(TorchDispatchMode, "__torch_dispatch__") as seen:
        kf.kale_loss(e_data, e_gen, torch.tensor(0.5), backend="cpp")
    assert any("kale_loss_forward" in name for name in seen.names)
    mode = FakeTensorMode()
    fakes = [mode.from_tensor(x) for x in (e_data, e_gen, torch.tensor(0.5))]
    with mode:
        loss = kf.kale_loss(*fakes, backend="cpp")
    assert loss.shape == () and loss.dtype == torch.float32


# --- the C++ door entered from Python (kale_fast._C.kale_loss_eager) for the common eager call ------------------

@pytest.fixture
def door_calls(monkeypatch):
    """What kale_loss's Python-free door returned, call by call (a spy around kale_fast.ops.kale._kale_loss_eager)."""
    from kale_fast.ops import kale as kale_module

    door, returned = kale_module._kale_loss_eager, []
    assert door is not None

    def spy(*args):
        returned.append(door(*args))
        return returned[-1]

    monkeypatch.setattr(kale_module, "_kale_loss_eager", spy)
    return returned


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_common_eager_call_takes_the_door_and_matches_the_checked_path_bit_for_bit(door_calls, dtype):
    e_data, e_gen, _ = _inputs(8, n=3000, m=2500)  # more than one 2048-element block: kept terms where fp32/fp64
    e_data, e_gen = (t.detach().to(dtype).requires_grad_() for t in (e_data, e_gen))
    loss = kf.kale_loss(e_data, e_gen)
    assert len(door_calls) == 1 and door_calls[0] is loss
    node = loss.grad_fn if dtype != torch.bfloat16 else loss.grad_fn.next_functions[0][0]  # bf16: a cast after it
    assert loss.dtype == dtype and "CppNode" in node.name()
    assert kf.kale_loss(e_data, e_gen, backend="cpp") is door_calls[1]  # so does the keyword
    checked = kf.kale_loss(e_data[:, None], e_gen[:, None])  # (N, 1): the Python checks, reshape and torch.ops
    assert len(door_calls) == 3 and door_calls[2] is None
    assert torch.equal(loss, checked)
    for got, want in zip(torch.autograd.grad(loss, (e_data, e_gen)), torch.autograd.grad(checked, (e_data, e_gen))):
        assert torch.equal(got, want)


def test_gradcheck_through_the_door(door_calls):
    e_data, e_gen, _ = _inputs(9, n=6, m=5)
    assert torch.autograd.gradcheck(kf.kale_loss, (e_data, e_gen))
    assert torch.autograd.gradgradcheck(kf.kale_loss, (e_data, e_gen))
    assert door_calls and all(loss is not None for loss in door_calls)  # every call went through the door


def test_parameters_and_no_grad_take_the_door(door_calls):
    e_data, e_gen, _ = _inputs(10)
    params = [torch.nn.Parameter(t.detach()) for t in (e_data, e_gen)]
    want = reference.kale_loss(*params, None)
    torch.testing.assert_close(kf.kale_loss(*params), want, rtol=1e-13, atol=1e-13)
    with torch.no_grad():
        torch.testing.assert_close(kf.kale_loss(*params), want.detach(), rtol=1e-13, atol=1e-13)
    assert len(door_calls) == 2 and all(loss is not None for loss in door_calls)


@pytest.mark.parametrize("case", ["column", "strided", "mixed_dtypes", "integer", "empty"])
def test_the_door_declines_other_energies_and_the_checked_path_takes_them(door_calls, case):
    e_data, e_gen = torch.randn(40, dtype=torch.float64), torch.randn(30, dtype=torch.float64)
    if case == "column":  # (N, 1): reshaped by the checked path
        loss = kf.kale_loss(e_data[:, None], e_gen[:, None])
        torch.testing.assert_close(loss, reference.kale_loss(e_data, e_gen, None), rtol=1e-13, atol=1e-13)
    elif case == "strided":  # made contiguous by the checked path
        loss = kf.kale_loss(e_data[::2], e_gen[::3])
        torch.testing.assert_close(loss, reference.kale_loss(e_data[::2], e_gen[::3], None), rtol=1e-13, atol=1e-13)
    else:
        bad = {"mixed_dtypes": (e_data, e_gen.float()), "integer": (e_data, e_gen.long()),
               "empty": (e_data, e_gen[:0])}[case]
        with pytest.raises((TypeError, ValueError), match="e_gen"):
            kf.kale_loss(*bad)
    assert door_calls == [None]


def _recording_mode(base, hook: str):
    """A torch function or dispatch mode (base, with its hook "__torch_function__" or "__torch_dispatch__") that
    runs what it sees and records its names in .names."""
    def __init__(self):
        base.__init__(self)
        self.names = []

    def record(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))

    return type("Recording", (base,), {"__init__": __init__, hook: record})()


def test_a_log_partition_a_backend_choice_a_transform_or_a_torch_function_mode_keep_their_doors(door_calls):
    from torch.overrides import TorchFunctionMode

    e_data, e_gen, a = _inputs(11)
    assert "KaleLoss" in kf.kale_loss(e_data, e_gen, a).grad_fn.name()
    with kf.backend("reference"):
        assert "CppNode" not in kf.kale_loss(e_data, e_gen).grad_fn.name()
    with kf.backend("cpp"):
        assert "CppNode" not in kf.kale_loss(e_data, e_gen, backend="reference").grad_fn.name()
    torch.func.grad(lambda g: kf.kale_loss(e_data.detach(), g))(e_gen.detach())
    with _recording_mode(TorchFunctionMode, "__torch_function__") as seen:
        kf.kale_loss(e_data, e_gen)
    assert any("kale_loss_autograd" in name for name in seen.names)
    assert door_calls == []


def test_a_dispatch_mode_sees_the_kernel_op_through_the_door(door_calls):
    """The door calls the op through the dispatcher with the GIL released: a Python dispatch mode still sees it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    e_data, e_gen = torch.randn(64), torch.randn(300, requires_grad=True)
    with _recording_mode(TorchDispatchMode, "__torch_dispatch__") as seen:
        loss = kf.kale_loss(e_data, e_gen)
    assert len(door_calls) == 1 and door_calls[0] is loss and any("kale_loss_forward" in n for n in seen.names)
    torch.testing.assert_close(loss, reference.kale_loss(e_data, e_gen, None))
