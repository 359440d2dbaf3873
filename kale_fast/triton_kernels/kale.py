"""Triton kernels of the KALE objective and of log-mean-exp (GPU; CPU through TRITON_INTERPRET=1).

Same functions and contracts as the C++ kernels in csrc/kale.cpp (kale_fast/ops/kale.py calls either):
inputs arrive 1-D (kale) or as (R, K) rows (log-mean-exp), contiguous; results are in the accumulation
dtype (fp32, fp64 for fp64 inputs).

The forward reduction keeps a running (max, rescaled sum) per lane, one exp per element, and finishes in
the same kernel when one program covers the input (the training-batch regime: one launch) or in a small
second kernel over the per-program partials (the only temporary buffer, 3 x programs). Log-mean-exp does the
same per row when rows are too few to fill the device (dim=None: one row of every element), and its backward
maps the flattened elements on a 1-D grid. Counts enter the kernels as integers; the scalar work that finishes
a reduction (means, logarithms of counts, the loss) runs in fp64, so that it adds no rounding of its own.

Accuracy at any size: each lane's running sums are compensated (Kahan), and lanes, programs and partials are
combined by tree reductions, so no sum grows a rounding error with the number of elements. The gradients keep
1/M and 1/K as factors (a large |A| or |log-mean-exp| would round them away inside an exponent), and the mean of
e_data falls back to a sum scaled by 2^-64 where the plain one overflows.

One module of over 300 lines, on purpose: the kernels of one op family (the twin of csrc/kale.cpp), sharing
the online (max, compensated sum) helpers that keep every reduction exact; split, each half would import them
back.
"""
import os

import torch
import triton
import triton.language as tl

from kale_fast.ops._dtypes import accumulation_dtype
from kale_fast.triton_kernels._launch import check_programs, multiprocessors, on_device

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# The interpreter runs each program in Python: few, large programs. On a GPU: blocks that keep 8 lanes of
# state per thread, and enough programs to fill the device.
_REDUCE_BLOCK = 1024 if _INTERPRETED else 2048
_MAP_BLOCK = 1024 if _INTERPRETED else 4096
_NUM_WARPS = 8
_SINGLE_PROGRAM_MAX = 1 << 16  # up to here one program reduces everything and writes the loss itself
# Programs of a split reduction: four per streaming multiprocessor of the device (4 in the interpreter). The grid
# is no compile-time constant, so tools/check_triton_sm90.py still compiles exactly what runs.
_PROGRAMS_PER_MULTIPROCESSOR = 4


def max_programs(device: torch.device) -> int:
    """Programs of a split reduction on `device`: enough to fill it."""
    return _PROGRAMS_PER_MULTIPROCESSOR * multiprocessors(device)


def _acc_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def reduce_programs(n_blocks: int, device: torch.device) -> int:
    """Programs of a reduction over n_blocks blocks of _REDUCE_BLOCK elements: each grid-strides over the rest."""
    return min(n_blocks, max_programs(device))


@triton.jit
def _rescale(a, m):
    """exp(a - m), and 1 where a == m (equal infinities must not give exp(nan))."""
    return tl.where(a == m, 1.0, tl.exp(a - m))


@triton.jit
def _compensated_add(s, c, x):
    """Kahan: fold x into the sum s whose rounding error so far is -c (the true sum is about s - c), so that
    a lane's sum over any number of grid-stride steps keeps fp32 (fp64) rounding instead of growing with it."""
    y = x - c
    t = s + y
    return t, (t - s) - y


@triton.jit
def _online_update(m, s, c, x, mask):
    """Fold x into per-lane (max, compensated sum exp(. - max)) with one exp: exp(-|x - m|) is either the new
    term (x <= m) or the factor that rescales the old sum (x > m, the new term is then 1). Masked lanes keep
    their state; NaN x makes s NaN; equal infinities count 1 each (x == m)."""
    e = tl.where(x == m, 1.0, tl.exp(-tl.abs(x - m)))
    grow = x > m
    factor = tl.where(grow, e, 1.0)
    s_new, c_new = _compensated_add(s * factor, c * factor, tl.where(grow, 1.0, e))
    return tl.where(mask & grow, x, m), tl.where(mask, s_new, s), tl.where(mask, c_new, c)


