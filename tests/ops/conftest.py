"""Fixtures of the op tests: the Triton kernels run through Triton's interpreter on CPU tensors."""
import pytest
import torch

import kale_fast as kf
from kale_fast.ops import _backend


@pytest.fixture
def triton_interpreter():
    """The "triton" backend selected, its kernels interpreted on CPU tensors. Skipped where that cannot run: without
    triton, or on a GPU machine (where the `fused` tests run the compiled kernels instead)."""
    if _backend._AVAILABILITY["triton"]["cpu"] is not None or torch.cuda.is_available():
        pytest.skip("these tests run Triton's interpreter on CPU tensors")
    with kf.use_backend("triton"):
        yield


@pytest.fixture
def triton_integrators(triton_interpreter):
    """kale_fast.triton_kernels.integrators (imported only where Triton runs)."""
    from kale_fast.triton_kernels import integrators

    return integrators


@pytest.fixture
def triton_kale(triton_interpreter):
    """kale_fast.triton_kernels.kale (imported only where Triton runs)."""
    from kale_fast.triton_kernels import kale

    return kale
