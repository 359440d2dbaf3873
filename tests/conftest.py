"""Shared test setup. TRITON_INTERPRET must be set before anything imports triton, so it is set here."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import kale_fast as kf  # noqa: E402
from kale_fast.ops import _backend  # noqa: E402

# Every fused backend with the device its kernels run on; a backend that cannot run here is skipped
# with the reason (on a CPU machine: "cuda").
FUSED_BACKENDS = [("cpp", "cpu"), ("triton", "cuda" if torch.cuda.is_available() else "cpu"), ("cuda", "cuda")]


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
    yield
    kf.set_backend("auto")
