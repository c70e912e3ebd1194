"""Fused Triton kernels for λ-GELU, f(x) = x·Φ(λx), and their host launchers.

Math in float32 whatever the storage dtype (fp32/bf16/fp16):

- `_kgelu_fwd_kernel`: y = x·Φ(λx), one read and one write per element. Φ is computed to
  relative precision in the negative tail, like the torch path (½·(1 + erf) cancels there),
  with a rational-exponential erfc (see `_normal_cdf`; `CONFIG["cdf"]` selects libdevice's
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
`benchmarks/bench_kernel.py`).

With `traceable=True` the launchers call the kernels through `torch.library.wrap_triton`, so
they can be the body of a `torch.library.triton_op` that torch.compile traces into. The default
(the eager path) launches a kernel through Triton once per specialisation and then the compiled
kernel directly (`_launch`): the least host time per call.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton
from triton.language.extra import libdevice

from . import native as site_launcher

_INV_SQRT2 = tl.constexpr(1.0 / math.sqrt(2.0))
_INV_SQRT_2PI = tl.constexpr(1.0 / math.sqrt(2.0 * math.pi))

# Launch configuration: the winners of `benchmarks/bench_kernel.py --sweep-only` on an H200, as
# picked by `benchmarks/choose_kernel_config.py` (device time from CUDA-graph replays at
# 8192×3072 elements, bf16 and fp32, per site and per channel; docs/results.md).
CONFIG = {
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
# Tuning without editing the source (benchmarks, other GPUs): a JSON object of CONFIG entries.
CONFIG.update(json.loads(os.environ.get("HF_KGELU_KERNEL_CONFIG", "") or "{}"))
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
    """λ from the stored parameter: p itself, or 1 + softplus(p·(1/τ)) computed as torch does."""
    if THETA:
        s = p * inv_tau
        p = 1.0 + tl.where(s > _SOFTPLUS_THRESHOLD, s, libdevice.log1p(libdevice.exp(s)))
    return p


@triton.jit
def _hardness_grad(dlam, p, inv_tau, THETA: tl.constexpr):
    """dθ from dλ through λ = 1 + softplus(θ/τ), in torch's order of operations."""
    if THETA:
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


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _multiprocessors(device_index: int) -> int:
    if device_index < 0:
        return 4  # Triton's interpreter on CPU (tests only)
    return _sm_count(device_index)


def _cdiv(n, d):
    # triton.cdiv is a constexpr_function: from the host it costs microseconds per call
    return (n + d - 1) // d


def _next_power_of_2(n) -> int:
    return 1 << (int(n) - 1).bit_length() if n > 1 else 1


@functools.lru_cache(maxsize=64)
def _inv_tau(tau: float | None) -> float:
    """1/τ rounded as torch's θ / τ computes it on CUDA (float32 reciprocal, then a product)."""
    if tau is None:
        return 1.0
    tau32 = struct.unpack("f", struct.pack("f", tau))[0]
    return struct.unpack("f", struct.pack("f", 1.0 / tau32))[0]


def _tile(kind: str, x: torch.Tensor) -> tuple[int, int]:
    """(elements, warps) per program of the `kind` ("fwd" or "bwd") kernel for x's dtype."""
    if x.element_size() == 4:
        return CONFIG[kind + "_block_fp32"], CONFIG[kind + "_warps_fp32"]
    return CONFIG[kind + "_block"], CONFIG[kind + "_warps"]


