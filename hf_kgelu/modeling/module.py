"""`KGELU`: the λ-GELU activation module with one learnable hardness θ per site (or channel)."""

from __future__ import annotations

import torch
from torch import nn

from ..hardness import (
    DEFAULT_LAMBDA_INIT,
    DEFAULT_TAU,
    check_lambda,
    check_tau,
    lambda_from_theta,
    theta_from_lambda,
)
from ..ops import kgelu_theta


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether `tensor` is a DTensor (θ sharded by FSDP2 between steps)."""
    return hasattr(tensor, "full_tensor") and hasattr(tensor, "device_mesh")


class KGELU(nn.Module):
    """f(x) = x·Φ(λx) with λ = 1 + softplus(θ/τ) ≥ 1.

    θ has shape (1,) per site (not 0-d, so FSDP can flatten and shard it) or (num_channels,)
    per channel, and stays float32 whatever dtype the rest of the model is cast to.

    `float32_theta`: where an engine holds θ itself in a lower precision (DeepSpeed casts every
    parameter to bf16/fp16), the float32 θ it keeps elsewhere (`hf_kgelu.training.zero` sets it
    from the optimizer's master copy). λ is then read from it and written to it, and the forward
    computes with it exactly while θ's gradient still reaches the parameter.
    """

    def __init__(self, lambda_init: float = DEFAULT_LAMBDA_INIT, tau: float = DEFAULT_TAU, num_channels: int | None = None):
        super().__init__()
        self.tau = check_tau(tau)
        if num_channels is not None and (not isinstance(num_channels, int) or num_channels < 1):
            raise ValueError(f"num_channels must be a positive int or None (one θ per site), got {num_channels!r}")
        self.num_channels = num_channels
        shape = (num_channels,) if num_channels else (1,)
        # λ = 1 exactly has θ = -∞; the smallest representable start is just above it.
        start = max(check_lambda(lambda_init, "lambda_init"), 1.0 + 1e-6)
        self.theta = nn.Parameter(torch.full(shape, theta_from_lambda(start, self.tau), dtype=torch.float32))
        self.float32_theta: torch.Tensor | None = None

    @property
    def per_channel(self) -> bool:
        return self.num_channels is not None

    @property
    def lam(self) -> torch.Tensor:
        """λ as a float32 tensor shaped like θ, differentiable with respect to θ.

        Under FSDP2 θ is a sharded DTensor between steps: it is gathered here (a collective, so
        every rank must read λ at the same point, as the Trainer's callbacks do)."""
        return lambda_from_theta(self.full_theta(), self.tau)

    def full_theta(self) -> torch.Tensor:
        """θ as a plain tensor, differentiable: gathered when FSDP2 shards it (a collective); the
        float32 copy where an engine keeps one (`float32_theta`, not differentiable)."""
        if self.float32_theta is not None:
            return self.float32_theta
        theta = self.theta
        # type check first: a plain Parameter is never sharded, and hasattr's miss costs per call
        return theta.full_tensor() if type(theta) is not nn.Parameter and is_sharded(theta) else theta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        master = self.float32_theta
        if master is None:
            return kgelu_theta(x, self.full_theta(), self.tau)
        theta = self.theta
        if theta.requires_grad and torch.is_grad_enabled():
            # (θ − θ) is exactly 0: the value is the float32 copy, the gradient flows to θ
            master = master + (theta - theta.detach()).reshape(master.shape).to(master.dtype)
        return kgelu_theta(x, master, self.tau)

    @torch.no_grad()
    def set_lambda(self, value: float | torch.Tensor) -> None:
        """Set λ (a number, or a tensor shaped like θ) by writing the θ that produces it."""
        if not isinstance(value, torch.Tensor):
            # One number: θ in float64 arithmetic, rounded to float32 by fill_ (no tensor ops: the
            # annealing callback calls this for every site and step). fill_ passes it as a kernel
            # argument, whereas a copy from (pageable) host memory would wait for the GPU to drain.
            theta = theta_from_lambda(max(check_lambda(value), 1.0 + 1e-6), self.tau)
            for target in self._theta_targets():
                target.fill_(theta)
            return
        if not torch.isfinite(value).all() or (value < 1).any():
            raise ValueError("λ must be finite and ≥ 1 everywhere")
        value = value.detach().to(torch.float64).clamp_min(1.0 + 1e-6)
        theta = theta_from_lambda(value, self.tau)
        if theta.numel() == 1 or bool((theta == theta.reshape(-1)[0]).all()):
            for target in self._theta_targets():
                target.fill_(theta.reshape(-1)[0].item())  # one value (see above); float32 → double → float32: exact
            return
        shape = self.theta.shape if self.float32_theta is None else self.float32_theta.shape
        for target in self._theta_targets():
            full = theta.to(device=target.device, dtype=torch.float32).expand(shape)
            if is_sharded(target):  # FSDP2: every rank computes the full θ and writes its own shard
                from torch.distributed.tensor import distribute_tensor

                full = distribute_tensor(full.contiguous(), target.device_mesh, target.placements, src_data_rank=None)
            else:
                full = full.reshape(target.shape)
            target.copy_(full)

    def _theta_targets(self) -> list[torch.Tensor]:
        """Where set_lambda writes: θ, and the float32 copy where there is one (θ alone may then be a
        partition of it, or empty between steps: ZeRO-3)."""
        if self.float32_theta is None:
            return [self.theta]
        same = self.theta.numel() == self.float32_theta.numel()
        return [self.float32_theta, self.theta] if same else [self.float32_theta]

    @torch.no_grad()
    def set_tau(self, tau: float) -> None:
        """Change τ while keeping λ: θ is rewritten for the new temperature."""
        lam = self.lam.to(torch.float64)
        self.tau = check_tau(tau)
        self.set_lambda(lam)

    def freeze(self) -> None:
        self.theta.requires_grad_(False)

    def unfreeze(self) -> None:
        self.theta.requires_grad_(True)

    @property
    def frozen(self) -> bool:
        return not self.theta.requires_grad

    @torch.no_grad()
    def resize_channels(self, num_channels: int | None) -> None:
        """Switch between one θ per site and one θ per channel, keeping the mean λ."""
        shape = (num_channels,) if num_channels else (1,)
        self.num_channels = num_channels
        if tuple(self.theta.shape) == shape:
            return
        if self.theta.is_meta:
            fill = torch.empty(shape, dtype=torch.float32, device="meta")
        else:
            fill = torch.full(shape, theta_from_lambda(max(self.lam.mean().item(), 1.0 + 1e-6), self.tau))
            fill = fill.to(self.theta.device)
        self.theta = nn.Parameter(fill, requires_grad=self.theta.requires_grad)

    def _apply(self, fn, recurse=True):
        # `.to(bf16)`/`.half()` may move θ between devices but never round it: λ must stay exact.
        def keep_float32(t):
            out = fn(t)
            if t.dtype == torch.float32 and out.is_floating_point() and out.dtype != torch.float32:
                out = t.to(device=out.device)
            return out

        module = super()._apply(keep_float32, recurse)
        if self.float32_theta is not None:  # the float32 copy follows θ between devices
            self.float32_theta = keep_float32(self.float32_theta)
        return module

    def extra_repr(self) -> str:
        if self.theta.is_meta:
            return f"τ={self.tau:g}, channels={self.num_channels}"
        lam = self.lam.detach()
        shown = f"{lam.item():.4g}" if lam.numel() == 1 else f"mean {lam.mean().item():.4g} over {lam.numel()} channels"
        return f"λ={shown}, τ={self.tau:g}" + (", frozen" if self.frozen else "")
