"""Shared test setup. Without a GPU, Triton kernels run through its interpreter, which must be switched on
before anything imports triton: here, before kale_fast is imported."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kale_fast as kf  # noqa: E402
from kale_fast.ops import _backend  # noqa: E402

# Every backend with the device its kernels run on, the reference included (its kernel contract wraps the
# oracle the tests compare with); a backend that cannot run here is skipped with the reason (on a CPU machine:
# "cuda").
FUSED_BACKENDS = [("reference", "cpu"), ("cpp", "cpu"), ("triton", "cuda" if torch.cuda.is_available() else "cpu"),
                  ("cuda", "cuda")]


@pytest.fixture(params=FUSED_BACKENDS, ids=[name for name, _ in FUSED_BACKENDS])
def fused(request):
    """(backend name, device) with that backend selected for the test."""
    name, device = request.param
    reason = _backend._AVAILABILITY[name].get(device)
    if reason is not None:
        pytest.skip(f"{name} backend unavailable on {device}: {reason}")
    kf.set_backend(name)
    yield name, torch.device(device)
    kf.set_backend("auto")


@pytest.fixture(autouse=True)
def _restore_backend():
    """Every test starts on "auto" whatever KALE_FAST_BACKEND says, and leaves it there."""
    kf.set_backend("auto")
    yield
    kf.set_backend("auto")


@pytest.fixture
def float64():
    """torch's default dtype float64 for the test, restored after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
