"""Fused Triton kernels for λ-GELU, f(x) = x·Φ(λx) (the host side is `triton_launch`).

Math in float32 whatever the storage dtype (fp32/bf16/fp16):

- `_kgelu_fwd_kernel`: y = x·Φ(λx), one read and one write per element. Φ is computed to
  relative precision in the negative tail, like the torch path (½·(1 + erf) cancels there),
  with a rational-exponential erfc (see `_normal_cdf`; the launch config's "cdf" entry selects libdevice's
  erfc or the erf form instead, for comparisons).
- `_kgelu_bwd_kernel`: dx = g·(Φ(λx) + λx·φ(λx)) and the λ gradient Σ g·x²·φ(λx), from g and x
  alone (nothing but x and λ is saved by the forward pass, as for torch's GELU).

Instruction count matters as much as bytes: at 2 bytes per element an H200 moves a tile in the
time it issues about 7 instructions per byte, and the first version of these kernels issued more
(bf16: 38 per element forward, 55 backward). So Φ and φ share one exponent (base 2, log2(e)
folded into the constants), the exponentials and the reciprocal are single hardware
instructions (flush-to-zero: results below 2^-126, where Φ and φ are subnormal, become 0), and
1/√(2π) is applied once per partial sum. Now 25 and 35 (`benchmarks/kernel_instructions.py`
counts them from the compiled SASS, no GPU needed).

The hardness comes either as λ itself or as θ (the launchers' `tau` given), in which case the
kernels compute λ = 1 + softplus(θ/τ) themselves (as torch does: θ·(1/τ), threshold 20) and the
backward returns dθ: a `KGELU` site then costs one launch forward and two backward (the
gradient kernel and the partial-sum kernel) instead of those plus a chain of tiny softplus
kernels and autograd nodes, whose host time dominated small sites.

The λ gradient is deterministic: each backward program writes its partial sum to its own slot
(no atomics, so nothing to zero before a launch and no autotune `reset_to_zero` hazard), and a
small second kernel, `_kgelu_finish_kernel`, sums the slots in a fixed order and applies the
chain rule to θ. With one λ per site every program handles one tile (a longer-lived program's
reduction epilogue cost more than it saved: H200 sweep); with one λ per channel a few programs
per SM loop over row tiles, and the partials are per (row-program, channel). An earlier version
let the last program finish the sum (an atomic ticket per launch): its gpu-scope fence per
program made the backward slower than the extra launch.

Layouts: one λ (shape (1,)) treats x as a flat vector; per-channel λ (shape (C,)) treats x as a
(rows, C) matrix tiled in [BLOCK_R, BLOCK_C] blocks. Both walk x's storage: a contiguous x, or a
dense permuted one such as a transpose (per channel: with the channels innermost), is read in
place and the output keeps its layout, as torch's elementwise ops do. Other strides (slices with
gaps, expanded gradients) are copied to a contiguous tensor first (one copy, measured in
`python -m benchmarks.kernel`).
"""

from __future__ import annotations

import math

import triton
import triton.language as tl
from triton.language.extra import libdevice

_INV_SQRT2 = tl.constexpr(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))

# Launch configuration: the winners of `python -m benchmarks.kernel --parts sweep` on an H200, as
# picked by its `--choose` (device time from CUDA-graph replays at
# 8192×3072 elements, bf16 and fp32, per site and per channel; docs/results.md).
DEFAULT_CONFIG = {
    # elements and warps per forward program for 16-bit inputs; float32 has its own entries
    "fwd_block": 2048,
    "fwd_warps": 2,
    "fwd_block_fp32": 1024,
    "fwd_warps_fp32": 4,
    # elements per backward tile (per site: one program per tile; per channel: rows × columns)
    "bwd_block": 2048,
    "bwd_warps": 2,
    "bwd_block_fp32": 2048,
    "bwd_warps_fp32": 2,
    # one λ per channel: about this many row-programs per SM in all, each looping over row tiles
    # of this many elements
    "channel_programs_per_sm": 4,
    "channel_bwd_block": 2048,
    "channel_bwd_warps": 8,
    "max_block_c": 256,
    "cdf": "rational",
    # the partial-sum kernel: elements per step, warps, and (per channel) columns per program
    # (powers of 2)
    "sum_block": 16384,
    "sum_warps": 16,
    "sum_max_cols": 32,
}
# Tuning without editing the source (benchmarks, other GPUs): HF_KGELU_KERNEL_CONFIG (a JSON object of
# these entries) or `hf_kgelu.ops.settings.override(kernel_config={...})`; `launch_config()` merges them.
_CDF_CODES = {"rational": 0, "erfc": 1, "erf": 2}