@triton.jit
def _merge_lanes(m, s):
    """(max, sum) of per-lane partial states, in fp64 (a tree sum of fp32 lanes adds up to log2(lanes)
    roundings; in fp64 none that shows)."""
    m_all = tl.max(m, 0)
    return m_all.to(tl.float64), tl.sum((s * _rescale(m, m_all)).to(tl.float64), 0)


@triton.jit
def _data_sums(d, dc, d_scaled, x, mask):
    """Per-lane sums of e_data: compensated (d, dc), and plain of x * 2^-64 (exact scaling), the fallback where
    the first overflows (a mean of finite values stays finite)."""
    d_new, dc_new = _compensated_add(d, dc, x)
    return tl.where(mask, d_new, d), tl.where(mask, dc_new, dc), d_scaled + x * 5.421010862427522e-20


@triton.jit
def _mean_exp(m, s, n):
    """mean of exp(t) over n terms from their (max, sum) state: (s / n) exp(m), moved into the exponent only
    where exp(m) alone would overflow; m, s in fp64 (the finishing precision)."""
    ratio = s / tl.cast(n, tl.float64)
    return tl.where(m <= 700.0, ratio * tl.exp(m), tl.exp(m + tl.log(ratio)))


@triton.jit
def _kale_finish(m, s, data_sum, data_scaled, a_ptr, loss_ptr, state_ptr, n_data, n_gen, HAS_A: tl.constexpr,
                 ACC: tl.constexpr):
    """The loss from the reduced state, in fp64 (no rounding of its own before the last); the (max, sum) state."""
    tl.store(state_ptr, m.to(ACC))
    tl.store(state_ptr + 1, s.to(ACC))
    m64, s64 = m.to(tl.float64), s.to(ACC).to(tl.float64)  # the sum as saved, so forward and backward agree
    plain = data_sum.to(tl.float64)
    scaled = data_scaled.to(tl.float64) / tl.cast(n_data, tl.float64) * 1.8446744073709552e19  # * 2^64
    mean = tl.where((plain == plain) & (tl.abs(plain) < float("inf")), plain / tl.cast(n_data, tl.float64), scaled)
    if HAS_A:
        loss = mean + tl.cast(tl.load(a_ptr), tl.float64) + _mean_exp(m64, s64, n_gen) - 1.0
    else:
        loss = mean + m64 + (tl.log(s64) - tl.log(tl.cast(n_gen, tl.float64)))
    tl.store(loss_ptr, tl.cast(loss, ACC))


