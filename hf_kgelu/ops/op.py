"""The op as PyTorch operators: `hf_kgelu::kgelu(x, param, tau)` and its backward, for every device,
eager and traced. `param` is θ when `tau` is given (λ = 1 + softplus(θ/τ) is computed inside), else
λ itself. Only x and param are saved for the backward, as torch's GELU saves only its input.

What runs, by device:
- CUDA: the fused Triton kernels, launched through Triton's public launch (wrapped by
  `torch.library.wrap_triton`, so torch.compile and export trace straight into them); in eager
  mode each site shape's first launch also teaches the C++ site path (`native`), which the
  `KGELU` module then calls directly;
- CPU, eager: the compiled C kernel (`cpu`) for float32/bfloat16/float16, else the torch path;
- CPU, traced: the torch path (`reference`), which Inductor fuses like any torch code.
"""

from __future__ import annotations

import logging

import torch

from . import cpu, native, reference, settings

try:
    from . import triton_launch
except ImportError:  # no triton (CPU-only installs): CUDA tensors take the torch path too
    triton_launch = None
    # torch logs "Triton not available" each time it scans a triton_op for kernels: noise where none is
    logging.getLogger("torch._library.triton").setLevel(logging.ERROR)

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _triton(x: torch.Tensor) -> bool:
    return triton_launch is not None and x.is_cuda and x.dtype in KERNEL_DTYPES and not settings.current().force_reference


def _eager(x: torch.Tensor) -> bool:
    return type(x) is torch.Tensor and not torch.compiler.is_compiling()


@torch.library.triton_op("hf_kgelu::kgelu", mutates_args=())
def kgelu_op(x: torch.Tensor, param: torch.Tensor, tau: float | None) -> torch.Tensor:
    if not _triton(x):
        return reference.forward(x, param, tau)
    record = [] if _eager(x) else None
    y = triton_launch.forward(x, param, tau, record=record)
    if record:
        native.adopt_forward(record, x, param, tau, y)
    return y


@torch.library.triton_op("hf_kgelu::kgelu_backward", mutates_args=())
def kgelu_backward_op(
    grad_out: torch.Tensor, x: torch.Tensor, param: torch.Tensor, tau: float | None, need_x: bool, need_param: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if not _triton(x):
        grad_x, grad_param = reference.backward(grad_out, x, param, tau, need_x, need_param)
    else:
        record = [] if _eager(x) else None
        grad_x, grad_param = triton_launch.backward(grad_out, x, param, tau, need_x, need_param, record=record)
        if record:
            native.adopt_backward(record, grad_out, x, param, tau, need_x, need_param, grad_x, grad_param)
    # an operator returns tensors: empty stand-ins for the gradients nobody asked for
    return (grad_x if grad_x is not None else x.new_empty(0)), (grad_param if grad_param is not None else param.new_empty(0))


def _uses_cpu_kernel(x: torch.Tensor, param: torch.Tensor) -> bool:
    s = settings.current()
    return s.cpu_kernel and not s.force_reference and cpu.usable(x, param)


@kgelu_op.register_kernel("cpu")
def _kgelu_cpu(x, param, tau):
    if not _uses_cpu_kernel(x, param):
        return reference.forward(x, param, tau)
    return cpu.forward(x, reference.hardness(param, tau))


@kgelu_backward_op.register_kernel("cpu")
def _kgelu_backward_cpu(grad_out, x, param, tau, need_x, need_param):
    if not _uses_cpu_kernel(x, param):
        grad_x, grad_param = reference.backward(grad_out, x, param, tau, need_x, need_param)
    else:
        grad_x, grad_param = cpu.backward(grad_out, x, reference.hardness(param, tau), need_x, need_param)
        if grad_param is not None and tau is not None:
            grad_param = reference.theta_gradient(grad_param, param, tau)
    return (grad_x if grad_x is not None else x.new_empty(0)), (grad_param if grad_param is not None else param.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:
    x, param, tau = inputs
    ctx.save_for_backward(x, param)
    ctx.tau = tau


def _backward(ctx, grad_out: torch.Tensor):
    x, param = ctx.saved_tensors
    need_x, need_param = ctx.needs_input_grad[:2]
    grad_x, grad_param = torch.ops.hf_kgelu.kgelu_backward(grad_out, x, param, ctx.tau, need_x, need_param)
    return (grad_x if need_x else None), (grad_param if need_param else None), None


kgelu_op.register_autograd(_backward, setup_context=_setup_context)
