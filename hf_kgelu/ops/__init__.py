"""The λ-GELU op, f(x) = x·Φ(λx), and its λ(θ) parametrisation. No Hugging Face imports here.

- `kgelu(x, lam)`: λ a number, a (1,) tensor (one hardness per site) or a (C,) tensor (one per
  feature of x's last dimension);
- `kgelu_theta(x, theta, tau)`: the same with λ = 1 + softplus(θ/τ) computed inside, which the
  `KGELU` module calls, differentiable in x and θ.

Two paths, chosen in one function (`path`): the op (`hf_kgelu.ops.op`, a torch.library operator
that every device, eager and traced, goes through: Triton kernels on CUDA, a compiled C kernel on
CPU, torch ops where neither serves) and, for a `KGELU` site on CUDA in eager mode, the C++ site
path (`hf_kgelu.ops.native`), which repeats the op's launches with no Python in between and checks
itself against the op first. Settings (forcing the torch path, switching a kernel off):
`hf_kgelu.ops.settings`.

λ below 1 is no hardness: a number or a CPU tensor is refused with an error; on CUDA (where a
check would wait for the device) the output is NaN, as it is for a NaN λ or θ on every path.
"""

from __future__ import annotations

import math

import torch

from . import native, settings
from .op import KERNEL_DTYPES, triton_launch
from .reference import lambda_from_theta

__all__ = ["kgelu", "kgelu_theta", "lambda_from_theta", "path"]


def path(x: torch.Tensor, param: torch.Tensor, site: bool = False) -> str:
    """Which implementation serves a call on (x, param), with the reason in one line each:

    "native"     CUDA, eager, a `KGELU` site (`site=True`) with one θ on a contiguous input: the C++ site path
    "triton"     CUDA float32/bfloat16/float16, otherwise (traced included): the op's Triton kernels
    "cpu"        CPU float32/bfloat16/float16 in eager mode: the op's compiled C kernel
    "reference"  everything else (float64, traced on CPU, no compiler or triton, force_reference): torch ops
    """
    if torch.compiler.is_compiling():  # (first: Dynamo cannot trace the settings' ContextVar)
        return "triton" if x.is_cuda and x.dtype in KERNEL_DTYPES and triton_launch is not None else "reference"
    current = settings.current()
    eager = type(x) is torch.Tensor and not torch._C._len_torch_dispatch_stack()
    if x.is_cuda and x.dtype in KERNEL_DTYPES and triton_launch is not None and not current.force_reference:
        if site and eager and param.numel() == 1 and x.is_contiguous() and native.load():
            return "native"
        return "triton"
    if not x.is_cuda and eager and current.cpu_kernel and not current.force_reference:
        from .op import _uses_cpu_kernel

        return "cpu" if _uses_cpu_kernel(x, param) else "reference"
    return "reference"


def _check_shape(x: torch.Tensor, param: torch.Tensor, what: str) -> None:
    if param.device != x.device:
        raise ValueError(f"{what} is on {param.device} but the input on {x.device}: move them to the same device")
    if param.dim() != 1 or param.numel() == 0:
        raise ValueError(f"{what} must have shape (1,) or (C,), got {tuple(param.shape)}")
    if param.numel() > 1 and (x.dim() == 0 or x.shape[-1] != param.numel()):
        raise ValueError(
            f"per-channel {what} has {param.numel()} channels but the input's last dimension is "
            f"{x.shape[-1] if x.dim() else 'absent'}: it must match the features of the last dimension"
        )


def _as_lambda(x: torch.Tensor, lam) -> torch.Tensor:
    if not isinstance(lam, torch.Tensor):
        value = float(lam)
        if not math.isfinite(value) or value < 1:
            raise ValueError(f"λ must be a finite number ≥ 1 (λ = 1 is GELU, λ → ∞ is ReLU), got {lam!r}")
        return torch.tensor([value], dtype=torch.float32, device=x.device)
    lam = lam.reshape(1) if lam.dim() == 0 else lam
    if not lam.is_cuda and not (torch.isfinite(lam.detach()) & (lam.detach() >= 1)).all():
        raise ValueError(f"λ must be finite and ≥ 1 everywhere (λ = 1 is GELU), got {lam.flatten()[:4].tolist()}…")
    if lam.device != x.device:
        lam = lam.to(x.device)  # (differentiable: a CPU λ for a CUDA x is a convenience, not an error)
    # float32, the kernels' hardness; float64 stays for float64 inputs (the torch path: gradcheck)
    return lam if lam.dtype == torch.float32 or x.dtype == torch.float64 else lam.float()


def kgelu(x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """λ-GELU: x·Φ(λx), differentiable in x and (a tensor) λ."""
    lam = _as_lambda(x, lam)
    _check_shape(x, lam, "λ")
    return torch.ops.hf_kgelu.kgelu(x, lam, None)


def kgelu_theta(x: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor:
    """λ-GELU parametrised by θ: x·Φ(λx) with λ = 1 + softplus(θ/τ), differentiable in x and θ.

    On CUDA in eager mode a site with one θ on a contiguous input goes through the C++ site path
    (one call, no Python in its forward or backward) once the op has launched its shape."""
    if torch.compiler.is_compiling():
        # traced: λ from torch ops (Inductor fuses them), then the op, as in eager but for λ inside the kernel
        _check_shape(x, theta, "θ")
        return torch.ops.hf_kgelu.kgelu(x, lambda_from_theta(theta, tau), None)
    if x.is_cuda and path(x, theta, site=True) == "native":
        y = native.site_forward(x, theta, tau)  # None: a shape the op has not launched yet
        if y is not None:
            return y
    _check_shape(x, theta, "θ")
    return torch.ops.hf_kgelu.kgelu(x, theta, float(tau))
