"""The λ-GELU op: f(x) = x·Φ(λx), with its own autograd and the λ↔θ parametrisation.

`kgelu(x, lam)` is the one entry point every module and kernel plugs into. λ is a float32
tensor of shape (1,) (one hardness per site) or (C,) (one per feature of the last dimension of
x). The backward pass saves only the input and λ, never intermediates: the gradients are
recomputed from x, as torch's own GELU does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def lambda_from_theta(theta: torch.Tensor, tau: float) -> torch.Tensor:
    """λ = 1 + softplus(θ/τ): always ≥ 1, and exactly GELU at λ = 1."""
    return 1.0 + F.softplus(theta / tau)


def theta_from_lambda(lam: torch.Tensor | float, tau: float) -> torch.Tensor | float:
    """θ = τ·log(expm1(λ − 1)), computed stably for λ − 1 from 1e-30 up to 1e30.

    For large y = λ − 1, log(expm1(y)) = y + log1p(−e^{−y}) avoids the overflow of expm1.
    A number gives a number (no tensor, so it works under a meta-device context); a tensor
    gives a float32 tensor on the same device.
    """
    if not isinstance(lam, torch.Tensor):
        y = float(lam) - 1.0
        if not math.isfinite(y) or y <= 0:
            raise ValueError(f"λ must be finite and > 1 to be represented by a finite θ (λ = 1 is GELU), got {lam!r}")
        return tau * (y + math.log1p(-math.exp(-y)) if y > 20.0 else math.log(math.expm1(y)))
    y = lam.detach().to(torch.float64) - 1.0
    if not torch.isfinite(y).all() or (y <= 0).any():
        raise ValueError("λ must be finite and > 1 to be represented by a finite θ (λ = 1 is GELU)")
    log_expm1 = torch.where(y > 20.0, y + torch.log1p(-torch.exp(-y)), torch.log(torch.expm1(y)))
    return (tau * log_expm1).to(torch.float32)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    # Math in float32 for half types, in float64 when the input is float64 (gradcheck).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _gate(z: torch.Tensor) -> torch.Tensor:
    """Φ(z), the standard normal CDF, as ½·erfc(−z/√2): accurate to full relative precision in
    the negative tail, where ½·(1 + erf(z/√2)) cancels."""
    return torch.erfc(z * -_INV_SQRT2).mul_(0.5)


def kgelu_forward_reference(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Torch path of the forward pass: x·Φ(λx), math in float32 (float64 for float64 input)."""
    xc = x.to(_compute_dtype(x))
    out = _gate(xc * lam.to(xc.dtype)).mul_(xc)
    return out.to(x.dtype)


def _reduce_to_lambda_shape(values: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    if lam.numel() == 1:
        return values.sum().reshape(lam.shape)
    return values.reshape(-1, lam.shape[-1]).sum(0)


def kgelu_backward_reference(
    grad_out: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, need_x: bool = True, need_lam: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Torch path of the backward pass.

    d f/dx = Φ(λx) + λx·φ(λx) and d f/dλ = x²·φ(λx); the λ gradient is summed over every
    element of the site (per channel: over all but the last dimension).
    """
    dtype = _compute_dtype(x)
    xc = x.to(dtype)
    lam_c = lam.to(dtype)
    g = grad_out.to(dtype)
    z = xc * lam_c
    density = torch.exp(-0.5 * z * z).mul_(_INV_SQRT_2PI)  # φ(λx)
    grad_x = grad_lam = None
    if need_x:
        grad_x = (_gate(z).add_(z * density)).mul_(g).to(x.dtype)
    if need_lam:
        grad_lam = _reduce_to_lambda_shape(g * xc * xc * density, lam).to(lam.dtype)
    return grad_x, grad_lam


class KGeluFunction(torch.autograd.Function):
    """Autograd for x·Φ(λx) that saves only x and λ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, lam)
        return kgelu_forward_reference(x, lam)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, lam = ctx.saved_tensors
        return kgelu_backward_reference(grad_out, x, lam, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


def _check_lambda(x: torch.Tensor, lam: torch.Tensor) -> None:
    if lam.dim() > 1 or lam.numel() == 0:
        raise ValueError(f"λ must have shape (1,) or (C,), got {tuple(lam.shape)}")
    if lam.numel() > 1 and (x.dim() == 0 or x.shape[-1] != lam.numel()):
        raise ValueError(
            f"per-channel λ has {lam.numel()} channels but the input's last dimension is "
            f"{x.shape[-1] if x.dim() else 'absent'}: λ must match the features of the last dimension"
        )


def kgelu(x: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """λ-GELU: x·Φ(λx). λ is a scalar, a (1,) tensor, or a (C,) tensor over the last dimension."""
    if not isinstance(lam, torch.Tensor):
        lam = torch.tensor([float(lam)], dtype=torch.float32, device=x.device)
    if lam.dim() == 0:
        lam = lam.reshape(1)
    _check_lambda(x, lam)
    return KGeluFunction.apply(x, lam)
