"""θ outside the distributed engine: DDP and FSDP2 leave every θ alone, and ONE all-reduce per
optimizer step averages the θ gradients of all ranks.

θ is a handful of float32 numbers (one per site, or one per channel). Inside an engine it costs
more than its bytes: under bf16 FSDP2 each θ had to be its own float32 unit (a bf16 all-gather
rounds λ* ≈ 160 to a 0.6-wide grid), i.e. one all-gather and one reduce-scatter per site and
step; under DDP a θ that freezes at the anneal start needs `find_unused_parameters=True`.
Outside, θ is a plain float32 tensor, whole and identical on every rank, and its
synchronisation is one all-reduce of a few hundred bytes per step: latency, not bandwidth.

- DDP: every θ is named in `_ddp_params_and_buffers_to_ignore` (DDP neither broadcasts it at wrap
  time, nor buckets its gradient, nor waits for it once frozen).
- FSDP2: every λ-GELU module joins accelerate's `ignored_modules`, which accelerate hands to each
  `fully_shard` call as `ignored_params`: θ is never sharded, cast by the mixed-precision policy or
  gathered, and keeps its storage (accelerate remaps the optimizer by data pointer). `fully_shard`
  moves only what it manages, so θ is moved to the rank's device here.
- both: `ThetaGradientSync` runs after the last backward of an accumulation window (KGeluTrainer's
  `training_step`), before clipping and the optimizer step, and `broadcast_theta` once at the
  start (what DDP's wrap would have done). A custom loop calls `ThetaGradientSync` itself after
  `backward` (it is linear: calling it after every backward is also right, only slower).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ..modeling.sites import find_sites

THETA_SYNC_MODES = ("auto", "outside", "engine")


def _world() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def theta_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, θ) of every λ-GELU site, names as `model.named_parameters()` gives them."""
    ids = {id(site.theta) for _, site in find_sites(model)}
    return [(name, p) for name, p in model.named_parameters() if id(p) in ids]


def exclude_theta_from_ddp(model: nn.Module) -> int:
    """Name every θ in DDP's ignore list (call before DDP wraps `model`). Returns how many."""
    from torch.nn.parallel import DistributedDataParallel

    names = [name for name, _ in theta_parameters(model)]
    if names:
        ignored = set(getattr(model, "_ddp_params_and_buffers_to_ignore", None) or ())
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, sorted(ignored | set(names)))
    return len(names)


def fsdp2_ignore_theta(plugin, model: nn.Module, device) -> int:
    """Add every λ-GELU module to accelerate's FSDP2 `ignored_modules` (call before accelerate shards
    `model`) and move them to `device`. A user's pattern (a regex of module names) is kept, resolved
    to its modules as accelerate resolves it. Returns the number of sites."""
    sites = [site for _, site in find_sites(model)]
    ignored = plugin.ignored_modules
    if isinstance(ignored, str):
        pattern = re.compile(ignored)
        ignored = [module for name, module in model.named_modules() if pattern.fullmatch(name)]
        for module in ignored:
            module.to(device)  # what accelerate does for the modules a pattern names
    ignored = list(ignored or [])
    known = {id(module) for module in ignored}
    plugin.ignored_modules = ignored + [site for site in sites if id(site) not in known]
    for site in sites:
        site.to(device)  # KGELU._apply keeps θ float32
    return len(sites)


@torch.no_grad()
def broadcast_theta(params: list[nn.Parameter], src: int = 0) -> None:
    """Every rank takes rank `src`'s θ (one broadcast of all of them). A collective."""
    if _world() == 1 or not params:
        return
    flat = torch.cat([p.detach().reshape(-1).float() for p in params])
    torch.distributed.broadcast(flat, src)
    for p, chunk in zip(params, flat.split([p.numel() for p in params])):
        p.copy_(chunk.view_as(p))


class ThetaGradientSync:
    """Averages the gradients of the trainable θ over the ranks in one float32 all-reduce.

    A θ without a gradient on this rank (a site its batch never reached) counts as zero; one
    without a gradient on every rank keeps none (so the optimizer skips it, as it would in one
    process). Frozen θ are left out; the ranks freeze them on the same step (the sync check says
    so). A collective: every rank calls it at the same point."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = list(params)
        self._flags: dict = {}  # presence pattern → device tensor (no host-to-device copy per step)

    def __call__(self) -> int:
        trained = [p for p in self.params if p.requires_grad]
        world = _world()
        if world == 1 or not trained:
            return 0
        present = tuple(p.grad is not None for p in trained)
        device = trained[0].device
        flags = self._flags.get((present, device))
        if flags is None:
            flags = self._flags[(present, device)] = torch.tensor(present, dtype=torch.float32, device=device)
        pieces = [p.grad.reshape(-1).float() if p.grad is not None else p.new_zeros(p.numel(), dtype=torch.float32)
                  for p in trained]
        flat = torch.cat([*pieces, flags])
        torch.distributed.all_reduce(flat)
        sizes = [p.numel() for p in trained]
        grads, counts = flat[: sum(sizes)].div_(world), flat[sum(sizes):]
        chunks = grads.split(sizes)
        if all(present):
            torch._foreach_copy_([p.grad for p in trained], [c.view_as(p.grad) for p, c in zip(trained, chunks)])
        else:  # rare (data-dependent sites): reading the counts waits for the reduction
            for p, chunk, count in zip(trained, chunks, counts.tolist()):
                if p.grad is not None:
                    p.grad.copy_(chunk.view_as(p.grad))
                elif count > 0:
                    p.grad = chunk.view_as(p).to(p.dtype).clone()
        return len(trained)


def resolve_mode(mode: str, engine: str | None, reduces_theta: bool = True) -> str:
    """"outside" or "engine" from `kgelu_theta_sync` for `engine` ("ddp", "fsdp2", "fsdp1",
    "deepspeed", or None for one plain process). `reduces_theta`: the training loop calls
    `ThetaGradientSync` (KGeluTrainer does; a stock Trainer does not, so θ stays in its engine).
    DeepSpeed's optimizer owns θ's float32 master copy, so θ stays in DeepSpeed."""
    if mode not in THETA_SYNC_MODES:
        raise ValueError(f"kgelu_theta_sync must be one of {', '.join(THETA_SYNC_MODES)}, got {mode!r}")
    if engine == "deepspeed" and mode == "outside":
        raise ValueError(
            "kgelu_theta_sync='outside' is not available under DeepSpeed: its ZeRO optimizer holds θ's float32 "
            "master copy and updates it in θ's own parameter group. Use kgelu_theta_sync='auto' (or 'engine')"
        )
    if mode == "outside" and not reduces_theta:
        raise ValueError(
            "kgelu_theta_sync='outside' needs a training loop that all-reduces θ's gradients (KGeluTrainer does); "
            "with a stock Trainer use 'auto' or 'engine'"
        )
    if engine not in ("ddp", "fsdp2") or mode == "engine" or not reduces_theta:
        return "engine"
    return "outside"
