"""How an op's backend is chosen: the per-call keyword, the thread-local `kf.backend` block, the process-wide
setting, and where they win over each other; the Triton launchers' device limits."""
import threading

import pytest
import torch

import kale_fast as kf
from kale_fast.ops import _backend, integrators
from kale_fast.reference import kernels as reference_kernels

HAS_CPP = _backend._AVAILABILITY["cpp"]["cpu"] is None


@pytest.fixture
def reference_calls(monkeypatch):
    """How many times the reference backend's kernels ran (kale_loss_forward, ula_step)."""
    calls = []
    for name in ("kale_loss_forward", "ula_step"):
        original = getattr(reference_kernels, name)
        monkeypatch.setattr(reference_kernels, name, lambda *args, _f=original: calls.append(1) or _f(*args))
    return calls


def _energies():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(50, generator=gen, dtype=torch.float64), torch.randn(40, generator=gen, dtype=torch.float64)


@pytest.mark.skipif(not HAS_CPP, reason="needs the C++ backend beside the reference")
def test_the_keyword_chooses_the_backend_of_one_call(reference_calls):
    e_data, e_gen = _energies()
    fused = kf.kale_loss(e_data, e_gen, backend="cpp")
    assert not reference_calls
    torch.testing.assert_close(kf.kale_loss(e_data, e_gen, backend="reference"), fused)
    assert len(reference_calls) == 1
    with kf.backend("reference"):
        kf.kale_loss(e_data, e_gen, backend="cpp")  # the keyword wins over the block
    assert len(reference_calls) == 1
    z = torch.zeros(3, 2, dtype=torch.float64)
    integrators.ula_step(z, torch.zeros_like(z), torch.ones(3, dtype=torch.float64), backend="reference")
    assert len(reference_calls) == 2
    assert kf.get_backend() == "auto"


@pytest.mark.skipif(not HAS_CPP, reason="needs the C++ backend beside the reference")
def test_a_backend_block_holds_in_its_thread_only(reference_calls):
    e_data, e_gen = _energies()
    entered, leave = threading.Event(), threading.Event()
    seen = {}

    def other_thread():
        with kf.backend("reference"):
            seen["inside"] = kf.get_backend(), kf.get_backend("cpu")
            kf.kale_loss(e_data, e_gen)
            entered.set()
            leave.wait(10)
        seen["after"] = kf.get_backend()

    worker = threading.Thread(target=other_thread)
    worker.start()
    assert entered.wait(10)
    assert kf.get_backend() == "auto" and kf.get_backend("cpu") == "cpp"  # this thread is not in the block
    kf.kale_loss(e_data, e_gen)
    leave.set()
    worker.join(10)
    assert seen == {"inside": ("reference", "reference"), "after": "auto"}
    assert len(reference_calls) == 1  # the other thread's call only


def test_blocks_nest_and_win_over_the_process_wide_setting():
    kf.set_backend("reference")
    with kf.backend("auto"):
        assert kf.get_backend() == "auto"
        with kf.use_backend("reference"):  # the 0.1 name of the same block
            assert kf.get_backend() == "reference"
        assert kf.get_backend() == "auto"
    assert kf.get_backend() == "reference"


@pytest.mark.parametrize("name, error", [("fastest", ValueError), (["cpp"], TypeError), (3, TypeError)])
def test_a_bad_backend_name_is_refused_wherever_it_is_given(name, error):
    e_data, e_gen = _energies()
    for give in (lambda: kf.kale_loss(e_data, e_gen, backend=name), lambda: kf.log_mean_exp(e_gen, backend=name),
                 lambda: kf.backend(name).__enter__(), lambda: kf.set_backend(name)):
        with pytest.raises(error, match="backend"):
            give()
    assert kf.get_backend() == "auto"


def test_a_backend_that_cannot_run_on_the_device_is_refused_with_the_reason():
    e_data, e_gen = _energies()
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run on a cpu tensor"):
        kf.kale_loss(e_data, e_gen, backend="cuda")


@pytest.mark.skipif(not HAS_CPP, reason="the compiled op needs the extension's schemas")
def test_the_keyword_is_a_constant_that_torch_compile_guards():
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, b: kf.log_mean_exp(x, backend=b), fullgraph=True, backend="eager")
    x = torch.randn(7, dtype=torch.float64)
    for name in ("reference", "cpp", "reference"):
        torch.testing.assert_close(compiled(x, name), torch.logsumexp(x, 0) - torch.log(torch.tensor(7.0)).double())


def test_the_block_choice_is_marked_as_torch_compile_marks_a_constant_result():
    """_backend marks its block reader by hand (the decorator would import torch._dynamo with kale_fast): the mark
    must stay the one torch.compiler.assume_constant_result sets, and a block must trace in a full graph."""
    def probe():
        return None

    torch.compiler.assume_constant_result(probe)
    assert vars(probe) == vars(_backend._traced_block_choice) == {"_dynamo_marked_constant": True}
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: kf.log_mean_exp(x), fullgraph=True, backend="eager")
    x = torch.randn(7, dtype=torch.float64)
    with kf.backend("reference"):
        torch.testing.assert_close(compiled(x), torch.logsumexp(x, 0) - torch.log(torch.tensor(7.0)).double())


def test_triton_grid_limits_are_queried_per_device(monkeypatch):
    from kale_fast.triton_kernels import _launch

    queried = []

    class Properties:
        multi_processor_count = 100

    def properties(index):
        queried.append(index)
        return Properties()

    _launch._cuda_multiprocessors.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    try:
        assert _launch.multiprocessors(torch.device("cuda", 1)) == 100
        assert _launch.multiprocessors(torch.device("cuda", 1)) == 100
        assert queried == [1]  # once per device
        assert _launch.multiprocessors(torch.device("cpu")) == 1  # Triton's interpreter: one program at a time
    finally:
        _launch._cuda_multiprocessors.cache_clear()
