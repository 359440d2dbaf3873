"""Shared by the property-based tests of the ops (hypothesis, derandomized: the same examples every run) against
the fp64 reference (kale_fast.reference) on every backend that runs on the CPU here: reference, cpp, and triton
through its interpreter (tests/conftest.py switches it on). Inputs are rounded to the tested dtype first; the
oracle then computes in fp64 on those values, so the tolerance is the dtype's own rounding of the result."""
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kale_fast.ops import _backend

CPU_BACKENDS = [name for name in ("reference", "cpp", "triton") if _backend._AVAILABILITY[name].get("cpu") is None]
# A few units in the last place of the dtype results are returned in (as test_kale_loss.py's RTOL).
ORACLE_RTOL = {torch.float16: 4e-3, torch.bfloat16: 3e-2, torch.float32: 3e-5, torch.float64: 1e-11}
SETTINGS = settings(derandomize=True, max_examples=12, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def floats(magnitude):
    return st.floats(min_value=-magnitude, max_value=magnitude, allow_nan=False, allow_infinity=False, width=32)


def vectors(max_size=40, magnitude=60.0):
    return st.lists(floats(magnitude), min_size=1, max_size=max_size)


def close_to_oracle(actual, expected, dtype):
    """actual (in dtype) against the fp64 oracle, relative to the largest entry of the oracle."""
    assert actual.dtype == dtype and actual.shape == expected.shape
    rtol = ORACLE_RTOL[dtype]
    scale = max(expected.abs().max().item(), 1e-30)
    torch.testing.assert_close(actual.double(), expected.to(dtype).double(), rtol=rtol, atol=rtol * scale)
