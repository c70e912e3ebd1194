"""λ-GELU under several processes (accelerate's DDP, FSDP2 and DeepSpeed ZeRO): θ float32 and in sync.

`kgelu_theta_sync` ("auto", the default) chooses where θ is synchronised:

- DDP and FSDP2 ("outside"): θ is kept out of the engine (`hf_kgelu.training.theta_sync`): DDP
  ignores it, FSDP2 neither shards nor casts it (accelerate's `ignored_modules`), and
  `KGeluTrainer` averages every θ gradient in ONE float32 all-reduce per optimizer step. θ is a
  plain float32 tensor, whole and identical on every rank; freezing it needs no
  `find_unused_parameters`.
- "engine" (the previous behaviour, and what a stock Trainer gets): under DDP θ is an ordinary
  replicated parameter (its freeze then needs `find_unused_parameters`, see `KGeluTrainer`); under
  bf16 FSDP2 `shard_kgelu_sites` makes every site its own float32 FSDP2 unit on a (world × 1) mesh
  (θ whole and float32, but one tiny all-gather and reduce-scatter per site per step). A θ left
  in a block's unit would be all-gathered in bf16 (λ* ≈ 160 on a 0.6-wide grid), and the empty
  shards of a (1,) θ share data pointer 0, which breaks accelerate's optimizer remapping.
- DeepSpeed ZeRO-1/2/3: θ stays in DeepSpeed's optimizer, in its own group; `hf_kgelu.training.zero`
  checks the configuration, keeps a float32 θ for the forward and writes the schedule into the
  optimizer's float32 master copy.

`KGeluDistributedCallback` also checks, at every logged step, that all ranks hold the same θ and
agree on the step and on which sites are frozen (i.e. annealing started on the same step), and
logs `kgelu/theta_sync_max_diff`. A mismatch raises on every rank at once.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import TrainerCallback

from ..modeling.module import KGELU, is_sharded
from ..modeling.sites import find_sites, trained_sites
from .theta_sync import (
    ThetaGradientSync,
    broadcast_theta,
    exclude_theta_from_ddp,
    fsdp2_ignore_theta,
    resolve_mode,
    theta_parameters,
)

logger = logging.getLogger(__name__)

SYNC_LOG_KEY = "kgelu/theta_sync_max_diff"


class ThetaSyncError(RuntimeError):
    """The ranks of a distributed run disagree on θ, on the step or on the anneal phase."""


def world_size() -> int:
    """Processes in the default group (1 when torch.distributed is not initialised)."""
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return 1
    return torch.distributed.get_world_size()


def _fsdp2_plugin():
    """accelerate's FSDP plugin when this process runs FSDP2, else None."""
    try:
        from accelerate.state import AcceleratorState
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return None
    state = AcceleratorState._shared_state
    plugin = state.get("fsdp_plugin") if state else None
    return plugin if plugin is not None and getattr(plugin, "fsdp_version", 1) == 2 else None


def _low_precision(plugin) -> bool:
    """Whether an FSDP2 plugin casts parameters to a low precision for compute."""
    param_dtype = getattr(getattr(plugin, "mixed_precision_policy", None), "param_dtype", None)
    return param_dtype is not None and param_dtype != torch.float32


def current_engine() -> str | None:
    """The engine accelerate runs this process under: "ddp", "fsdp2", "fsdp1", "deepspeed", or None
    (one plain process)."""
    try:
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return None
    kind = (AcceleratorState._shared_state or {}).get("distributed_type")
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    if kind == DistributedType.FSDP:
        return "fsdp2" if _fsdp2_plugin() is not None else "fsdp1"
    if kind is not None and str(kind).split(".")[-1].startswith("MULTI_") and world_size() > 1:
        return "ddp"
    return None


