"""Fused Triton kernels for λ-GELU, f(x) = x·Φ(λx), and their host launchers.

Two kernels, both with math in float32 whatever the storage dtype (fp32/bf16/fp16):

- `_kgelu_fwd_kernel`: y = x·Φ(λx), one read and one write per element. Φ is computed to
  relative precision in the negative tail, like the torch path (½·(1 + erf) cancels there),
  with a rational-exponential erfc (see `_normal_cdf`; `CONFIG["cdf"]` selects libdevice's
  erfc or the erf form instead, for comparisons).
- `_kgelu_bwd_kernel`: dx = g·(Φ(λx) + λx·φ(λx)) and the λ gradient Σ g·x²·φ(λx), from g and x
  alone (nothing but x and λ is saved by the forward pass, as for torch's GELU).

The λ gradient is deterministic: each program writes its partial sum to its own slot (no
atomics, so nothing to zero before a launch and no autotune `reset_to_zero` hazard), and the
host sums the slots with `torch.sum`, whose order is fixed for a given shape. With one λ per
channel the partials are per (row-program, channel) and are summed over the row-programs.

Layouts: one λ (shape (1,)) treats x as a flat vector; per-channel λ (shape (C,)) treats x as a
(rows, C) matrix tiled in [BLOCK_R, BLOCK_C] blocks. Non-contiguous inputs are made contiguous
by the launcher (one copy, measured in `benchmarks/bench_kernel.py`).

With `traceable=True` the launchers call the kernels through `torch.library.wrap_triton`, so
they can be the body of a `torch.library.triton_op` that torch.compile traces into; the default
launches the kernels directly (the eager path: the least host time per call).
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from torch.library import wrap_triton

_INV_SQRT2 = tl.constexpr(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))

# Launch configuration, chosen with `benchmarks/bench_kernel.py --sweep-only` on an H200
# (device time from CUDA-graph replays at 8192×3072 elements, bf16 and fp32).
CONFIG = {
    "fwd_block": 2048,
    "fwd_warps": 4,
    "bwd_block": 2048,
    "bwd_warps": 4,
    # per-channel backward: row-programs per column block aim at this many programs per SM
    "bwd_programs_per_sm": 8,
    "max_block_c": 256,
    "cdf": "rational",
    # scalar-λ backward: consecutive blocks per program (one partial sum per program); more
    # programs hide latency better than fewer, longer ones (H200 sweep: 1 < 2 < 4 < 8)
    "bwd_tiles": 1,
}
_CDF_CODES = {"rational": 0, "erfc": 1, "erf": 2}

# Above this many elements, offsets are computed in int64 (masked tail tiles may index past n).
_INT32_SAFE_ELEMENTS = 2**30


@triton.jit
def _normal_cdf(z, CDF: tl.constexpr):
    """Φ(z) in float32. CDF = 0: ½·erfc(|z|/√2) from a rational-exponential fit (relative
    error < 1.2e-7 in exact arithmetic; in float32 a few 1e-6 where Φ < 1e-9, from rounding the
    large exponent), cheap enough for the kernels to keep up with torch's GELU, and exact to
    relative precision in the negative tail like the torch path. CDF = 1: libdevice erfc (as
    exact, slower). CDF = 2: ½·(1 + erf(z/√2)) (fast, but absolute error ~6e-8 in the tail)."""
    if CDF == 0:
        # Numerical Recipes' erfcc: erfc(u) = t·exp(−u² + P(t)), t = 1/(1 + u/2), u ≥ 0
        u = tl.abs(z) * _INV_SQRT2
        t = 1.0 / (1.0 + 0.5 * u)
        p = 0.17087277 * t - 0.82215223
        p = p * t + 1.48851587
        p = p * t - 1.13520398
        p = p * t + 0.27886807
        p = p * t - 0.18628806
        p = p * t + 0.09678418
        p = p * t + 0.37409196
        p = p * t + 1.00002368
        p = p * t - 1.26551223
        tail = 0.5 * t * tl.exp(p - u * u)  # Φ(−|z|)
        gate = tl.where(z >= 0.0, 1.0 - tail, tail)
    elif CDF == 1:
        gate = 0.5 * libdevice.erfc(z * -_INV_SQRT2)
    else:
        gate = 0.5 * (1.0 + tl.math.erf(z * _INV_SQRT2))
    return gate


@triton.jit
def _kgelu_fwd_kernel(
    x_ptr,
    lam_ptr,
    y_ptr,
    n_rows,
    n_cols,
    PER_CHANNEL: tl.constexpr,
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
        lam = tl.load(lam_ptr + cols, mask=col_mask, other=1.0)[None, :]
        offsets = rows[:, None] * n_cols + cols[None, :]
        mask = (rows < n_rows)[:, None] & col_mask[None, :]
    else:
        # flat: n_cols is the number of elements
        offsets = pid * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = offsets < n_cols
        lam = tl.load(lam_ptr)
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    gate = _normal_cdf(x * lam, CDF)
    tl.store(y_ptr + offsets, (x * gate).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _kgelu_bwd_kernel(
    g_ptr,
    x_ptr,
    lam_ptr,
    dx_ptr,
    partial_ptr,
    n_rows,
    n_cols,
    row_tiles_per_program,
    PER_CHANNEL: tl.constexpr,
    COMPUTE_DX: tl.constexpr,
    COMPUTE_DLAM: tl.constexpr,
    TILES: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    INT64: tl.constexpr,
    CDF: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64:
        pid = pid.to(tl.int64)
    if PER_CHANNEL:
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        col_mask = cols < n_cols
        lam = tl.load(lam_ptr + cols, mask=col_mask, other=1.0)[None, :]
        acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=tl.float32)
        first_row = pid * row_tiles_per_program * BLOCK_R
        for tile in range(0, row_tiles_per_program):
            rows = first_row + tile * BLOCK_R + tl.arange(0, BLOCK_R)
            offsets = rows[:, None] * n_cols + cols[None, :]
            mask = (rows < n_rows)[:, None] & col_mask[None, :]
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            z = x * lam
            density = tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
            if COMPUTE_DX:
                gate = _normal_cdf(z, CDF)
                tl.store(dx_ptr + offsets, (g * (gate + z * density)).to(dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DLAM:
                # (x·φ)·x, not x·x·φ: x² would overflow to inf (and inf·0 = NaN) for |x| > 1.8e19
                acc += g * (x * density) * x
        if COMPUTE_DLAM:
            tl.store(partial_ptr + pid * n_cols + cols, tl.sum(acc, axis=0), mask=col_mask)
    else:
        lam = tl.load(lam_ptr)
        acc = tl.zeros([BLOCK_C], dtype=tl.float32)
        for tile in tl.static_range(TILES):
            offsets = (pid * TILES + tile) * BLOCK_C + tl.arange(0, BLOCK_C)
            mask = offsets < n_cols
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            z = x * lam
            density = tl.exp(-0.5 * z * z) * _INV_SQRT_2PI
            if COMPUTE_DX:
                gate = _normal_cdf(z, CDF)
                tl.store(dx_ptr + offsets, (g * (gate + z * density)).to(dx_ptr.dtype.element_ty), mask=mask)
            if COMPUTE_DLAM:
                acc += g * (x * density) * x
        if COMPUTE_DLAM:
            tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # Triton's interpreter on CPU (tests only)
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _on_device(device: torch.device):
    # Triton launches on the current CUDA device: switch only when x lives on another one.
    if device.type == "cuda" and device.index is not None and device.index != torch.cuda.current_device():
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _column_tile(n_cols: int, block: int) -> tuple[int, int]:
    # int(): under torch.compile with dynamic shapes this specialises on the channel count
    block_c = min(triton.next_power_of_2(int(n_cols)), CONFIG["max_block_c"])
    return max(1, block // block_c), block_c


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _check(x: torch.Tensor, lam: torch.Tensor) -> None:
    if lam.dtype != torch.float32 or lam.dim() != 1:
        raise ValueError(f"λ must be a float32 tensor of shape (1,) or (C,), got {lam.dtype} {tuple(lam.shape)}")
    if lam.numel() > 1 and (x.dim() == 0 or x.shape[-1] != lam.numel()):
        raise ValueError(f"per-channel λ has {lam.numel()} channels but x has shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"the λ-GELU kernel takes float32/bfloat16/float16 inputs, got {x.dtype}")


def kgelu_forward(x: torch.Tensor, lam: torch.Tensor, traceable: bool = False) -> torch.Tensor:
    """y = x·Φ(λx) for any shape; y is contiguous, with x's dtype."""
    kernel = wrap_triton(_kgelu_fwd_kernel) if traceable else _kgelu_fwd_kernel
    _check(x, lam)
    x = _dense(x)
    lam = _dense(lam)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return y
    block = CONFIG["fwd_block"]
    flags = dict(INT64=n > _INT32_SAFE_ELEMENTS, CDF=_CDF_CODES[CONFIG["cdf"]], num_warps=CONFIG["fwd_warps"])
    with _on_device(x.device):
        if lam.numel() == 1:
            kernel[(triton.cdiv(n, block),)](
                x, lam, y, 1, n, PER_CHANNEL=False, BLOCK_R=1, BLOCK_C=block, **flags
            )
        else:
            n_cols = lam.numel()
            n_rows = n // n_cols
            block_r, block_c = _column_tile(n_cols, block)
            grid = (triton.cdiv(n_rows, block_r), triton.cdiv(n_cols, block_c))
            kernel[grid](
                x, lam, y, n_rows, n_cols, PER_CHANNEL=True, BLOCK_R=block_r, BLOCK_C=block_c, **flags
            )
    return y


