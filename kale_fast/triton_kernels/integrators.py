"""Triton kernels of the fused MCMC updates (GPU; CPU through TRITON_INTERPRET=1).

Same functions and contracts as csrc/integrators.cpp: states (B, L) contiguous fp32/fp64, per-chain scalars
(B,), updates in place. Each program owns a tile of at most _MAX_TILE elements: ROWS whole rows when L is
small, or BLOCK_COLS columns of one row (`tiling`). Per-chain sums (kinetic energy, the MALA proposal densities)
stay in registers when one tile spans a row (one launch); otherwise each tile writes its partial sum and a
second kernel adds a row's partials in a fixed order (deterministic, no atomics), and for the Metropolis
updates a third restores the rejected rows' tiles. Noise is Philox (tl.randint4x) keyed by a seed tensor drawn
from torch's generator, at the 64-bit element offset row * L + column; fp64 states get fp64 normals (53-bit
uniforms through Box-Muller in fp64), fp32 states tl.randn.

One module of over 300 lines, on purpose: every fused MCMC update (the twin of csrc/integrators.cpp) shares
the tiling, the Philox noise, the partial sums and the Metropolis test written once here.
"""
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kale_fast.triton_kernels._launch import check_programs, multiprocessors, on_device

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# On a GPU: at most 2048 elements per program, 8 per thread at 8 warps (no spills in fp64 with Philox on sm_90:
# tools/check_triton_sm90.py), at least 256 (8 per thread at one warp), and programs enough for two per
# streaming multiprocessor of the device, so that small states still spread over it. The interpreter runs each
# program in Python: there, few large programs (the tests set the GPU's tiles where they test the tiling itself).
_MAX_TILE = 1 << 16 if _INTERPRETED else 2048
_MIN_TILE = 256
_PROGRAMS_PER_MULTIPROCESSOR = 2


def target_programs(device: torch.device) -> int:
    """How many programs a small state is spread over on `device` (1 in the interpreter)."""
    return 1 if _INTERPRETED else _PROGRAMS_PER_MULTIPROCESSOR * multiprocessors(device)
_SUM_TILE = 1024  # partial sums one program of the second pass adds at a time


@dataclass(frozen=True)
class Tiling:
    """Launch configuration of the integrator kernels for a (B, L) state: a pure function of the shape."""
    rows: int  # ROWS: rows per program (> 1 only when one tile spans a row)
    block_cols: int  # BLOCK_COLS: columns per program
    col_tiles: int  # programs per row
    row_blocks: int
    num_warps: int
    sum_rows: int  # second pass (partial sums per row): rows per program ...
    sum_block: int  # ... and partials per step

    @property
    def grid(self):
        return (self.row_blocks * self.col_tiles,)


