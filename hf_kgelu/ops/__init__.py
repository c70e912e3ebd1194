"""The λ-GELU op: f(x) = x·Φ(λx), with its own autograd and the λ↔θ parametrisation.

`kgelu(x, lam)` is the one entry point every kernel plugs into. λ is a float32 tensor of shape
(1,) (one hardness per site) or (C,) (one per feature of the last dimension of x).
`kgelu_theta(x, theta, tau)` is the same function of θ, λ = 1 + softplus(θ/τ), which `KGELU`
calls: on CUDA in eager mode the kernels compute λ and dθ themselves, so a site launches one
kernel forward and two backward, and nothing else (the softplus chain around the op cost more
host time than the op itself). The backward pass saves only the input and λ (θ), never
intermediates: the gradients are recomputed from x, as torch's own GELU does.

Dispatch: CUDA tensors (float32/bfloat16/float16) go to the fused Triton kernels in
`hf_kgelu.kernels`. Under torch.compile (and any tracing mode) they go through the
`torch.library.triton_op`s `hf_kgelu::kgelu` and `hf_kgelu::kgelu_backward` (autograd
registered, fake impls from the same bodies), so fullgraph compilation sees ordinary ops; in
eager mode through `KGeluKernelFunction`, which launches the same kernels with a fraction of
the custom-op dispatcher's host time per call (it matters: a GPT-2 small step has 12 sites).
Both work with autocast, checkpointing and CUDA graphs. float32, bfloat16 and float16 CPU tensors
in eager mode go to the compiled CPU kernel (`hf_kgelu.cpu_kernel`, one pass each way, built at
first use with the machine's C compiler). Everything else (float64, no compiler, no triton,
torch.compile on CPU) takes the torch path below. HF_KGELU_FORCE_REFERENCE=1, read at import,
forces the torch path everywhere (for debugging); `hf_kgelu.functional.FORCE_REFERENCE` can also
be flipped at run time.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from . import cpu as _cpu_kernel
from . import native as _site_launcher

try:
    from . import triton_kernels as _kernels
except ImportError:  # no triton (CPU-only installs): the torch path serves every device
    _kernels = None

FORCE_REFERENCE = os.environ.get("HF_KGELU_FORCE_REFERENCE", "").strip().lower() in ("1", "true", "yes", "on")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_NEG_HALF_LOG2E = -0.5 / math.log(2.0)  # exp(−t/2) = exp2(t·_NEG_HALF_LOG2E)


def lambda_from_theta(theta: torch.Tensor, tau: float) -> torch.Tensor:
    """λ = 1 + softplus(θ/τ): always ≥ 1, and exactly GELU at λ = 1."""
    return 1.0 + F.softplus(theta / tau)


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


def uses_cpu_kernel(x: torch.Tensor, lam: torch.Tensor) -> bool:
    """Whether the compiled CPU kernel (`hf_kgelu.cpu_kernel`) computes this call: float32/bf16/fp16
    CPU tensors in eager mode, unless the torch path is forced; it is built on the first such call."""
    # _eager: under torch.compile, export or a dispatch mode the torch path is what they can trace
    return not FORCE_REFERENCE and _eager(x, lam) and _cpu_kernel.usable(x, lam)


class KGeluFunction(torch.autograd.Function):
    """Autograd for x·Φ(λx) that saves only x and λ, off the GPU: the compiled CPU kernel where
    `uses_cpu_kernel`, the torch path above for everything else."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, lam)
        ctx.cpu_kernel = uses_cpu_kernel(x, lam)
        return _cpu_kernel.forward(x, lam) if ctx.cpu_kernel else kgelu_forward_reference(x, lam)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, lam = ctx.saved_tensors
        backward = _cpu_kernel.backward if ctx.cpu_kernel else kgelu_backward_reference
        return backward(grad_out, x, lam, ctx.needs_input_grad[0], ctx.needs_input_grad[1])


