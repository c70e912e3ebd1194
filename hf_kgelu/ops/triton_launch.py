"""The host side of the Triton kernels (`triton_kernels`): tiles, grids and launches, through
Triton's public launch (`kernel[grid](...)`, wrapped by `torch.library.wrap_triton` so that
torch.compile traces it). `record=` collects the launches for the C++ site path (`native`), which
repeats them without Python once it has checked that its launches give the same bits."""

from __future__ import annotations

import contextlib
import functools
import struct
from dataclasses import dataclass

import torch
from torch.library import wrap_triton

from . import settings
from .triton_kernels import (
    _CDF_CODES,
    _INT32_SAFE_ELEMENTS,
    DEFAULT_CONFIG,
    _kgelu_bwd_kernel,
    _kgelu_finish_kernel,
    _kgelu_fwd_kernel,
)


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


@functools.lru_cache(maxsize=8)
def _merged(overrides: tuple) -> dict:
    return {**DEFAULT_CONFIG, **dict(overrides)}


def launch_config() -> dict:
    """The launch configuration in force: the defaults, with the settings' `kernel_config` entries."""
    return _merged(tuple(sorted(settings.current().kernel_config.items())))


def _tile(kind: str, x: torch.Tensor, config: dict) -> tuple[int, int]:
    """(elements, warps) per program of the `kind` ("fwd" or "bwd") kernel for x's dtype."""
    if x.element_size() == 4:
        return config[kind + "_block_fp32"], config[kind + "_warps_fp32"]
    return config[kind + "_block"], config[kind + "_warps"]


def _column_tile(n_cols: int, block: int, config: dict) -> tuple[int, int]:
    # int(): under torch.compile with dynamic shapes this specialises on the channel count
    block_c = min(_next_power_of_2(n_cols), config["max_block_c"])
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


@dataclass(frozen=True)
class Launch:
    """One kernel launch as it happened: what the C++ site path needs to repeat it."""

    kernel: object
    compiled: object
    args: tuple
    grid: tuple
    num_warps: int


def _launch(kernel, grid: tuple, args: tuple, constexprs: tuple, num_warps: int, record: list | None) -> None:
    """`kernel[grid](*args, *constexprs, num_warps=num_warps)`, Triton's public launch, on the
    tensors' device: directly for plain tensors in eager mode, through `torch.library.wrap_triton`
    when traced (torch.compile, export, fake tensors), which records it for the graph instead."""
    named = dict(zip(kernel.arg_names[len(args) :], constexprs))
    eager = type(args[0]) is torch.Tensor and not torch.compiler.is_compiling()
    device = args[0].get_device()  # Triton launches on the current device
    guard = torch.cuda.device(device) if eager and device != torch._C._cuda_getDevice() else contextlib.nullcontext()
    with guard:
        compiled = (kernel if eager else wrap_triton(kernel))[grid](*args, **named, num_warps=num_warps)
    if record is not None:
        record.append(Launch(kernel, compiled, args, grid, num_warps))


def _check(x: torch.Tensor, param: torch.Tensor) -> None:
    if param.dtype != torch.float32 or param.dim() != 1:
        raise ValueError(f"λ (θ) must be a float32 tensor of shape (1,) or (C,), got {param.dtype} {tuple(param.shape)}")
    if param.numel() > 1 and (x.dim() == 0 or x.shape[-1] != param.numel()):
        raise ValueError(f"per-channel λ has {param.numel()} channels but x has shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"the λ-GELU kernel takes float32/bfloat16/float16 inputs, got {x.dtype}")


def forward(x: torch.Tensor, param: torch.Tensor, tau: float | None = None, record: list | None = None) -> torch.Tensor:
    """y = x·Φ(λx) for any shape and strides; y has x's dtype, and x's layout when x is dense
    (else contiguous). `param` is λ, or θ when a temperature `tau` is given (λ = 1 + softplus(θ/τ)
    is then computed in the kernel).
    `record`, a list, receives the `Launch`es (for the C++ site path)."""
    _check(x, param)
    config = launch_config()
    per_channel = param.numel() > 1
    x = _walkable(x, per_channel)
    param = _dense(param)
    y = torch.empty_like(x)  # x's layout (a transposed x gives a transposed y, as torch's GELU does)
    n = x.numel()
    if n == 0:
        return y
    block, warps = _tile("fwd", x, config)
    if per_channel:
        n_cols = param.numel()
        n_rows = n // n_cols
        block_r, block_c = _column_tile(n_cols, block, config)
        grid = (_cdiv(n_rows, block_r), _cdiv(n_cols, block_c))
    else:
        n_rows, n_cols, block_r, block_c = 1, n, 1, block
        grid = (_cdiv(n, block), 1)
    # PER_CHANNEL, THETA, BLOCK_R, BLOCK_C, INT64, CDF
    constexprs = (per_channel, tau is not None, block_r, block_c, n > _INT32_SAFE_ELEMENTS, _CDF_CODES[config["cdf"]])
    _launch(_kgelu_fwd_kernel, grid, (x, param, _inv_tau(tau), y, n_rows, n_cols), constexprs, warps, record)
    return y


def _row_programs(tiles: int, column_blocks: int, device: int, config: dict) -> int:
    """Per-channel row-programs: about config["channel_programs_per_sm"] per SM in all."""
    wanted = (_multiprocessors(device) * config["channel_programs_per_sm"]) // column_blocks
    return max(1, min(tiles, wanted))


def backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    param: torch.Tensor,
    tau: float | None = None,
    need_x: bool = True,
    need_param: bool = True,
    record: list | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dλ) — or (dx, dθ) when `tau` is given — from the output gradient, x and the
    parameter; either is None when not needed. dx has x's dtype, shape and (dense) layout; the
    parameter's gradient is float32 with its shape. `record` as for `forward`."""
    _check(x, param)
    if grad_out.shape != x.shape:
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but x has {tuple(x.shape)}")
    config = launch_config()
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
        block_r, block_c = _column_tile(n_cols, config["channel_bwd_block"], config)
        column_blocks = _cdiv(n_cols, block_c)
        tiles = _cdiv(n_rows, block_r)
        programs = _row_programs(tiles, column_blocks, device, config)
        warps = config["channel_bwd_warps"]
    else:
        block_c, warps = _tile("bwd", x, config)
        n_rows, n_cols, block_r, column_blocks = 1, n, 1, 1
        tiles = programs = _cdiv(n, block_c)
    partial_cols = n_cols if per_channel else 1
    partials = torch.empty(programs * partial_cols if need_param else 1, device=x.device, dtype=torch.float32)
    # PER_CHANNEL, THETA, COMPUTE_DX, COMPUTE_DLAM, BLOCK_R, BLOCK_C, INT64, CDF
    constexprs = (per_channel, tau is not None, need_x, need_param, block_r, block_c, n > _INT32_SAFE_ELEMENTS,
                  _CDF_CODES[config["cdf"]])
    _launch(_kgelu_bwd_kernel, (programs, column_blocks),
            (grad_out, x, param, inv_tau, dx if need_x else x, partials, n_rows, n_cols, tiles), constexprs, warps, record)
    if not need_param:
        return dx, None
    sum_cols = min(block_c, config["sum_max_cols"]) if per_channel else 1
    sum_rows = max(1, min(config["sum_block"] // sum_cols, _next_power_of_2(programs)))
    dparam = torch.empty_like(param)
    _launch(_kgelu_finish_kernel, (_cdiv(partial_cols, sum_cols), 1), (partials, param, inv_tau, dparam, programs, partial_cols),
            (tau is not None, sum_rows, sum_cols), config["sum_warps"], record)
    return dx, dparam