@triton.jit
def _kale_loss_forward_kernel(e_data_ptr, e_gen_ptr, a_ptr, partial_ptr, loss_ptr, state_ptr, n_data, n_gen,
                              n_programs, iters, HAS_A: tl.constexpr, SINGLE: tl.constexpr, ACC: tl.constexpr,
                              BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    c = tl.zeros([BLOCK], ACC)
    d = tl.zeros([BLOCK], ACC)
    dc = tl.zeros([BLOCK], ACC)
    d_scaled = tl.zeros([BLOCK], ACC)
    if HAS_A:
        a = tl.load(a_ptr).to(ACC)
    else:
        a = 0.0
    for it in range(0, iters):  # grid-stride over blocks keeps every step coalesced
        offs = (pid + it * n_programs).to(tl.int64) * BLOCK + lanes
        gen_mask = offs < n_gen
        t = -tl.load(e_gen_ptr + offs, mask=gen_mask, other=0.0).to(ACC) - a  # the gradient's exponent
        m, s, c = _online_update(m, s, c, t, gen_mask)
        data_mask = offs < n_data
        d, dc, d_scaled = _data_sums(d, dc, d_scaled, tl.load(e_data_ptr + offs, mask=data_mask, other=0.0).to(ACC),
                                     data_mask)
    m_all, s_all = _merge_lanes(m, s - c)
    d_all, d_scaled_all = tl.sum((d - dc).to(tl.float64), 0), tl.sum(d_scaled.to(tl.float64), 0)
    if SINGLE:
        _kale_finish(m_all, s_all, d_all, d_scaled_all, a_ptr, loss_ptr, state_ptr, n_data, n_gen, HAS_A, ACC)
    else:
        tl.store(partial_ptr + pid, m_all)
        tl.store(partial_ptr + n_programs + pid, s_all)
        tl.store(partial_ptr + 2 * n_programs + pid, d_all)
        tl.store(partial_ptr + 3 * n_programs + pid, d_scaled_all)


@triton.jit
def _kale_loss_combine_kernel(partial_ptr, a_ptr, loss_ptr, state_ptr, n_data, n_gen, n_programs,
                              HAS_A: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n_programs
    m = tl.load(partial_ptr + offs, mask=mask, other=float("-inf"))
    s = tl.load(partial_ptr + n_programs + offs, mask=mask, other=0.0)
    d = tl.load(partial_ptr + 2 * n_programs + offs, mask=mask, other=0.0)
    d_scaled = tl.load(partial_ptr + 3 * n_programs + offs, mask=mask, other=0.0)
    m_all, s_all = _merge_lanes(m, s)
    _kale_finish(m_all, s_all, tl.sum(d, 0), tl.sum(d_scaled, 0), a_ptr, loss_ptr, state_ptr, n_data, n_gen, HAS_A,
                 ACC)


def kale_loss_forward(e_data: torch.Tensor, e_gen: torch.Tensor, log_partition):
    """(loss, state) in the accumulation dtype; state: (2,) (max, sum) of the log-sum-exp of -e_gen - A (A absent:
    -e_gen)."""
    acc = accumulation_dtype(e_gen.dtype)
    n_data, n_gen = e_data.numel(), e_gen.numel()
    loss = torch.empty((), dtype=acc, device=e_gen.device)
    state = torch.empty(2, dtype=acc, device=e_gen.device)
    n_blocks = triton.cdiv(max(n_data, n_gen), _REDUCE_BLOCK)
    single = max(n_data, n_gen) <= _SINGLE_PROGRAM_MAX
    n_programs = 1 if single else reduce_programs(n_blocks, e_gen.device)
    partials = state if single else torch.empty(4 * n_programs, dtype=torch.float64, device=e_gen.device)
    a = log_partition if log_partition is not None else state  # never read when HAS_A is False
    common = dict(HAS_A=log_partition is not None, ACC=_acc_dtype(e_gen.dtype))
    with on_device(e_gen):
        _kale_loss_forward_kernel[(n_programs,)](
            e_data, e_gen, a, partials, loss, state, n_data, n_gen, n_programs, triton.cdiv(n_blocks, n_programs),
            SINGLE=single, BLOCK=_REDUCE_BLOCK, num_warps=_NUM_WARPS, **common)
        if not single:
            _kale_loss_combine_kernel[(1,)](partials, a, loss, state, n_data, n_gen, n_programs,
                                            BLOCK=triton.next_power_of_2(n_programs), **common)
    return loss, state


@triton.jit
def _kale_loss_backward_kernel(grad_ptr, e_gen_ptr, a_ptr, state_ptr, grad_data_ptr, grad_gen_ptr, grad_a_ptr,
                               n_data, n_gen, HAS_A: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """d e_gen_i = scale * exp((-e_gen_i - shift) - post_shift): -g/sum * exp(-e_gen_i - max) without A,
    -g/M * exp(-e_gen_i - A) with A (log M moves into the exponent only where exp alone would overflow): 1/M and
    1/sum stay factors, which a large |A| cannot round away. Program 0 writes the constant d e_data and d A."""
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    g = tl.load(grad_ptr).to(tl.float64)
    m = tl.load(state_ptr).to(tl.float64)
    s = tl.load(state_ptr + 1).to(tl.float64)
    if HAS_A:
        shift = tl.load(a_ptr).to(ACC)
        overflows = m > 80.0
        post_shift = tl.where(overflows, tl.log(tl.cast(n_gen, tl.float64)), 0.0).to(ACC)
        scale = tl.where(overflows, -g, -g / tl.cast(n_gen, tl.float64)).to(ACC)
    else:
        shift = m.to(ACC)
        post_shift = 0.0
        scale = (-g / s).to(ACC)
    gen_mask = offs < n_gen
    x = tl.load(e_gen_ptr + offs, mask=gen_mask, other=0.0).to(ACC)
    grad_gen = (scale * tl.exp((-x - shift) - post_shift)).to(ACC)
    tl.store(grad_gen_ptr + offs, grad_gen.to(grad_gen_ptr.dtype.element_ty), mask=gen_mask)
    if pid == 0:
        tl.store(grad_data_ptr, (g / tl.cast(n_data, tl.float64)).to(ACC).to(grad_data_ptr.dtype.element_ty))
        if HAS_A:
            tl.store(grad_a_ptr, (g * (1.0 - _mean_exp(m, s, n_gen))).to(ACC))
        else:
            tl.store(grad_a_ptr, tl.cast(0.0, ACC))


def kale_loss_backward(grad: torch.Tensor, e_data: torch.Tensor, e_gen: torch.Tensor, log_partition,
                       state: torch.Tensor):
    """(d e_data, d e_gen, d A) in one launch; d e_data is one value expanded to e_data's shape; d A is zero when
    log_partition is None."""
    grad_data, grad_gen = e_data.new_empty(()), torch.empty_like(e_gen)
    grad_a = torch.empty((), dtype=state.dtype, device=state.device)
    n_data, n_gen = e_data.numel(), e_gen.numel()
    grid = (check_programs(max(1, triton.cdiv(n_gen, _MAP_BLOCK)), "kale_loss_backward"),)
    with on_device(e_gen):
        _kale_loss_backward_kernel[grid](
            grad, e_gen, log_partition if log_partition is not None else state, state, grad_data, grad_gen, grad_a,
            n_data, n_gen, HAS_A=log_partition is not None, ACC=_acc_dtype(e_gen.dtype), BLOCK=_MAP_BLOCK,
            num_warps=_NUM_WARPS)
    return grad_data.expand(e_data.shape), grad_gen, grad_a


def log_mean_exp_splits(n_rows: int, n_cols: int, device: torch.device) -> int:
    """Programs per row of the log-mean-exp forward: one when there are rows enough to fill the device, else
    up to one per block, so that a few long rows (dim=None: one row of every element) still spread out."""
    n_blocks = triton.cdiv(n_cols, _REDUCE_BLOCK)
    splits = max(1, min(n_blocks, max_programs(device) // n_rows))
    check_programs(n_rows * splits, f"log_mean_exp of ({n_rows}, {n_cols}) rows")
    return splits


@triton.jit
def _log_mean_exp_value(m, s, n_cols, ACC: tl.constexpr):
    """max + log(sum) - log K, finished in fp64."""
    value = tl.cast(m, tl.float64) + (tl.log(tl.cast(s, tl.float64)) - tl.log(tl.cast(n_cols, tl.float64)))
    return tl.cast(value, ACC)


@triton.jit
def _log_mean_exp_forward_kernel(x_ptr, out_ptr, partial_ptr, n_rows, n_cols, splits, ACC: tl.constexpr,
                                 BLOCK: tl.constexpr):
    """Program (row, split) folds blocks split, split + splits, ... of its row; one split writes the row's
    result, several write (max, sum) partials for _log_mean_exp_combine_kernel."""
    pid = tl.program_id(0)
    row = (pid // splits).to(tl.int64)
    split = pid % splits
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    c = tl.zeros([BLOCK], ACC)
    for start in range(split * BLOCK, n_cols, splits * BLOCK):
        offs = start + lanes
        mask = offs < n_cols
        x = tl.load(x_ptr + row * n_cols + offs, mask=mask, other=0.0).to(ACC)
        m, s, c = _online_update(m, s, c, x, mask)
    m_all, s_all = _merge_lanes(m, s - c)
    if splits == 1:
        tl.store(out_ptr + row, _log_mean_exp_value(m_all, s_all, n_cols, ACC))
    else:
        tl.store(partial_ptr + pid, m_all)
        tl.store(partial_ptr + n_rows * splits + pid, s_all)


@triton.jit
def _log_mean_exp_combine_kernel(partial_ptr, out_ptr, n_rows, n_cols, splits, ACC: tl.constexpr,
                                 BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < splits
    m = tl.load(partial_ptr + row * splits + offs, mask=mask, other=float("-inf"))
    s = tl.load(partial_ptr + n_rows * splits + row * splits + offs, mask=mask, other=0.0)
    m_all, s_all = _merge_lanes(m, s)
    tl.store(out_ptr + row, _log_mean_exp_value(m_all, s_all, n_cols, ACC))


def log_mean_exp_forward(x: torch.Tensor) -> torch.Tensor:
    """Row-wise log(mean(exp(x))) of (R, K) rows, (R,) in the accumulation dtype."""
    acc = accumulation_dtype(x.dtype)
    n_rows, n_cols = x.shape
    out = torch.empty(n_rows, dtype=acc, device=x.device)
    splits = log_mean_exp_splits(n_rows, n_cols, x.device)
    partials = out if splits == 1 else torch.empty(2 * n_rows * splits, dtype=torch.float64, device=x.device)
    with on_device(x):
        _log_mean_exp_forward_kernel[(n_rows * splits,)](
            x, out, partials, n_rows, n_cols, splits, ACC=_acc_dtype(x.dtype),
            BLOCK=min(_REDUCE_BLOCK, triton.next_power_of_2(n_cols)), num_warps=_NUM_WARPS)
        if splits > 1:
            _log_mean_exp_combine_kernel[(n_rows,)](partials, out, n_rows, n_cols, splits, ACC=_acc_dtype(x.dtype),
                                                    BLOCK=triton.next_power_of_2(splits))
    return out


@triton.jit
def _log_mean_exp_backward_kernel(grad_ptr, x_ptr, out_ptr, grad_x_ptr, n_elements, n_cols, ACC: tl.constexpr,
                                  BLOCK: tl.constexpr):
    """grad_x over the flattened (R, K) elements: a 1-D grid holds any size (a (rows, column blocks) grid would
    stop at 65535 blocks per row)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    row = offs // n_cols
    out = tl.load(out_ptr + row, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
    # 1/K a factor, not log K in the exponent, where a large |out| would round it away
    grad_x = tl.load(grad_ptr + row, mask=mask, other=0.0) / tl.cast(n_cols, ACC) * tl.exp(x - out)
    tl.store(grad_x_ptr + offs, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


def log_mean_exp_backward(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad_x = grad[r] / K * exp(x - out[r]); grad and out (R,) in the accumulation dtype."""
    n_rows, n_cols = x.shape
    grad_x = torch.empty_like(x)
    grid = (check_programs(triton.cdiv(x.numel(), _MAP_BLOCK), "log_mean_exp_backward"),)
    with on_device(x):
        _log_mean_exp_backward_kernel[grid](grad, x, out, grad_x, x.numel(), n_cols, ACC=_acc_dtype(x.dtype),
                                            BLOCK=_MAP_BLOCK, num_warps=_NUM_WARPS)
    return grad_x