def keep_input_embeddings_wrappable(model: nn.Module, plugin=None) -> list[str] | None:
    """Work around accelerate (1.15) under FSDP2 with transformer-based wrapping, for GELU and
    λ-GELU models alike: it shards every class of the model's `_no_split_modules` (DeiT, ViT and
    BERT list their `*Embeddings`), then shards `get_input_embeddings()` on its own, which fails
    inside an already sharded unit (`DeviceMesh._concatenate`: "Invariant encountered: value was
    None when it should not be"). The classes holding the input embeddings are dropped from the
    wrap list (their other parameters join the root unit). Returns the new list, or None when
    nothing needed changing (another policy, an explicit list, or no such class)."""
    plugin = plugin if plugin is not None else _fsdp2_plugin()
    if plugin is None or getattr(plugin, "transformer_cls_names_to_wrap", None) is not None:
        return None
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = getattr(plugin, "auto_wrap_policy", None)
    if getattr(policy, "func", policy) is not transformer_auto_wrap_policy:
        return None
    names = list(getattr(model, "_no_split_modules", None) or [])
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    path = next((name for name, module in model.named_modules() if module is embeddings), None)
    if not names or not path:
        return None
    parts = path.split(".")
    holders = {type(model.get_submodule(".".join(parts[:i]))).__name__ for i in range(1, len(parts))}
    kept = [name for name in names if name not in holders]
    if len(kept) == len(names):
        return None
    plugin.transformer_cls_names_to_wrap = kept
    logger.info("FSDP2: wrapping %s (not %s, which holds the input embeddings accelerate shards separately)",
                kept, sorted(set(names) - set(kept)))
    return kept


def replicated_site_mesh():
    """A (world × 1) device mesh: FSDP2 on it replicates (HSDP with shards of one rank)."""
    from torch.distributed.device_mesh import init_device_mesh

    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    return init_device_mesh(device_type, (world_size(), 1), mesh_dim_names=("kgelu_replicate", "kgelu_shard"))