def tiling(n_rows: int, n_cols: int, n_programs: int) -> Tiling:
    """The tiles for a (n_rows, n_cols) state spread over about `n_programs` programs where it is small
    (target_programs(device)); the dtype does not change them: 8 elements per thread either way."""
    block_cols = min(triton.next_power_of_2(n_cols), _MAX_TILE)
    col_tiles = triton.cdiv(n_cols, block_cols)
    spread = triton.next_power_of_2(triton.cdiv(n_rows * block_cols, n_programs))
    tile = min(max(spread, _MIN_TILE, block_cols), _MAX_TILE)
    rows = max(1, min(tile // block_cols, triton.next_power_of_2(n_rows)))
    row_blocks = triton.cdiv(n_rows, rows)
    check_programs(row_blocks * col_tiles, f"a ({n_rows}, {n_cols}) integrator state")
    sum_block = min(triton.next_power_of_2(col_tiles), _SUM_TILE)
    sum_rows = max(1, min(_SUM_TILE // sum_block, triton.next_power_of_2(n_rows)))
    return Tiling(rows, block_cols, col_tiles, row_blocks, max(1, min(8, rows * block_cols // 256)), sum_rows,
                  sum_block)


def _tiles(z) -> Tiling:
    return tiling(*z.shape, target_programs(z.device))


def _launch(kernel, z, tiles: Tiling, *args, **constexprs):
    with on_device(z):
        kernel[tiles.grid](*args, z.shape[0], z.shape[1], tiles.col_tiles, ROWS=tiles.rows,
                           BLOCK_COLS=tiles.block_cols, num_warps=tiles.num_warps, **constexprs)


def _partials(z, tiles: Tiling, out):
    """Where a kernel writes its per-(row, tile) sums: `out` itself when one tile spans a row."""
    if tiles.col_tiles == 1:
        return out
    return torch.empty(z.shape[0] * tiles.col_tiles, dtype=z.dtype, device=z.device)


def _launch_sums(kernel, z, tiles: Tiling, *args):
    """The second pass: one program adds the partials of sum_rows rows."""
    with on_device(z):
        kernel[(triton.cdiv(z.shape[0], tiles.sum_rows),)](*args, z.shape[0], tiles.col_tiles, ROWS=tiles.sum_rows,
                                                           BLOCK=tiles.sum_block)


# --- building blocks --------------------------------------------------------------------------------------

@triton.jit
def _tile(n_rows, n_cols, col_tiles, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """This program's rows (ROWS,), column tile, element offsets (ROWS, BLOCK_COLS) (int64) and masks."""
    pid = tl.program_id(0)
    col_tile = pid % col_tiles
    rows = (pid // col_tiles) * ROWS + tl.arange(0, ROWS)
    cols = col_tile * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols[None, :] < n_cols)
    return rows, row_mask, col_tile, rows.to(tl.int64)[:, None] * n_cols + cols[None, :], mask


@triton.jit
def _randn(seed_ptr, offs, DTYPE: tl.constexpr):
    """Standard normals at 64-bit Philox counters `offs`; in fp64 from two 53-bit uniforms."""
    seed = tl.load(seed_ptr)
    if DTYPE == tl.float64:
        r0, r1, r2, r3 = tl.randint4x(seed, offs)
        a = ((r0.to(tl.uint64) << 32) | r1.to(tl.uint64)) >> 11
        b = ((r2.to(tl.uint64) << 32) | r3.to(tl.uint64)) >> 11
        u1 = (a.to(tl.float64) + 1.0) * 1.1102230246251565e-16  # (0, 1]: log(u1) is finite
        u2 = b.to(tl.float64) * 1.1102230246251565e-16  # [0, 1)
        xi = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
    else:
        xi = tl.randn(seed, offs)
    return xi


@triton.jit
def _noise(seed_ptr, noise_ptr, offs, mask, HAS_NOISE: tl.constexpr, DTYPE: tl.constexpr):
    if HAS_NOISE:
        xi = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    else:
        xi = _randn(seed_ptr, offs, DTYPE)
    return xi


@triton.jit
def _store_partial(partial_ptr, rows, row_mask, col_tile, col_tiles, value):
    """Per-row partial sum of a tile at [row, col_tile] of a (B, col_tiles) buffer (the result when one tile)."""
    tl.store(partial_ptr + rows.to(tl.int64) * col_tiles + col_tile, value, mask=row_mask)


@triton.jit
def _sum_partials(partial_ptr, n_rows, col_tiles, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    """(rows, row_mask, sums) of this program's rows' partials, added in a fixed order."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    row_mask = rows < n_rows
    total = tl.zeros([ROWS, BLOCK], partial_ptr.dtype.element_ty)
    for start in range(0, col_tiles, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = row_mask[:, None] & (cols[None, :] < col_tiles)
        total += tl.load(partial_ptr + rows.to(tl.int64)[:, None] * col_tiles + cols[None, :], mask=mask, other=0.0)
    return rows, row_mask, tl.sum(total, axis=1)


@triton.jit
def _sum_partials_kernel(partial_ptr, out_ptr, n_rows, col_tiles, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows, row_mask, total = _sum_partials(partial_ptr, n_rows, col_tiles, ROWS, BLOCK)
    tl.store(out_ptr + rows, total, mask=row_mask)


@triton.jit
def _decide(log_ratio, rows, row_mask, lu_ptr, prob_ptr, accepted_ptr, u_ptr, u_old_ptr):
    """Metropolis test per row: stores accept_prob and accepted, restores rejected rows' potential u.
    NaN and infinite log ratios are rejected. Returns accepted (ROWS,) as int1."""
    finite = (log_ratio == log_ratio) & (tl.abs(log_ratio) != float("inf"))
    accepted = finite & (tl.load(lu_ptr + rows, mask=row_mask, other=0.0) < log_ratio)
    tl.store(prob_ptr + rows, tl.where(finite, tl.exp(tl.minimum(log_ratio, 0.0)), 0.0), mask=row_mask)
    tl.store(accepted_ptr + rows, accepted, mask=row_mask)
    row_restore = row_mask & (accepted == 0)
    tl.store(u_ptr + rows, tl.load(u_old_ptr + rows, mask=row_restore), mask=row_restore)
    return accepted


@triton.jit
def _restore(accepted, offs, mask, z_ptr, z_old_ptr, grad_ptr, grad_old_ptr):
    """Where a row is rejected, restore its (z, grad) tile from the previous state."""
    restore = mask & (accepted == 0)[:, None]
    tl.store(z_ptr + offs, tl.load(z_old_ptr + offs, mask=restore), mask=restore)
    tl.store(grad_ptr + offs, tl.load(grad_old_ptr + offs, mask=restore), mask=restore)


@triton.jit
def _restore_rejected_kernel(accepted_ptr, z_ptr, z_old_ptr, grad_ptr, grad_old_ptr, n_rows, n_cols, col_tiles,
                             ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, _, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    accepted = tl.load(accepted_ptr + rows, mask=row_mask, other=1)
    _restore(accepted, offs, mask, z_ptr, z_old_ptr, grad_ptr, grad_old_ptr)


# --- HMC --------------------------------------------------------------------------------------------------

@triton.jit
def _hmc_draw_momentum_kernel(seed_ptr, p_ptr, partial_ptr, n_rows, n_cols, col_tiles, ROWS: tl.constexpr,
                              BLOCK_COLS: tl.constexpr):
    rows, row_mask, col_tile, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    p = tl.where(mask, _randn(seed_ptr, offs, p_ptr.dtype.element_ty), 0.0).to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, p, mask=mask)
    _store_partial(partial_ptr, rows, row_mask, col_tile, col_tiles, 0.5 * tl.sum(p * p, axis=1))


def hmc_draw_momentum(z, seed):
    momentum, kinetic = torch.empty_like(z), torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    tiles = _tiles(z)
    partials = _partials(z, tiles, kinetic)
    _launch(_hmc_draw_momentum_kernel, z, tiles, seed, momentum, partials)
    if tiles.col_tiles > 1:
        _launch_sums(_sum_partials_kernel, z, tiles, partials, kinetic)
    return momentum, kinetic


@triton.jit
def _leapfrog_kick_drift_kernel(z_ptr, p_ptr, grad_ptr, step_ptr, kick_fraction: tl.float64, n_rows, n_cols,
                                col_tiles, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, _, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=0.0)[:, None]
    # kick_fraction is f64 (annotated: a Python float would compile as f32); a scalar times a tensor takes the
    # tensor's dtype, so fp32 states stay in fp32
    p = tl.load(p_ptr + offs, mask=mask) - kick_fraction * h * tl.load(grad_ptr + offs, mask=mask)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(z_ptr + offs, tl.load(z_ptr + offs, mask=mask) + h * p, mask=mask)


def leapfrog_kick_drift(z, p, grad, step_size, kick_fraction: float) -> None:
    _launch(_leapfrog_kick_drift_kernel, z, _tiles(z), z, p, grad, step_size, float(kick_fraction))


@triton.jit
def _hmc_trajectory_end_kernel(z_ptr, p_ptr, grad_ptr, u_ptr, z0_ptr, u0_ptr, grad0_ptr, k0_ptr, step_ptr, lu_ptr,
                               error_ptr, prob_ptr, accepted_ptr, partial_ptr, n_rows, n_cols, col_tiles,
                               ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, FUSED: tl.constexpr):
    """Kinetic energy after the closing half kick; with FUSED (one tile spans each row) also the energy error,
    the Metropolis test and the restore, else the tile's partial kinetic energy for _hmc_decide_kernel."""
    rows, row_mask, col_tile, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=0.0)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0) - 0.5 * h[:, None] * tl.load(grad_ptr + offs, mask=mask, other=0.0)
    kinetic = 0.5 * tl.sum(p * p, axis=1)
    if FUSED:
        log_ratio = _hmc_log_ratio(kinetic, rows, row_mask, u_ptr, u0_ptr, k0_ptr)
        tl.store(error_ptr + rows, -log_ratio, mask=row_mask)
        accepted = _decide(log_ratio, rows, row_mask, lu_ptr, prob_ptr, accepted_ptr, u_ptr, u0_ptr)
        _restore(accepted, offs, mask, z_ptr, z0_ptr, grad_ptr, grad0_ptr)
    else:
        _store_partial(partial_ptr, rows, row_mask, col_tile, col_tiles, kinetic)


@triton.jit
def _hmc_log_ratio(kinetic, rows, row_mask, u_ptr, u0_ptr, k0_ptr):
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0)
    h0 = tl.load(u0_ptr + rows, mask=row_mask, other=0.0) + tl.load(k0_ptr + rows, mask=row_mask, other=0.0)
    return h0 - (u + kinetic)


@triton.jit
def _hmc_decide_kernel(partial_ptr, u_ptr, u0_ptr, k0_ptr, lu_ptr, error_ptr, prob_ptr, accepted_ptr, n_rows,
                       col_tiles, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows, row_mask, kinetic = _sum_partials(partial_ptr, n_rows, col_tiles, ROWS, BLOCK)
    log_ratio = _hmc_log_ratio(kinetic, rows, row_mask, u_ptr, u0_ptr, k0_ptr)
    tl.store(error_ptr + rows, -log_ratio, mask=row_mask)
    _decide(log_ratio, rows, row_mask, lu_ptr, prob_ptr, accepted_ptr, u_ptr, u0_ptr)


def hmc_trajectory_end(z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform):
    """(accept_prob, accepted, energy_error): energy_error = H1 - H0, -log of the Metropolis ratio (B,)."""
    energy_error = torch.empty_like(potential)
    accept_prob, accepted = _metropolis_test(
        z, potential, (_hmc_trajectory_end_kernel, z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size,
                       log_uniform, energy_error),
        (_hmc_decide_kernel, potential, potential0, kinetic0, log_uniform, energy_error), (z, z0, grad, grad0))
    return accept_prob, accepted, energy_error


def _metropolis_test(z, potential, first_pass, decide, restore):
    """A Metropolis test over (B, L) rows: `first_pass` (kernel, *args) alone when one tile spans each row (it
    then decides and restores too), else followed by `decide` (kernel, *args: per-row sums of its partials and
    the decision) and the restore of rejected rows' (z, z_old, grad, grad_old) = `restore`.
    Returns (accept_prob, accepted), both (B,)."""
    accept_prob = torch.empty_like(potential)
    accepted = torch.empty(z.shape[0], dtype=torch.bool, device=z.device)
    tiles = _tiles(z)
    fused = tiles.col_tiles == 1
    partials = _partials(z, tiles, accept_prob)  # unused when fused
    kernel, *args = first_pass
    _launch(kernel, z, tiles, *args, accept_prob, accepted, partials, FUSED=fused)
    if not fused:
        kernel, *args = decide
        _launch_sums(kernel, z, tiles, partials, *args, accept_prob, accepted)
        _launch(_restore_rejected_kernel, z, tiles, accepted, *restore)
    return accept_prob, accepted


# --- Langevin moves ---------------------------------------------------------------------------------------

@triton.jit
def _langevin_move_kernel(z_ptr, grad_ptr, step_ptr, seed_ptr, noise_ptr, out_ptr, n_rows, n_cols, col_tiles,
                          HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, _, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=1.0)[:, None]
    xi = _noise(seed_ptr, noise_ptr, offs, mask, HAS_NOISE, z_ptr.dtype.element_ty)
    z = tl.load(z_ptr + offs, mask=mask) - h * tl.load(grad_ptr + offs, mask=mask) + tl.sqrt(2.0 * h) * xi
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)


def _langevin_move(z, grad, step_size, seed, noise, out):
    _launch(_langevin_move_kernel, z, _tiles(z), z, grad, step_size, seed,
            noise if noise is not None else z, out, HAS_NOISE=noise is not None)


def mala_propose(z, grad, step_size, seed, noise):
    out = torch.empty_like(z)
    _langevin_move(z, grad, step_size, seed, noise, out)
    return out


def ula_step(z, grad, step_size, seed, noise) -> None:
    _langevin_move(z, grad, step_size, seed, noise, z)


@triton.jit
def _mala_accept_kernel(z_ptr, u_ptr, grad_ptr, zq_ptr, uq_ptr, gradq_ptr, step_ptr, lu_ptr, error_ptr, prob_ptr,
                        accepted_ptr, partial_ptr, n_rows, n_cols, col_tiles, ROWS: tl.constexpr,
                        BLOCK_COLS: tl.constexpr, FUSED: tl.constexpr):
    """|forward|^2 - |backward|^2 of the proposal densities' exponents; with FUSED also the energy error, the
    Metropolis test and the restore, else the tile's partial for _mala_decide_kernel."""
    rows, row_mask, col_tile, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=1.0)
    delta = tl.load(zq_ptr + offs, mask=mask, other=0.0) - tl.load(z_ptr + offs, mask=mask, other=0.0)
    forward = delta + h[:, None] * tl.load(grad_ptr + offs, mask=mask, other=0.0)
    backward = -delta + h[:, None] * tl.load(gradq_ptr + offs, mask=mask, other=0.0)
    squares = tl.sum(forward * forward, axis=1) - tl.sum(backward * backward, axis=1)
    if FUSED:
        log_ratio = _mala_log_ratio(squares, rows, row_mask, h, u_ptr, uq_ptr)
        tl.store(error_ptr + rows, -log_ratio, mask=row_mask)
        accepted = _decide(log_ratio, rows, row_mask, lu_ptr, prob_ptr, accepted_ptr, uq_ptr, u_ptr)
        _restore(accepted, offs, mask, zq_ptr, z_ptr, gradq_ptr, grad_ptr)
    else:
        _store_partial(partial_ptr, rows, row_mask, col_tile, col_tiles, squares)


@triton.jit
def _mala_log_ratio(squares, rows, row_mask, h, u_ptr, uq_ptr):
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0)
    return (u - tl.load(uq_ptr + rows, mask=row_mask, other=0.0)) + squares / (4.0 * h)


@triton.jit
def _mala_decide_kernel(partial_ptr, u_ptr, uq_ptr, step_ptr, lu_ptr, error_ptr, prob_ptr, accepted_ptr, n_rows,
                        col_tiles, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows, row_mask, squares = _sum_partials(partial_ptr, n_rows, col_tiles, ROWS, BLOCK)
    h = tl.load(step_ptr + rows, mask=row_mask, other=1.0)
    log_ratio = _mala_log_ratio(squares, rows, row_mask, h, u_ptr, uq_ptr)
    tl.store(error_ptr + rows, -log_ratio, mask=row_mask)
    _decide(log_ratio, rows, row_mask, lu_ptr, prob_ptr, accepted_ptr, uq_ptr, u_ptr)


def mala_accept(z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform):
    """(accept_prob, accepted, energy_error): energy_error = -log of the Metropolis ratio (B,)."""
    energy_error = torch.empty_like(potential)
    accept_prob, accepted = _metropolis_test(
        z, potential, (_mala_accept_kernel, z, potential, grad, z_prop, potential_prop, grad_prop, step_size,
                       log_uniform, energy_error),
        (_mala_decide_kernel, potential, potential_prop, step_size, log_uniform, energy_error),
        (z_prop, z, grad_prop, grad))
    return accept_prob, accepted, energy_error


@triton.jit
def _kinetic_langevin_baoa_kernel(z_ptr, v_ptr, grad_ptr, step_ptr, friction_ptr, seed_ptr, noise_ptr, n_rows, n_cols,
                                  col_tiles, HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, _, offs, mask = _tile(n_rows, n_cols, col_tiles, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=0.0)[:, None]
    c = tl.exp(-tl.load(friction_ptr + rows, mask=row_mask, other=0.0)[:, None] * h)
    v = tl.load(v_ptr + offs, mask=mask) - 0.5 * h * tl.load(grad_ptr + offs, mask=mask)
    z = tl.load(z_ptr + offs, mask=mask) + 0.5 * h * v
    v = c * v + tl.sqrt(1.0 - c * c) * _noise(seed_ptr, noise_ptr, offs, mask, HAS_NOISE, z_ptr.dtype.element_ty)
    tl.store(z_ptr + offs, (z + 0.5 * h * v).to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


def kinetic_langevin_baoa(z, v, grad, step_size, friction, seed, noise) -> None:
    _launch(_kinetic_langevin_baoa_kernel, z, _tiles(z), z, v, grad, step_size, friction, seed,
            noise if noise is not None else z, HAS_NOISE=noise is not None)