if _kernels is not None:

    @torch.library.triton_op("hf_kgelu::kgelu", mutates_args=())
    def _kgelu_op(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return _kernels.kgelu_forward(x, lam, traceable=True)

    @torch.library.triton_op("hf_kgelu::kgelu_backward", mutates_args=())
    def _kgelu_backward_op(
        grad_out: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, need_x: bool, need_lam: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        grad_x, grad_lam = _kernels.kgelu_backward(grad_out, x, lam, need_x, need_lam, traceable=True)
        # An op returns tensors: empty stand-ins for the gradients nobody asked for.
        return (
            grad_x if grad_x is not None else x.new_empty(0),
            grad_lam if grad_lam is not None else lam.new_empty(0),
        )

    def _kgelu_setup_context(ctx, inputs, output) -> None:
        x, lam = inputs
        ctx.save_for_backward(x, lam)

    def _kgelu_op_backward(ctx, grad_out: torch.Tensor):
        x, lam = ctx.saved_tensors
        need_x, need_lam = ctx.needs_input_grad
        grad_x, grad_lam = torch.ops.hf_kgelu.kgelu_backward(grad_out, x, lam, need_x, need_lam)
        return (grad_x if need_x else None), (grad_lam if need_lam else None)

    _kgelu_op.register_autograd(_kgelu_op_backward, setup_context=_kgelu_setup_context)


class KGeluKernelFunction(torch.autograd.Function):
    """Eager autograd around the Triton kernels (same contract: saves only x and λ). Its callers
    validate the arguments, so the launchers skip their checks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, lam)
        return _kernels.kgelu_forward(x, lam, validate=False)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, lam = ctx.saved_tensors
        need_x, need_lam = ctx.needs_input_grad
        return _kernels.kgelu_backward(grad_out, x, lam, need_x, need_lam, validate=False)


class KGeluThetaKernelFunction(torch.autograd.Function):
    """Eager autograd of x·Φ(λx) with λ = 1 + softplus(θ/τ) computed inside the kernels: the
    forward kernel, the backward kernel and its partial-sum kernel per site, dθ directly (saves
    only x and θ)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor:
        ctx.save_for_backward(x, theta)
        ctx.tau = tau
        return _kernels.kgelu_forward(x, theta, tau, validate=False)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, theta = ctx.saved_tensors
        need_x, need_theta, _ = ctx.needs_input_grad
        grad_x, grad_theta = _kernels.kgelu_backward(grad_out, x, theta, need_x, need_theta, tau=ctx.tau, validate=False)
        return grad_x, grad_theta, None


def uses_kernel(x: torch.Tensor, lam: torch.Tensor) -> bool:
    """Whether `kgelu(x, lam)` runs the fused Triton kernel (else the torch path)."""
    return (
        _kernels is not None
        and not FORCE_REFERENCE
        and x.is_cuda
        and x.dtype in _KERNEL_DTYPES
        and x.get_device() == lam.get_device()  # ints: cheaper than comparing torch.device objects
    )


def _eager(x: torch.Tensor, param: torch.Tensor) -> bool:
    """Plain tensors outside any tracing: the direct autograd.Functions. Compilation, fake or
    functional tensors, dispatch modes: the registered op, which they all understand."""
    return (
        type(x) is torch.Tensor
        and type(param) in (torch.Tensor, torch.nn.Parameter)
        and not torch.compiler.is_compiling()
        and not torch._C._len_torch_dispatch_stack()
    )


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
    if uses_kernel(x, lam):
        if lam.dtype != torch.float32:
            lam = lam.float()
        if _eager(x, lam):
            return KGeluKernelFunction.apply(x, lam)
        return torch.ops.hf_kgelu.kgelu(x, lam)
    return KGeluFunction.apply(x, lam)


_site_launcher_ready = False  # the C++ site path is loaded (set by the first CUDA call)
_site_launcher_tried = False


def _load_site_launcher() -> None:
    global _site_launcher_ready, _site_launcher_tried
    _site_launcher_tried = True
    if _site_launcher.load():
        _site_launcher.set_python_backward(_kernels.kgelu_backward)
        _site_launcher_ready = True


def kgelu_theta(x: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor:
    """λ-GELU parametrised by θ: x·Φ(λx) with λ = 1 + softplus(θ/τ), differentiable in x and θ.

    The same function as `kgelu(x, lambda_from_theta(theta, tau))`. On CUDA in eager mode the
    kernels compute λ and dθ themselves (no softplus ops or autograd nodes around them), and a
    site with one θ on a contiguous input goes through the C++ site path (`hf_kgelu.site_launcher`:
    one call, no Python in its forward or backward); elsewhere, and under torch.compile, it is
    exactly that composition."""
    if (
        _site_launcher_ready
        and _eager(x, theta)
        and not FORCE_REFERENCE
        and not torch._C._are_functorch_transforms_active()
        and _kernels.launches_direct()
    ):
        y = _site_launcher.site_forward(x, theta, tau)  # None: not its case, or kernels not registered yet
        if y is not None:
            return y
    if theta.dtype == torch.float32 and theta.dim() == 1 and uses_kernel(x, theta) and _eager(x, theta):
        _check_lambda(x, theta)
        if not _site_launcher_tried:
            _load_site_launcher()
        return KGeluThetaKernelFunction.apply(x, theta, tau)
    return kgelu(x, lambda_from_theta(theta, tau))
