"""Triton kernels of the fused MCMC updates (GPU; CPU through TRITON_INTERPRET=1).

Same functions and contracts as csrc/integrators.cpp: states (B, L) contiguous fp32/fp64, per-chain scalars
(B,), updates in place. Each program owns ROWS whole chains, so per-chain reductions (kinetic energy, proposal
densities) and the Metropolis select happen in registers within one launch. Noise comes from tl.randn
(Philox) keyed by a seed tensor drawn from torch's generator, at offset row * L + column.
"""
import os

import torch
import triton
import triton.language as tl

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_ELEMENTS_PER_PROGRAM = 1 << 16 if _INTERPRETED else 1 << 12


def _grid_and_blocks(z: torch.Tensor):
    n_rows, n_cols = z.shape
    block_cols = triton.next_power_of_2(n_cols)
    rows = max(1, min(triton.next_power_of_2(n_rows), _ELEMENTS_PER_PROGRAM // block_cols))
    return (triton.cdiv(n_rows, rows),), dict(ROWS=rows, BLOCK_COLS=block_cols)


@triton.jit
def _tile(n_rows, n_cols, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    """Row indices (ROWS,), element offsets (ROWS, BLOCK_COLS) and their masks for this program."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_COLS)
    row_mask = rows < n_rows
    mask = row_mask[:, None] & (cols[None, :] < n_cols)
    return rows, row_mask, rows.to(tl.int64)[:, None] * n_cols + cols[None, :], mask


@triton.jit
def _noise(seed_ptr, noise_ptr, offs, mask, HAS_NOISE: tl.constexpr):
    if HAS_NOISE:
        xi = tl.load(noise_ptr + offs, mask=mask, other=0.0)
    else:
        xi = tl.randn(tl.load(seed_ptr), offs.to(tl.int32))
    return xi


@triton.jit
def _metropolis(log_ratio, log_uniform):
    """(accept_prob, accepted); NaN and infinite log ratios are rejected."""
    finite = (log_ratio == log_ratio) & (tl.abs(log_ratio) != float("inf"))
    accept_prob = tl.where(finite, tl.exp(tl.minimum(log_ratio, 0.0)), 0.0)
    return accept_prob, finite & (log_uniform < log_ratio)


@triton.jit
def _hmc_draw_momentum_kernel(seed_ptr, p_ptr, kinetic_ptr, n_rows, n_cols, ROWS: tl.constexpr,
                              BLOCK_COLS: tl.constexpr):
    rows, row_mask, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK_COLS)
    p = tl.where(mask, tl.randn(tl.load(seed_ptr), offs.to(tl.int32)), 0.0).to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(kinetic_ptr + rows, 0.5 * tl.sum(p * p, axis=1), mask=row_mask)


def hmc_draw_momentum(z, seed):
    momentum, kinetic = torch.empty_like(z), torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    grid, blocks = _grid_and_blocks(z)
    _hmc_draw_momentum_kernel[grid](seed, momentum, kinetic, z.shape[0], z.shape[1], **blocks)
    return momentum, kinetic


@triton.jit
def _leapfrog_kick_drift_kernel(z_ptr, p_ptr, grad_ptr, step_ptr, kick_fraction, n_rows, n_cols,
                                ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=0.0)[:, None]
    p = tl.load(p_ptr + offs, mask=mask) - kick_fraction * h * tl.load(grad_ptr + offs, mask=mask)
    tl.store(p_ptr + offs, p, mask=mask)
    tl.store(z_ptr + offs, tl.load(z_ptr + offs, mask=mask) + h * p, mask=mask)


def leapfrog_kick_drift(z, p, grad, step_size, kick_fraction: float) -> None:
    grid, blocks = _grid_and_blocks(z)
    _leapfrog_kick_drift_kernel[grid](z, p, grad, step_size, kick_fraction, z.shape[0], z.shape[1], **blocks)


@triton.jit
def _select_rows(accepted, offs, mask, rows, row_mask, z_ptr, z_old_ptr, grad_ptr, grad_old_ptr, u_ptr, u_old_ptr):
    """Where a chain is rejected, restore its (z, grad, potential) from the previous state."""
    restore = mask & (accepted == 0)[:, None]
    tl.store(z_ptr + offs, tl.load(z_old_ptr + offs, mask=restore), mask=restore)
    tl.store(grad_ptr + offs, tl.load(grad_old_ptr + offs, mask=restore), mask=restore)
    row_restore = row_mask & (accepted == 0)
    tl.store(u_ptr + rows, tl.load(u_old_ptr + rows, mask=row_restore), mask=row_restore)


@triton.jit
def _hmc_trajectory_end_kernel(z_ptr, p_ptr, grad_ptr, u_ptr, z0_ptr, u0_ptr, grad0_ptr, k0_ptr, step_ptr, lu_ptr,
                               prob_ptr, accepted_ptr, n_rows, n_cols, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=0.0)
    p = tl.load(p_ptr + offs, mask=mask, other=0.0) - 0.5 * h[:, None] * tl.load(grad_ptr + offs, mask=mask, other=0.0)
    kinetic = 0.5 * tl.sum(p * p, axis=1)
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0)
    log_ratio = (tl.load(u0_ptr + rows, mask=row_mask, other=0.0) + tl.load(k0_ptr + rows, mask=row_mask, other=0.0)
                 ) - (u + kinetic)
    accept_prob, accepted = _metropolis(log_ratio, tl.load(lu_ptr + rows, mask=row_mask, other=0.0))
    tl.store(prob_ptr + rows, accept_prob, mask=row_mask)
    tl.store(accepted_ptr + rows, accepted, mask=row_mask)
    _select_rows(accepted.to(tl.int32), offs, mask, rows, row_mask, z_ptr, z0_ptr, grad_ptr, grad0_ptr, u_ptr, u0_ptr)


def hmc_trajectory_end(z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform):
    accept_prob = torch.empty_like(potential)
    accepted = torch.empty(z.shape[0], dtype=torch.bool, device=z.device)
    grid, blocks = _grid_and_blocks(z)
    _hmc_trajectory_end_kernel[grid](z, p, grad, potential, z0, potential0, grad0, kinetic0, step_size, log_uniform,
                                     accept_prob, accepted, z.shape[0], z.shape[1], **blocks)
    return accept_prob, accepted


@triton.jit
def _langevin_move_kernel(z_ptr, grad_ptr, step_ptr, seed_ptr, noise_ptr, out_ptr, n_rows, n_cols,
                          HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=1.0)[:, None]
    xi = _noise(seed_ptr, noise_ptr, offs, mask, HAS_NOISE)
    z = tl.load(z_ptr + offs, mask=mask) - h * tl.load(grad_ptr + offs, mask=mask) + tl.sqrt(2.0 * h) * xi
    tl.store(out_ptr + offs, z.to(out_ptr.dtype.element_ty), mask=mask)


def _langevin_move(z, grad, step_size, seed, noise, out):
    grid, blocks = _grid_and_blocks(z)
    _langevin_move_kernel[grid](z, grad, step_size, seed, noise if noise is not None else z, out, z.shape[0],
                                z.shape[1], HAS_NOISE=noise is not None, **blocks)


def mala_propose(z, grad, step_size, seed, noise):
    out = torch.empty_like(z)
    _langevin_move(z, grad, step_size, seed, noise, out)
    return out


def ula_step(z, grad, step_size, seed, noise) -> None:
    _langevin_move(z, grad, step_size, seed, noise, z)


@triton.jit
def _mala_accept_kernel(z_ptr, u_ptr, grad_ptr, zq_ptr, uq_ptr, gradq_ptr, step_ptr, lu_ptr, prob_ptr, accepted_ptr,
                        n_rows, n_cols, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=1.0)
    delta = tl.load(zq_ptr + offs, mask=mask, other=0.0) - tl.load(z_ptr + offs, mask=mask, other=0.0)
    forward = delta + h[:, None] * tl.load(grad_ptr + offs, mask=mask, other=0.0)
    backward = -delta + h[:, None] * tl.load(gradq_ptr + offs, mask=mask, other=0.0)
    u = tl.load(u_ptr + rows, mask=row_mask, other=0.0)
    uq = tl.load(uq_ptr + rows, mask=row_mask, other=0.0)
    log_ratio = (u - uq) + (tl.sum(forward * forward, axis=1) - tl.sum(backward * backward, axis=1)) / (4.0 * h)
    accept_prob, accepted = _metropolis(log_ratio, tl.load(lu_ptr + rows, mask=row_mask, other=0.0))
    tl.store(prob_ptr + rows, accept_prob, mask=row_mask)
    tl.store(accepted_ptr + rows, accepted, mask=row_mask)
    _select_rows(accepted.to(tl.int32), offs, mask, rows, row_mask, zq_ptr, z_ptr, gradq_ptr, grad_ptr, uq_ptr, u_ptr)


def mala_accept(z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform):
    accept_prob = torch.empty_like(potential)
    accepted = torch.empty(z.shape[0], dtype=torch.bool, device=z.device)
    grid, blocks = _grid_and_blocks(z)
    _mala_accept_kernel[grid](z, potential, grad, z_prop, potential_prop, grad_prop, step_size, log_uniform,
                              accept_prob, accepted, z.shape[0], z.shape[1], **blocks)
    return accept_prob, accepted


@triton.jit
def _kinetic_langevin_baoa_kernel(z_ptr, v_ptr, grad_ptr, step_ptr, friction_ptr, seed_ptr, noise_ptr, n_rows, n_cols,
                                  HAS_NOISE: tl.constexpr, ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    rows, row_mask, offs, mask = _tile(n_rows, n_cols, ROWS, BLOCK_COLS)
    h = tl.load(step_ptr + rows, mask=row_mask, other=0.0)[:, None]
    c = tl.exp(-tl.load(friction_ptr + rows, mask=row_mask, other=0.0)[:, None] * h)
    v = tl.load(v_ptr + offs, mask=mask) - 0.5 * h * tl.load(grad_ptr + offs, mask=mask)
    z = tl.load(z_ptr + offs, mask=mask) + 0.5 * h * v
    v = c * v + tl.sqrt(1.0 - c * c) * _noise(seed_ptr, noise_ptr, offs, mask, HAS_NOISE)
    tl.store(z_ptr + offs, (z + 0.5 * h * v).to(z_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


def kinetic_langevin_baoa(z, v, grad, step_size, friction, seed, noise) -> None:
    grid, blocks = _grid_and_blocks(z)
    _kinetic_langevin_baoa_kernel[grid](z, v, grad, step_size, friction, seed, noise if noise is not None else z,
                                        z.shape[0], z.shape[1], HAS_NOISE=noise is not None, **blocks)