# Above this many elements, offsets are computed in int64 (masked tail tiles may index past n).
_INT32_SAFE_ELEMENTS = 2**30
# torch computes softplus(x) as x above this (F.softplus's default threshold)
_SOFTPLUS_THRESHOLD = tl.constexpr(20.0)


# Numerical Recipes' erfcc: erfc(u) = t·exp(−u² + P(t)), t = 1/(1 + u/2), u = |z|/√2 ≥ 0, with
# P's coefficients scaled by log2(e) (the kernels exponentiate base 2) and ½ folded into the
# constant term, so that Φ(−|z|) = ½·erfc(u) = t·2^(P₂(t) + w) with w = −z²/2·log2(e).
_LOG2E = 1.0 / math.log(2.0)
_ERFCC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
          0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)
_P0 = tl.constexpr(_ERFCC[0] * _LOG2E - 1.0)
_P1, _P2, _P3, _P4, _P5, _P6, _P7, _P8, _P9 = [tl.constexpr(c * _LOG2E) for c in _ERFCC[1:]]
_HALF_INV_SQRT2 = tl.constexpr(0.5 / math.sqrt(2.0))
_NEG_HALF_LOG2E = tl.constexpr(-0.5 * _LOG2E)


@triton.jit
def _exp2(v):
    # libdevice's exp2f under Triton's default FTZ reflection: one MUFU.EX2, no range fix-ups
    # (it flushes results below 2^-126 to 0: there Φ and φ are subnormal anyway)
    return libdevice.exp2(v)


@triton.jit
def _normal_cdf(z, CDF: tl.constexpr):
    """(Φ(z), w) in float32, where w = −z²/2·log2(e), so that φ(z) = 2^w/√(2π) (the backward
    reuses it). CDF = 0: ½·erfc(|z|/√2) from a rational-exponential fit (relative error < 1.2e-7
    in exact arithmetic; in float32 a few 1e-6 where Φ < 1e-9, from rounding the large
    exponent), in few instructions (one reciprocal, one exp2), so the kernels keep up with
    torch's GELU, and exact to relative precision in the negative tail like the torch path.
    CDF = 1: libdevice erfc (as exact, slower). CDF = 2: ½·(1 + erf(z/√2)) (fast, but absolute
    error ~6e-8 in the tail)."""
    w = z * z * _NEG_HALF_LOG2E
    if CDF == 0:
        # t = 1/(1 + u/2): the denominator is ≥ 1, so the fast reciprocal is safe
        t = libdevice.fast_dividef(1.0, tl.abs(z) * _HALF_INV_SQRT2 + 1.0)
        p = _P9 * t + _P8
        p = p * t + _P7
        p = p * t + _P6
        p = p * t + _P5
        p = p * t + _P4
        p = p * t + _P3
        p = p * t + _P2
        p = p * t + _P1
        p = p * t + _P0
        tail = t * _exp2(p + w)  # Φ(−|z|)
        gate = tl.where(z >= 0.0, 1.0 - tail, tail)
    elif CDF == 1:
        gate = 0.5 * libdevice.erfc(z * -_INV_SQRT2)
    else:
        gate = 0.5 * (1.0 + tl.math.erf(z * _INV_SQRT2))
    return gate, w


@triton.jit
def _hardness(p, inv_tau, THETA: tl.constexpr):
    """λ from the stored parameter: 1 + softplus(p·(1/τ)) computed as torch does, or p itself, where a
    value below 1 (no hardness) becomes NaN so the output shows it (once per program, not per element)."""
    if THETA:
        s = p * inv_tau.to(tl.float32)  # (a float32 scalar in eager launches; Inductor may pass a float64)
        p = 1.0 + tl.where(s > _SOFTPLUS_THRESHOLD, s, libdevice.log1p(libdevice.exp(s)))
    else:
        p = tl.where(p >= 1.0, p, float("nan"))
    return p


@triton.jit
def _hardness_grad(dlam, p, inv_tau, THETA: tl.constexpr):
    """dθ from dλ through λ = 1 + softplus(θ/τ), in torch's order of operations."""
    if THETA:
        inv_tau = inv_tau.to(tl.float32)
        s = p * inv_tau
        e = libdevice.exp(s)
        dlam = tl.where(s > _SOFTPLUS_THRESHOLD, dlam, dlam * e / (e + 1.0)) * inv_tau
    return dlam


