"""Triton-only properties (CPU through the interpreter): the integrator tiling (rows split over programs, partial
sums added by a second pass, rejected rows restored tile by tile) against the reference, large shapes, 64-bit
Philox counters, fp64 noise, and the split log-mean-exp reduction. Backend comparisons at ordinary shapes live in
test_integrators.py and test_kale.py."""
import math

import pytest
import torch

import kale_fast as kf
from kale_fast.ops import _backend
from kale_fast.ops import integrators as fused
from kale_fast.reference import integrators as reference
from tests.ops.test_integrators import (_close, _state, check_hmc_trajectory_end, check_leapfrog_kick_drift,
                                        check_mala_accept)

if _backend._AVAILABILITY["triton"]["cpu"] is not None or torch.cuda.is_available():
    pytest.skip("these tests run Triton's interpreter on CPU tensors", allow_module_level=True)

import triton  # noqa: E402  (after conftest switched the interpreter on)
import triton.language as tl  # noqa: E402

from kale_fast.triton_kernels import integrators as tk  # noqa: E402
from kale_fast.triton_kernels import kale as tkale  # noqa: E402

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def _triton():
    with kf.use_backend("triton"):
        yield


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of at most 64 elements and second passes of 2 partials a step: many tiles at small shapes."""
    monkeypatch.setattr(tk, "_MAX_TILE", 64)
    monkeypatch.setattr(tk, "_MIN_TILE", 16)
    monkeypatch.setattr(tk, "_SUM_TILE", 2)


@pytest.mark.parametrize("shape", [(1, 1), (256, 11), (4096, 2), (64, 4096), (3, 100_000), (1, 1 << 22),
                                   (1 << 20, 1), (1 << 20, 1 << 21)])
def test_gpu_tiling_covers_the_state_within_limits(monkeypatch, shape):
    monkeypatch.setattr(tk, "_MAX_TILE", 2048)
    n_rows, n_cols = shape
    t = tk.tiling(n_rows, n_cols, 264)  # two programs per multiprocessor of an H100
    assert t.block_cols * t.col_tiles >= n_cols > t.block_cols * (t.col_tiles - 1)
    assert t.rows * t.row_blocks >= n_rows > t.rows * (t.row_blocks - 1)
    assert t.rows == 1 or t.col_tiles == 1  # several rows per program only when one tile spans a row
    assert t.rows * t.block_cols <= 2048 and t.grid[0] <= 2**31 - 1
    assert 1 <= t.num_warps <= 8 and t.sum_rows * t.sum_block <= 1024
    assert t.grid[0] >= min(264, n_rows * n_cols // 2048)  # programs enough to fill the device, if elements are
    if shape == (256, 11):
        assert t.grid[0] == 16  # was one program


def _metropolis_state(shape, dtype):
    s = _state(shape, dtype, "cpu", seed=shape[0] + shape[1])
    b = shape[0]
    s["log_u"][0] = -math.inf  # accepted wherever the ratio is finite
    if b > 1:
        s["log_u"][1] = math.inf  # rejected
    if b > 2:
        s["potential"][2] = s["potential2"][2] = math.nan  # rejected
    return s


def _check_all_updates(shape, dtype):
    """Every Triton update against the reference on one state (noise given, so results are comparable)."""
    s = _metropolis_state(shape, dtype)
    check_leapfrog_kick_drift(s)
    prob, accepted = check_hmc_trajectory_end(s)
    assert shape[0] < 2 or (accepted[0] != accepted[1])  # both branches of the restore ran
    accepted = check_mala_accept(s)
    _close(fused.mala_propose(s["z"], s["grad"], s["step"], noise=s["noise"]),
           reference.mala_propose(s["z"], s["grad"], s["step"], s["noise"]))
    z, v = s["z"].clone(), s["p"].clone()
    fused.kinetic_langevin_baoa(z, v, s["grad"], s["step"], s["friction"], noise=s["noise"])
    z_ref, v_ref = reference.kinetic_langevin_baoa(s["z"], s["p"], s["grad"], s["step"], s["friction"], s["noise"])
    _close(z, z_ref), _close(v, v_ref)
    momentum, kinetic = fused.hmc_draw_momentum(s["z"], generator=torch.Generator().manual_seed(1))
    _close(kinetic, 0.5 * (momentum * momentum).sum(1))


@pytest.mark.parametrize("shape", [(3, 300), (5, 64), (2, 1000), (40, 3)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiled_updates_match_reference(small_tiles, shape, dtype):
    t = tk.tiling(*shape, tk.target_programs(torch.device("cpu")))
    assert (t.col_tiles > 2) == (shape[1] > 128)  # (3, 300): 5 tiles a row, partials added 2 at a time
    _check_all_updates(shape, dtype)


@pytest.mark.parametrize("shape", [(1, 1 << 22), (1 << 20, 1), (1 << 20, 2)])
def test_large_states_match_reference(shape):
    s = _metropolis_state(shape, torch.float64)
    prob, accepted = check_hmc_trajectory_end(s)
    if shape[0] > 1:
        momentum, kinetic = fused.hmc_draw_momentum(s["z"], generator=torch.Generator().manual_seed(2))
        _close(kinetic, 0.5 * (momentum * momentum).sum(1))
        assert abs(momentum.mean().item()) < 5 / math.sqrt(momentum.numel())


@triton.jit
def _randn_kernel(seed_ptr, out_ptr, base, DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    lanes = tl.arange(0, BLOCK)
    tl.store(out_ptr + lanes, tk._randn(seed_ptr, base + lanes.to(tl.int64), DTYPE))


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_counters_are_64_bit(dtype):
    """The noise at element offset 2^32 + i is not the noise at i (a 32-bit counter would wrap)."""
    seed = torch.tensor([12345])

    def draw(base):
        out = torch.empty(1024, dtype=dtype)
        _randn_kernel[(1,)](seed, out, base, DTYPE=tl.float64 if dtype == torch.float64 else tl.float32, BLOCK=1024)
        return out

    low, high = draw(0), draw(2**32)
    assert torch.isfinite(low).all() and torch.isfinite(high).all()
    assert (low != high).all()
    assert abs(torch.corrcoef(torch.stack([low, high]))[0, 1].item()) < 5 / math.sqrt(1024)


def test_fp64_noise_has_fp64_resolution():
    """fp64 states get normals from 53-bit uniforms, not fp32 normals widened."""
    z = torch.zeros(64, 256, dtype=torch.float64)
    fused.ula_step(z, torch.zeros_like(z), torch.full((64,), 0.5, dtype=torch.float64),
                   generator=torch.Generator().manual_seed(0))
    assert (z.float().double() != z).float().mean().item() > 0.99
    assert abs(z.mean().item()) < 5 / math.sqrt(z.numel()) and abs(z.var().item() - 1) < 5 * math.sqrt(2 / z.numel())


@pytest.mark.parametrize("shape", [(1, 5000), (2, 3000), (40, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_split_log_mean_exp_matches_torch(shape, dtype):
    """Few long rows are split over programs (a combine pass merges them); many short rows are not."""
    assert (tkale.log_mean_exp_splits(*shape, torch.device("cpu")) > 1) == (shape[1] > 1024)
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