def shard_kgelu_sites(model: nn.Module, mesh=None, offload_policy=None) -> int:
    """Make every λ-GELU site of `model` its own FSDP2 unit whose θ stays float32 and whole.

    The unit lives on a (world × 1) mesh (`replicated_site_mesh`): FSDP2 replicates θ on every
    rank (like DDP) and all-reduces its gradient, in float32, while the rest of the model is
    sharded and computed in bf16. Whole θ on every rank also gives every θ its own storage, which
    accelerate's parameter remapping needs (empty shards all share data pointer 0). The site's
    input and output keep their dtype. Call after the process group exists and before the rest
    of the model is sharded (accelerate skips modules that are already FSDP units). Returns the
    number of sites sharded (already sharded sites are left alone)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    sites = [site for _, site in find_sites(model) if not isinstance(site, FSDPModule) and not is_sharded(site.theta)]
    if not sites:
        return 0
    policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
    kwargs = {"mesh": mesh if mesh is not None else replicated_site_mesh(), "mp_policy": policy}
    if offload_policy is not None:
        kwargs["offload_policy"] = offload_policy
    for site in sites:
        # Resharded after every forward, so that outside forward/backward `site.theta` is always the
        # parameter the optimizer holds (set_lambda must write there, not into a gathered copy).
        fully_shard(site, reshard_after_forward=True, **kwargs)
    return len(sites)


def _sync_sites(model: nn.Module) -> list[tuple[str, KGELU]]:
    return trained_sites(model) or find_sites(model)


def theta_sync_vector(model: nn.Module, step: int, switch_step: int | None = None) -> torch.Tensor:
    """[step, switch step (-1: none yet), frozen flag per site…, θ of every site…] as float64:
    what every rank must agree on."""
    sites = _sync_sites(model)
    thetas = [site.full_theta().detach().reshape(-1).to(torch.float64) for _, site in sites]
    device = thetas[0].device if thetas else torch.device("cpu")
    head = [float(step), -1.0 if switch_step is None else float(switch_step)]
    head += [0.0 if site.theta.requires_grad else 1.0 for _, site in sites]
    return torch.cat([torch.tensor(head, dtype=torch.float64, device=device), *thetas])


def check_theta_sync(model: nn.Module, step: int = 0, switch_step: int | None = None) -> float:
    """All-gather `theta_sync_vector` and compare the ranks; returns the largest |θ difference|
    (0.0 when they agree, which is the only outcome that does not raise).

    Raises `ThetaSyncError` on every rank when the ranks disagree on the step, on the step at
    which θ froze (`switch_step`, as each rank saw it), on which sites are frozen, or on θ.
    Returns 0.0 without a process group. Every rank must call it at the same point."""
    if world_size() == 1:
        return 0.0
    import torch.distributed as dist

    local = theta_sync_vector(model, step, switch_step)
    if dist.get_backend() == "nccl" and not local.is_cuda:
        local = local.cuda()
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    gathered = [g.cpu() for g in gathered]
    reference, head = gathered[0], 2 + len(_sync_sites(model))
    for rank, other in enumerate(gathered[1:], start=1):
        if other[0] != reference[0]:
            raise ThetaSyncError(f"rank {rank} is at optimizer step {int(other[0])}, rank 0 at {int(reference[0])}")
        if not torch.equal(other[1:head], reference[1:head]):
            raise ThetaSyncError(
                f"at step {step} rank {rank} and rank 0 disagree on the anneal switch (switch step, then frozen flag "
                f"per site: {other[1:head].tolist()} vs {reference[1:head].tolist()}): θ must freeze on the same step "
                "everywhere"
            )
    diff = max(float((g[head:] - reference[head:]).abs().max()) if reference.numel() > head else 0.0 for g in gathered)
    if diff != 0.0:
        raise ThetaSyncError(
            f"at step {step} the ranks hold different θ (largest difference {diff:.3g}): the λ-GELU hardness is not "
            "reduced like the other parameters (a wrapper that skips θ, or per-rank optimizer settings); every rank "
            "must apply the same θ update"
        )
    return diff


class KGeluDistributedCallback(TrainerCallback):
    """Keeps λ-GELU right under several processes (`KGeluTrainer` adds it; a no-op in one process).

    - `on_init_end` (before accelerate wraps the model): under FSDP2 `keep_input_embeddings_wrappable`
      (add the callback to a stock Trainer for that alone); then θ is set up for the engine
      (`prepare`): kept out of DDP/FSDP2 ("outside"), or as before ("engine"); under DeepSpeed
      `KGeluZeroCallback` (hf_kgelu.training.zero) does the rest.
    - `on_train_begin`: "outside": every rank takes rank 0's θ.
    - every logged step (and the last): `check_theta_sync`, logged as `kgelu/theta_sync_max_diff`;
      `checked_steps` lists the steps checked and `switch_step` the first step every rank saw θ
      frozen (None before the switch).

    `gradient_sync` is the all-reduce the training loop calls after backward in "outside" mode
    (`reduces_theta`: KGeluTrainer sets it; a stock Trainer keeps θ in its engine).
    """

    def __init__(self, check_sync: bool = True):
        self.check_sync = check_sync
        self.checked_steps: list[int] = []
        self.switch_step: int | None = None
        self.last_diff: float | None = None
        self.reduces_theta = False
        self.engine: str | None = None
        self.theta_sync: str | None = None  # "outside" or "engine", once prepared
        self.gradient_sync: ThetaGradientSync | None = None
        self._sites: list[KGELU] | None = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            keep_input_embeddings_wrappable(model)
            self.prepare(model, args)

    def prepare(self, model: nn.Module, args) -> None:
        """Set θ up for the engine this process runs under; call before accelerate wraps `model`
        (KGeluTrainer calls it again for a model built by `model_init`)."""
        self.engine = current_engine()
        self.theta_sync = resolve_mode(getattr(args, "kgelu_theta_sync", "auto"), self.engine, self.reduces_theta)
        self.gradient_sync = None
        if not find_sites(model):
            return
        if self.engine == "fsdp2":
            self._prepare_fsdp2(model, args)
        elif self.engine == "ddp" and self.theta_sync == "outside":
            count = exclude_theta_from_ddp(model)
            logger.info("DDP: %d θ kept out of DDP's buckets, averaged in one all-reduce per step", count)
        if self.theta_sync == "outside":
            self.gradient_sync = ThetaGradientSync([p for _, p in theta_parameters(model)])

    def _prepare_fsdp2(self, model: nn.Module, args) -> None:
        plugin = _fsdp2_plugin()
        if self.theta_sync == "outside" and type(getattr(plugin, "cpu_offload", None)).__name__ == "CPUOffloadPolicy":
            # offloaded shards keep their gradients on the CPU, θ's would be on the GPU: one gradient norm
            # cannot span both devices, so θ stays in FSDP2 (float32 units of its own, offloaded with the rest)
            logger.info("FSDP2 with CPU offload: θ kept in float32 FSDP2 units of its own (kgelu_theta_sync='engine')")
            self.theta_sync = "engine"
        outside = self.theta_sync == "outside"
        if not outside and not _low_precision(plugin):
            return  # θ in the blocks' units, float32 throughout
        if getattr(plugin, "cpu_ram_efficient_loading", False):
            raise ValueError(
                "FSDP2 with cpu_ram_efficient_loading cannot load the λ-GELU hardness θ, which is kept float32 "
                f"{'outside the shards' if outside else 'in its own FSDP unit'} (accelerate's rank-0 broadcast only "
                "fills sharded parameters): set `fsdp_cpu_ram_efficient_loading: false` in the accelerate config (as "
                "scripts/accelerate_configs/fsdp.yaml does)"
            )
        if outside:
            count = fsdp2_ignore_theta(plugin, model, getattr(args, "device", None) or "cpu")
            logger.info("FSDP2: %d λ-GELU site(s) kept outside the shards (θ float32, one all-reduce per step)", count)
            return
        count = shard_kgelu_sites(model, offload_policy=getattr(plugin, "cpu_offload", None))
        if count:
            logger.info("FSDP2: %d λ-GELU site(s) sharded as float32 units (θ is not cast to %s)", count,
                        plugin.mixed_precision_policy.param_dtype)

    def _note_switch(self, state, model) -> None:
        # Local and cheap (no collective, the sites found once per run), every step: the first step this
        # rank sees every θ frozen. (Between a step's end and the next step's first kernel the GPU waits.)
        if self.switch_step is None and model is not None:
            if self._sites is None:
                self._sites = [site for _, site in _sync_sites(model)]
            if self._sites and all(not site.theta.requires_grad for site in self._sites):
                self.switch_step = state.global_step

    def _check(self, state, model) -> None:
        if not self.check_sync or model is None or world_size() == 1:
            return
        if self.checked_steps and self.checked_steps[-1] == state.global_step:
            return
        self.last_diff = check_theta_sync(model, state.global_step, self.switch_step)
        self.checked_steps.append(state.global_step)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.checked_steps, self.switch_step, self.last_diff, self._sites = [], None, None, None
        if self.gradient_sync is not None:
            broadcast_theta(self.gradient_sync.params)  # what DDP's wrap does for the parameters it owns
        self._note_switch(state, model)  # resumed past the switch: frozen from the start

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._note_switch(state, model)
        every = getattr(args, "kgelu_log_every", None) or max(1, int(state.logging_steps or 1))
        if state.global_step % every == 0 or state.global_step >= state.max_steps:
            self._check(state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        # The Trainer has already appended `logs` to log_history: add the value there too.
        if logs is not None and "loss" in logs and self.last_diff is not None:
            logs[SYNC_LOG_KEY] = self.last_diff
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1][SYNC_LOG_KEY] = self.last_diff


def gather_full_model(model: nn.Module) -> nn.Module | None:
    """A plain copy of an FSDP2-sharded transformers model, on the CPU of rank 0 (None elsewhere).

    A collective: every rank must call it. The copy is built from `model.config` with the
    model's own class and loaded from the full state dict (θ included), so it can be evaluated,
    ReLU-ized and saved on rank 0 alone, which the sharded model cannot (its forward all-gathers)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )
    from torch.distributed.fsdp import FSDPModule

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if world_size() > 1 and torch.distributed.get_rank() != 0:
        return None
    cls = next(c for c in type(model).__mro__ if not issubclass(c, FSDPModule))  # FSDP2 subclasses the model's class
    return rebuild_from_state(cls, model, state)


def rebuild_from_state(cls: type, model: nn.Module, state: dict) -> nn.Module:
    """A fresh `cls(model.config)` (float32, on the CPU) loaded from a full state dict of `model`."""
    if not hasattr(model, "config"):
        raise TypeError(f"gather_full_model rebuilds transformers models from their config; {cls.__name__} has none")
    copy = cls(model.config)
    missing, unexpected = copy.load_state_dict(state, strict=False)
    tied = set(getattr(copy, "_tied_weights_keys", None) or [])
    if unexpected or any(name not in tied for name in missing):
        raise RuntimeError(f"the gathered state dict does not fit a fresh {cls.__name__}: missing {missing}, unexpected {unexpected}")
    if missing and hasattr(copy, "tie_weights"):
        copy.tie_weights()
    return copy