@triton.jit
def _grads(g, x, lam, CDF: tl.constexpr):
    """(dx, λ-gradient term·√(2π)) of one tile; the compiler drops whichever the caller ignores.
    The term's 1/√(2π) is applied once to each partial sum (`_INV_SQRT_2PI`), not per element."""
    z = x * lam
    gate, w = _normal_cdf(z, CDF)
    e = _exp2(w)  # √(2π)·φ(z)
    dx = g * ((z * e) * _INV_SQRT_2PI + gate)
    # (x·e)·x, not x·x·e: x² would overflow to inf (and inf·0 = NaN) for |x| > 1.8e19
    return dx, g * ((x * e) * x)


@triton.jit
def _kgelu_fwd_kernel(
    x_ptr,
    param_ptr,
    inv_tau,
    y_ptr,
    n_rows,
    n_cols,
    PER_CHANNEL: tl.constexpr,
    THETA: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
    CDF: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    if PER_CHANNEL:
        rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < n_cols
        lam = _hardness(tl.load(param_ptr + cols, mask=col_mask, other=1.0), inv_tau, THETA)[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    else:
        # flat: n_cols is the number of elements
        offsets = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = offsets < n_cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        tl.debug_barrier()  # every load of x issued before θ's (see the backward)
        lam = _hardness(tl.load(param_ptr), inv_tau, THETA)
    gate, _ = _normal_cdf(x * lam, CDF)
    tl.store(y_ptr + offsets, (x * gate).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kgelu_bwd_kernel(
    g_ptr,
    x_ptr,
    param_ptr,
    inv_tau,
    dx_ptr,
    partial_ptr,
    n_rows,
    n_cols,
    n_tiles,
    PER_CHANNEL: tl.constexpr,
    THETA: tl.constexpr,
    COMPUTE_DX: tl.constexpr,
    COMPUTE_DLAM: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
    CDF: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    if PER_CHANNEL:
        # row-programs loop over row tiles with the grid's stride; partials per (program, column)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < n_cols
        lam = _hardness(tl.load(param_ptr + cols, mask=col_mask, other=1.0), inv_tau, THETA)[None, :]
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        for tile in range(pid, n_tiles, tl.num_programs(0)):
            rows = tile * BLOCK_R + tl.arange(0, BLOCK_R)
            offsets = rows[:, None] * n_cols + cols[None, :]
            mask = (rows < n_rows)[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            dx, term = _grads(g, x, lam, CDF)
            if COMPUTE_DX:
                tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DLAM:
                acc += term
        if COMPUTE_DLAM:
            tl.store(partial_ptr + pid * n_cols + cols, tl.sum(acc, axis=0) * _INV_SQRT_2PI, mask=col_mask)
    else:
        # flat: n_cols is the number of elements; one tile per program, one partial
        offsets = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = offsets < n_cols
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        # The barrier keeps every load of x and g issued before λ's (ptxas would otherwise
        # interleave them with the softplus, which waits on θ's load): the tile's memory
        # latency overlaps once, not twice.
        tl.debug_barrier()
        lam = _hardness(tl.load(param_ptr), inv_tau, THETA)
        dx, term = _grads(g, x, lam, CDF)  # masked lanes have g = x = 0, so term = 0
        if COMPUTE_DX:
            tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        if COMPUTE_DLAM:
            tl.store(partial_ptr + pid, tl.sum(term, axis=0) * _INV_SQRT_2PI)


@triton.jit
def _kgelu_finish_kernel(
    partial_ptr,
    param_ptr,
    inv_tau,
    dparam_ptr,
    n_partials,
    n_cols,
    THETA: tl.constexpr,
    SUM_ROWS: tl.constexpr,
    SUM_COLS: tl.constexpr,
):
    """dλ (dθ) from the backward's (n_partials, n_cols) partials, one program per column block:
    a fixed-order sum, so the gradient is bitwise reproducible."""
    cols = tl.program_id(0) * SUM_COLS + tl.arange(0, SUM_COLS)
    col_mask = cols < n_cols
    acc = tl.zeros([SUM_ROWS, SUM_COLS], dtype=tl.float32)
    for first in range(0, n_partials, SUM_ROWS):
        rows = first + tl.arange(0, SUM_ROWS)
        mask = (rows < n_partials)[:, None] & col_mask[None, :]
        acc += tl.load(partial_ptr + rows[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
    param = tl.load(param_ptr + cols, mask=col_mask, other=1.0)
    tl.store(dparam_ptr + cols, _hardness_grad(tl.sum(acc, axis=0), param, inv_tau, THETA), mask=col_mask)