def kgelu_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    lam: torch.Tensor,
    need_x: bool = True,
    need_lam: bool = True,
    traceable: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dλ) from the output gradient, x and λ; either is None when not needed.

    dx has x's dtype and shape (contiguous); dλ is float32 with λ's shape.
    """
    kernel = wrap_triton(_kgelu_bwd_kernel) if traceable else _kgelu_bwd_kernel
    _check(x, lam)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but x has {tuple(x.shape)}")
    if not need_x and not need_lam:
        return None, None
    x = _dense(x)
    grad_out = _dense(grad_out)  # e.g. the stride-0 gradient of a .sum()
    lam = _dense(lam)
    n = x.numel()
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_x else None
    if n == 0:
        return dx, (torch.zeros_like(lam) if need_lam else None)
    block = CONFIG["bwd_block"]
    flags = dict(
        COMPUTE_DX=need_x,
        COMPUTE_DLAM=need_lam,
        INT64=n > _INT32_SAFE_ELEMENTS,
        CDF=_CDF_CODES[CONFIG["cdf"]],
        num_warps=CONFIG["bwd_warps"],
    )
    dx_arg = dx if need_x else x  # never written when COMPUTE_DX is False
    with _on_device(x.device):
        if lam.numel() == 1:
            tiles = CONFIG["bwd_tiles"]
            programs = triton.cdiv(n, block * tiles)
            partials = torch.empty(programs if need_lam else 1, device=x.device, dtype=torch.float32)
            kernel[(programs,)](
                grad_out, x, lam, dx_arg, partials, 1, n, 1,
                PER_CHANNEL=False, TILES=tiles, BLOCK_R=1, BLOCK_C=block, **flags,
            )
            dlam = partials.sum(0, keepdim=True) if need_lam else None  # shape (1,), like λ
        else:
            n_cols = lam.numel()
            n_rows = n // n_cols
            block_r, block_c = _column_tile(n_cols, block)
            col_blocks = triton.cdiv(n_cols, block_c)
            row_tiles = triton.cdiv(n_rows, block_r)
            # Enough row-programs to fill the chip, each looping over several row tiles, so that
            # the partial buffer (row-programs × C floats) stays small next to x.
            wanted = max(1, (_multiprocessors(x.device) * CONFIG["bwd_programs_per_sm"]) // col_blocks)
            tiles_per_program = triton.cdiv(row_tiles, min(wanted, row_tiles))
            row_programs = triton.cdiv(row_tiles, tiles_per_program)
            partials = torch.empty((row_programs, n_cols) if need_lam else (1,), device=x.device, dtype=torch.float32)
            kernel[(row_programs, col_blocks)](
                grad_out, x, lam, dx_arg, partials, n_rows, n_cols, tiles_per_program,
                PER_CHANNEL=True, TILES=1, BLOCK_R=block_r, BLOCK_C=block_c, **flags,
            )
            dlam = partials.sum(0) if need_lam else None
    return dx, dlam
