"""The torch path of the op: x·Φ(λx) and its gradients from torch operators, math in float32
(float64 for float64 inputs). It is the reference the kernels are tested against, the traced path
on CPU, and what serves wherever no kernel does (float64, no compiler, HF_KGELU_FORCE_REFERENCE)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_NEG_HALF_LOG2E = -0.5 / math.log(2.0)  # exp(−t/2) = exp2(t·_NEG_HALF_LOG2E)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Math in float32 for half types, in float64 when the input is float64 (gradcheck).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _gate(z: torch.Tensor) -> torch.Tensor:
    """Φ(z), the standard normal CDF, as ½·erfc(−z/√2): accurate to full relative precision in
    the negative tail, where ½·(1 + erf(z/√2)) cancels."""
    return torch.erfc(z * -_INV_SQRT2).mul_(0.5)


def kgelu_forward_reference(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Torch path of the forward pass: x·Φ(λx), math in float32 (float64 for float64 input).

    Written as ½·x·erfc(x·(−λ/√2)) with one allocation and in-place passes: erfc keeps full
    relative precision in the negative tail (½·(1 + erf) cancels there).
    """
    dtype = _compute_dtype(x)
    # λ is a 1-d tensor, so x·scale promotes half inputs to float32 without a separate cast.
    scale = lam.to(dtype) * -_INV_SQRT2
    out = torch.mul(x, scale).erfc_().mul_(x).mul_(0.5)
    return out.to(x.dtype).reshape(x.shape)  # reshape: a 0-d x broadcast with λ to shape (1,)


def kgelu_backward_reference(
    grad_out: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, need_x: bool = True, need_lam: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Torch path of the backward pass, in one buffer.

    d f/dλ = x²·φ(λx) is summed over every element of the site (per channel: over all but the
    last dimension): z = λx → z² → exp(−z²/2) (as exp2, faster than exp on CPU) → ·x·x, then
    one dot product with g. d f/dx = Φ(z) + z·φ(z), which is exactly GELU's derivative at
    z = λx, so torch's fused `gelu_backward(g, z)` computes it, written into the same buffer
    after z is recomputed there. One allocation instead of two: on CPU a second large buffer
    cost more (fresh pages) than the extra multiply.
    """
    if not need_x and not need_lam:
        return None, None
    dtype = _compute_dtype(x)
    lam_c = lam.to(dtype)
    g = grad_out.to(dtype)
    buf = torch.mul(x, lam_c)  # z; λ is 1-d: promotes half x to float32
    grad_lam = None
    if need_lam:
        # (e·x)·x rather than e·x²: x² overflows to inf (inf·0 = NaN) for |x| > 1.8e19 in float32
        density = buf.mul_(buf).mul_(_NEG_HALF_LOG2E).exp2_().mul_(x).mul_(x)
        if lam.numel() == 1:
            grad_lam = torch.dot(density.reshape(-1), g.reshape(-1)).mul_(_INV_SQRT_2PI)
        else:
            grad_lam = density.mul_(g).reshape(-1, lam.shape[-1]).sum(0).mul_(_INV_SQRT_2PI)
        grad_lam = grad_lam.reshape(lam.shape).to(lam.dtype)
        if not need_x:
            return None, grad_lam
        torch.mul(x, lam_c, out=buf)
    grad_x = torch.ops.aten.gelu_backward.grad_input(g, buf, grad_input=buf)
    return grad_x.to(x.dtype).reshape(x.shape), grad_lam


def lambda_from_theta(theta: torch.Tensor, tau: float) -> torch.Tensor:
    """λ = 1 + softplus(θ/τ): always ≥ 1 (NaN for a NaN θ), and exactly GELU at λ = 1."""
    return 1.0 + F.softplus(theta / tau)


def hardness(param: torch.Tensor, tau: float | None) -> torch.Tensor:
    """λ from the op's parameter: θ when `tau` is given, else λ itself, where a value below 1 (not
    a hardness) becomes NaN so that the output says so instead of being silently wrong."""
    if tau is not None:
        return lambda_from_theta(param, tau)
    return torch.where(param >= 1.0, param, torch.full_like(param, float("nan")))


def theta_gradient(grad_lam: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor:
    """dθ from dλ through λ = 1 + softplus(θ/τ), as torch's softplus backward computes it."""
    scaled = theta / tau
    return torch.where(scaled > 20.0, grad_lam, grad_lam * torch.sigmoid(scaled)) / tau


def forward(x: torch.Tensor, param: torch.Tensor, tau: float | None) -> torch.Tensor:
    return kgelu_forward_reference(x, hardness(param, tau))


def backward(grad_out, x, param, tau, need_x: bool, need_param: bool):
    """(dx, dparam): dparam is dθ when `tau` is given, else dλ."""
    grad_x, grad_lam = kgelu_backward_reference(grad_out, x, hardness(param, tau), need_x, need_param)
    if grad_lam is not None and tau is not None:
        grad_lam = theta_gradient(grad_lam, param, tau)
    return grad_x, grad_lam