def _column_tile(n_cols: int, block: int) -> tuple[int, int]:
    # int(): under torch.compile with dynamic shapes this specialises on the channel count
    block_c = min(_next_power_of_2(n_cols), CONFIG["max_block_c"])
    return max(1, block // block_c), block_c


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _is_permuted_dense(t: torch.Tensor) -> bool:
    """Whether t's elements fill its span of memory exactly once (a permutation of a contiguous
    layout, e.g. a transpose): then an elementwise kernel can walk the storage as a flat vector."""
    expected = 1
    for stride, size in sorted((t.stride(i), t.size(i)) for i in range(t.dim()) if t.size(i) != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _walkable(t: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """t itself when the kernels can walk its storage in place: contiguous, or a permuted dense
    layout (per channel: with the channels innermost, so storage index mod C is the channel);
    else a contiguous copy. Outputs made with `torch.empty_like` keep the same layout."""
    if t.is_contiguous() or ((not per_channel or t.stride(-1) == 1) and _is_permuted_dense(t)):
        return t
    return t.contiguous()


def _in_layout_of(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """g stored as x is (the backward walks both in the same order): g itself when it already is."""
    if g.stride() == x.stride():
        return g
    return g.contiguous() if x.is_contiguous() else torch.empty_like(x, dtype=g.dtype).copy_(g)


# Direct launches. Triton's `kernel[grid](...)` binds and specialises every argument and looks
# the compiled kernel up on each call; that host time is a multiple of the C launch itself, and a
# model pays it three times per site and step. So a kernel's first call for a key goes through
# Triton (which compiles it), and later calls with the same key launch the compiled kernel
# directly. The key is finer than Triton's specialisation: the kernel, device, warps and
# constexprs, every integer argument's value, and each tensor's dtype and 16-byte alignment
# (float arguments are not specialised by Triton). Set DIRECT_LAUNCH = False to go through Triton
# every time (debugging, comparisons); Triton's launch hooks (profilers) also take that path.
DIRECT_LAUNCH = True
_compiled: dict[tuple, tuple] = {}
_MAX_COMPILED_KEYS = 4096  # integer values are in the key: bound the memory of many shapes
_KNOBS = getattr(triton, "knobs", None)  # Triton ≥ 3.4: hooks live here, the launcher convention below


def _hooks_set() -> bool:
    enter, exit_ = _KNOBS.runtime.launch_enter_hook, _KNOBS.runtime.launch_exit_hook
    return bool(getattr(enter, "calls", enter)) or bool(getattr(exit_, "calls", exit_))


def _launcher(compiled) -> tuple:
    """(function, leading arguments) that launch `compiled` with (gridX, gridY, gridZ, stream,
    *leading, *kernel arguments): the C launcher itself when the kernel needs no scratch memory,
    else the compiled kernel's own Python wrapper."""
    run = compiled.run
    launch = getattr(run, "launch", None)
    plain = (
        launch is not None
        and not getattr(run, "global_scratch_size", 1)
        and not getattr(run, "profile_scratch_size", 1)
        and hasattr(run, "launch_cooperative_grid")
        and hasattr(run, "launch_pdl")
    )
    if plain:
        meta = (compiled.packed_metadata, None, None, None)
        return launch, (compiled.function, run.launch_cooperative_grid, run.launch_pdl, None, None, *meta)
    return run, (compiled.function, compiled.packed_metadata, None, None, None)


def launches_direct() -> bool:
    """Whether eager launches skip Triton's Python launcher (and may take the C++ site path)."""
    return DIRECT_LAUNCH and _KNOBS is not None and not _hooks_set()


def _launch(
    kernel, grid: tuple, args: tuple, constexprs: tuple, num_warps: int, device: int, traceable: bool, site: tuple | None = None
) -> None:
    """`kernel[grid](*args, *constexprs, num_warps=num_warps)`, directly once compiled.

    `args` are the runtime arguments in the kernel's order, `constexprs` the values after them;
    `device` is the tensors' CUDA device index (`Tensor.get_device()`: −1 on the CPU interpreter).
    `site` = (x's dtype, need flags, x's element count) marks a launch the C++ site path can
    repeat (one θ, contiguous tensors): the compiled kernel is registered with it."""
    if device >= 0 and device != torch._C._cuda_getDevice():
        with torch.cuda.device(device):  # Triton launches on the current device
            return _launch(kernel, grid, args, constexprs, num_warps, device, traceable, site)
    direct = not traceable and device >= 0 and launches_direct()
    if direct:
        # Tensors go to the C launcher as their addresses: given a tensor it would call data_ptr()
        # again and ask the driver to validate the pointer (the callers pass CUDA tensors only).
        values = [arg.data_ptr() if isinstance(arg, torch.Tensor) else arg for arg in args]
        # __name__: hashing a JITFunction is slow; floats (1/τ) are not specialised, so not in the key
        key = (kernel.__name__, device, num_warps, constexprs, *[
            (arg.dtype, value % 16 == 0) if isinstance(arg, torch.Tensor) else arg
            for arg, value in zip(args, values) if not isinstance(arg, float)
        ])
        entry = _compiled.get(key)
        if entry is not None:
            launch, leading, compiled = entry
            launch(grid[0], grid[1], 1, torch._C._cuda_getCurrentRawStream(device), *leading, *values, *constexprs)
            if site is not None and site_launcher.loaded():
                site_launcher.register(kernel, compiled, args, values, grid, num_warps, device, site)
            return
    # Through Triton: traced (torch.compile), every call (direct launches off), or a key's first call.
    named = dict(zip(kernel.arg_names[len(args) :], constexprs))
    compiled = (wrap_triton(kernel) if traceable else kernel)[grid](*args, **named, num_warps=num_warps)
    if direct:
        if len(_compiled) >= _MAX_COMPILED_KEYS:
            _compiled.clear()
        compiled = compiled.result() if hasattr(compiled, "result") else compiled
        _compiled[key] = (*_launcher(compiled), compiled)
        if site is not None and site_launcher.loaded():
            site_launcher.register(kernel, compiled, args, values, grid, num_warps, device, site)


def _check(x: torch.Tensor, param: torch.Tensor) -> None:
    if param.dtype != torch.float32 or param.dim() != 1:
        raise ValueError(f"λ (θ) must be a float32 tensor of shape (1,) or (C,), got {param.dtype} {tuple(param.shape)}")
    if param.numel() > 1 and (x.dim() == 0 or x.shape[-1] != param.numel()):
        raise ValueError(f"per-channel λ has {param.numel()} channels but x has shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"the λ-GELU kernel takes float32/bfloat16/float16 inputs, got {x.dtype}")


def kgelu_forward(
    x: torch.Tensor, param: torch.Tensor, tau: float | None = None, traceable: bool = False, validate: bool = True
) -> torch.Tensor:
    """y = x·Φ(λx) for any shape and strides; y has x's dtype, and x's layout when x is dense
    (else contiguous). `param` is λ, or θ when a temperature `tau` is given (λ = 1 + softplus(θ/τ)
    is then computed in the kernel).
    `validate=False` skips the argument checks, for callers that made them already."""
    if validate:
        _check(x, param)
    per_channel = param.numel() > 1
    x = _walkable(x, per_channel)
    param = _dense(param)
    y = torch.empty_like(x)  # x's layout (a transposed x gives a transposed y, as torch's GELU does)
    n = x.numel()
    if n == 0:
        return y
    block, warps = _tile("fwd", x)
    if per_channel:
        n_cols = param.numel()
        n_rows = n // n_cols
        block_r, block_c = _column_tile(n_cols, block)
        grid = (_cdiv(n_rows, block_r), _cdiv(n_cols, block_c))
    else:
        n_rows, n_cols, block_r, block_c = 1, n, 1, block
        grid = (_cdiv(n, block), 1)
    # PER_CHANNEL, THETA, BLOCK_R, BLOCK_C, INT64, CDF
    constexprs = (per_channel, tau is not None, block_r, block_c, n > _INT32_SAFE_ELEMENTS, _CDF_CODES[CONFIG["cdf"]])
    # one θ, contiguous: a launch the C++ site path repeats
    site = (x.dtype, 0, n) if tau is not None and not per_channel and x.is_contiguous() else None
    _launch(
        _kgelu_fwd_kernel, grid, (x, param, _inv_tau(tau), y, n_rows, n_cols), constexprs,
        warps, x.get_device(), traceable, site,
    )
    return y


def _row_programs(tiles: int, column_blocks: int, device: int) -> int:
    """Per-channel row-programs: about CONFIG["channel_programs_per_sm"] per SM in all."""
    wanted = (_multiprocessors(device) * CONFIG["channel_programs_per_sm"]) // column_blocks
    return max(1, min(tiles, wanted))


def kgelu_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    param: torch.Tensor,
    need_x: bool = True,
    need_param: bool = True,
    tau: float | None = None,
    traceable: bool = False,
    validate: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dλ) — or (dx, dθ) when `tau` is given — from the output gradient, x and the
    parameter; either is None when not needed. dx has x's dtype, shape and (dense) layout; the
    parameter's gradient is float32 with its shape. `validate=False` skips the argument checks
    (autograd already guarantees grad_out's shape)."""
    if validate:
        _check(x, param)
        if grad_out.shape != x.shape:
            raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but x has {tuple(x.shape)}")
    if not need_x and not need_param:
        return None, None
    per_channel = param.numel() > 1
    x = _walkable(x, per_channel)
    grad_out = _in_layout_of(grad_out, x)  # e.g. the stride-0 gradient of a .sum()
    param = _dense(param)
    n = x.numel()
    dx = torch.empty_like(x) if need_x else None
    if n == 0:
        return dx, (torch.zeros_like(param) if need_param else None)
    inv_tau = _inv_tau(tau)
    device = x.get_device()
    if per_channel:
        n_cols = param.numel()
        n_rows = n // n_cols
        block_r, block_c = _column_tile(n_cols, CONFIG["channel_bwd_block"])
        column_blocks = _cdiv(n_cols, block_c)
        tiles = _cdiv(n_rows, block_r)
        programs = _row_programs(tiles, column_blocks, device)
        warps = CONFIG["channel_bwd_warps"]
    else:
        block_c, warps = _tile("bwd", x)
        n_rows, n_cols, block_r, column_blocks = 1, n, 1, 1
        tiles = programs = _cdiv(n, block_c)
    partial_cols = n_cols if per_channel else 1
    partials = torch.empty(programs * partial_cols if need_param else 1, device=x.device, dtype=torch.float32)
    # PER_CHANNEL, THETA, COMPUTE_DX, COMPUTE_DLAM, BLOCK_R, BLOCK_C, INT64, CDF
    constexprs = (per_channel, tau is not None, need_x, need_param, block_r, block_c, n > _INT32_SAFE_ELEMENTS, _CDF_CODES[CONFIG["cdf"]])
    site = None
    if tau is not None and not per_channel and x.is_contiguous() and grad_out.is_contiguous():
        site = (x.dtype, int(need_x) | int(need_param) << 1, n)  # a launch the C++ site path repeats
    _launch(
        _kgelu_bwd_kernel, (programs, column_blocks),
        (grad_out, x, param, inv_tau, dx if need_x else x, partials, n_rows, n_cols, tiles),
        constexprs, warps, device, traceable, site,
    )
    if not need_param:
        return dx, None
    sum_cols = min(block_c, CONFIG["sum_max_cols"]) if per_channel else 1
    sum_rows = max(1, min(CONFIG["sum_block"] // sum_cols, _next_power_of_2(programs)))
    dparam = torch.empty_like(param)
    _launch(
        _kgelu_finish_kernel, (_cdiv(partial_cols, sum_cols), 1), (partials, param, inv_tau, dparam, programs, partial_cols),
        (tau is not None, sum_rows, sum_cols), CONFIG["sum_warps"], device, traceable,
        site and (site[0], 0, site[2]),  # the partial-sum kernel is the same whatever the need flags
    )
    return dx, dparam
