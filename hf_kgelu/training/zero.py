"""λ-GELU under DeepSpeed ZeRO (stages 1, 2, 3, through `accelerate launch`): θ in its own optimizer
group, float32, annealed and resumed exactly as in one process.

What DeepSpeed (0.19) does with θ, and what this module does about it:

- The optimizer. Without an "optimizer" block in the DeepSpeed config the Trainer builds its own
  (KGeluTrainer's: θ in one group, lr × η, weight decay 0) and DeepSpeed's ZeRO optimizer wraps it,
  keeping the groups. An "optimizer" block makes DeepSpeed build one group of all parameters (θ
  weight-decayed at the base rate); a "scheduler" block sets one learning rate for every group (θ
  loses its × η). `check_deepspeed_config` refuses both, loudly.
- The precision. Under bf16/fp16 DeepSpeed casts every parameter of the model, θ included (only
  buffers may stay float32), and its ZeRO optimizer keeps a float32 master copy of each. A bf16 θ
  puts λ* ≈ 160 on a 0.6-wide grid. So the forward computes with `KGELU.float32_theta`, read from the
  masters: one all-reduce of all θ after each optimizer step while θ learns. θ's gradient still
  reaches the parameter and DeepSpeed's reduction.
- The schedule. After the switch θ is frozen and set by the schedule, but DeepSpeed's step copies
  its master (which never saw the schedule, and which Adam's momentum still moves) over θ. So every
  optimizer step ends with the scheduled θ written into the masters (local writes, no collective):
  masters, DeepSpeed checkpoints and the saved model hold λ(step) exactly, λ* at the end. This holds
  in fp32 too, where ZeRO-1/2 keep a master copy as well.
- Saving: the state dict DeepSpeed hands the Trainer holds the bf16 θ; KGeluTrainer puts the float32
  θ in its place (`float32_theta_state`). Resuming: DeepSpeed's checkpoint restores the masters, and
  the float32 θ is read from them at train begin.

`KGeluZeroCallback` (KGeluTrainer puts it first, so the float32 θ exists before anything reads λ)
does all of it, and nothing outside DeepSpeed.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from transformers import TrainerCallback

from ..modeling.module import KGELU
from ..modeling.sites import find_sites
from .distributed import current_engine

logger = logging.getLogger(__name__)


class KGeluDeepSpeedError(ValueError):
    """A DeepSpeed setting that cannot honour θ's optimizer group or its float32 precision."""


def deepspeed_config(args) -> dict | None:
    """The DeepSpeed configuration this process trains with (None outside DeepSpeed)."""
    config = getattr(getattr(args, "hf_deepspeed_config", None), "config", None)
    if config is None:
        from accelerate.state import AcceleratorState

        plugin = AcceleratorState().deepspeed_plugin if AcceleratorState._shared_state else None
        config = getattr(getattr(plugin, "hf_ds_config", None), "config", None)
    return config


def check_deepspeed_config(config: dict) -> None:
    """Raise `KGeluDeepSpeedError` (every problem at once) where `config` cannot honour θ's group."""
    problems = []
    optimizer, scheduler = config.get("optimizer"), config.get("scheduler")
    if optimizer is not None:
        kind = optimizer.get("type", "?") if isinstance(optimizer, dict) else optimizer
        problems.append(
            f'it defines an "optimizer" block ({kind}): DeepSpeed then builds the optimizer from all parameters in '
            "one group, so θ would train at the base learning rate with weight decay. Delete the block: the Trainer "
            "then builds the optimizer from the training arguments (optim, learning_rate, weight_decay, adam_beta1, "
            "adam_beta2, adam_epsilon) with θ in its own group, and DeepSpeed runs it"
        )
    if scheduler is not None:
        kind = scheduler.get("type", "?") if isinstance(scheduler, dict) else scheduler
        problems.append(
            f'it defines a "scheduler" block ({kind}): DeepSpeed\'s schedulers give every parameter group the same '
            "learning rate, so θ would lose its × kgelu_lr_multiplier. Delete the block and choose the schedule with "
            "lr_scheduler_type and warmup_steps (the Trainer's schedules scale each group, keeping the ratio)"
        )
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    if stage not in (0, 1, 2, 3, "auto"):
        problems.append(f"zero_optimization.stage is {stage!r}: λ-GELU supports ZeRO stages 0-3")
    if problems:
        raise KGeluDeepSpeedError(
            "this DeepSpeed configuration cannot train the λ-GELU hardness θ in its own optimizer group "
            "(learning rate × kgelu_lr_multiplier, no weight decay, float32):\n- " + "\n- ".join(problems)
        )


@contextlib.contextmanager
def _trainable(theta: nn.Parameter):
    """ZeRO-3's master accessors skip parameters that do not require grad; θ frozen by the schedule
    still has its master, which must follow the schedule."""
    frozen = not theta.requires_grad
    if frozen:
        theta.requires_grad_(True)
    try:
        yield
    finally:
        if frozen:
            theta.requires_grad_(False)


def _master_span(theta: nn.Parameter):
    """(master tensor on this rank, start within the flattened θ), or None where this rank holds no
    part of θ's master. ZeRO-3: the rank's partition; ZeRO-1/2 and DeepSpeed's bf16 optimizer: the
    fragment of θ in the rank's flat partition."""
    if hasattr(theta, "ds_id"):
        from deepspeed.utils import safe_get_local_fp32_param

        with _trainable(theta):
            local = safe_get_local_fp32_param(theta)
        if local is None:
            return None
        start = theta.ds_zero_partition_rank * local.numel()
        count = min(local.numel(), theta.ds_numel - start)
        return (local.reshape(-1)[:count], start) if count > 0 else None
    mapping = getattr(theta, "_hp_mapping", None)
    if mapping is None:
        return None
    return mapping.hp_fragment.reshape(-1), mapping.lp_fragment_address.start


def _managed(theta: nn.Parameter) -> bool:
    """Whether DeepSpeed keeps a master copy of θ apart from the parameter."""
    return hasattr(theta, "ds_id") or hasattr(theta, "_hp_mapping")


class ZeroTheta:
    """The float32 θ of every site under DeepSpeed, kept equal to the optimizer's master copies."""

    def __init__(self, sites: list[KGELU]):
        self.sites = [site for site in sites if _managed(site.theta)]
        self.numels = [int(getattr(site.theta, "ds_numel", site.theta.numel())) for site in self.sites]
        if not self.sites:
            return
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        group = getattr(self.sites[0].theta, "ds_process_group", None) or getattr(self.sites[0].theta, "_dp_group", None)
        if group is not None and torch.distributed.get_world_size(group=group) != world:
            raise KGeluDeepSpeedError(
                "λ-GELU under DeepSpeed supports data parallelism over all processes (no tensor, pipeline or sequence "
                "parallel groups): θ's masters are gathered over the whole world"
            )

    @torch.no_grad()
    def read_masters(self, only_trainable: bool = False) -> None:
        """Every site's float32 θ := its master copy (one all-reduce of all of them). A collective."""
        if not self.sites:
            return
        device = self.sites[0].theta.device
        flat = torch.zeros(sum(self.numels), dtype=torch.float32, device=device)
        offset = 0
        for site, numel in zip(self.sites, self.numels):
            span = _master_span(site.theta)
            if span is not None:
                values, start = span
                flat[offset + start : offset + start + values.numel()].copy_(values.detach())
            offset += numel
        torch.distributed.all_reduce(flat)
        offset = 0
        for site, numel in zip(self.sites, self.numels):
            if not (only_trainable and site.frozen):
                value = flat[offset : offset + numel].reshape(site.num_channels or 1)
                if site.float32_theta is None:
                    site.float32_theta = value.clone()
                else:
                    site.float32_theta.copy_(value)
            offset += numel

    @torch.no_grad()
    def write_masters(self) -> None:
        """Every frozen site's master copy := its float32 θ (the schedule's). Local, no collective."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_local_fp32_param

        for site in self.sites:
            theta, value = site.theta, site.float32_theta
            if not site.frozen or value is None:
                continue
            with _trainable(theta):
                if not hasattr(theta, "ds_id"):  # ZeRO-1/2: writes the fragment this rank holds, if any
                    safe_set_full_fp32_param(theta, value.reshape(-1))
                    continue
                # ZeRO-3: this rank's partition, padding included (DeepSpeed's full setter does not pad)
                size = theta.ds_tensor.ds_numel
                start = theta.ds_zero_partition_rank * size
                local = value.new_zeros(size)
                count = max(0, min(size, value.numel() - start))
                local[:count] = value.reshape(-1)[start : start + count]
                safe_set_local_fp32_param(theta, local)

    def step(self) -> None:
        """After an optimizer step: learning θ comes from the masters, frozen θ goes into them."""
        if any(not site.frozen for site in self.sites):
            self.read_masters(only_trainable=True)  # the ranks freeze together: all call it, or none
        self.write_masters()


def float32_theta_state(model: nn.Module, state_dict: dict | None) -> dict | None:
    """`state_dict` (of `model`, as DeepSpeed gathers it for saving; None on the ranks ZeRO-3 gathers it
    not to) with every θ that has a float32 copy replaced by that copy (DeepSpeed's is bf16/fp16)."""
    if not state_dict:
        return state_dict
    for name, site in find_sites(model):
        key = f"{name}.theta" if name else "theta"
        if site.float32_theta is not None and key in state_dict:
            state_dict[key] = site.float32_theta.detach().to(device=state_dict[key].device).clone()
    return state_dict


def gather_deepspeed_model(trainer) -> nn.Module | None:
    """A plain float32 copy, on the CPU of rank 0 (None elsewhere), of the model a Trainer trained under
    DeepSpeed: the weights as DeepSpeed gathers them for saving (ZeRO-3 needs `zero3_save_16bit_model`)
    with the float32 θ. A collective: every rank must call it."""
    from .distributed import rebuild_from_state

    model = trainer.accelerator.unwrap_model(trainer.model)
    state = float32_theta_state(model, trainer.accelerator.get_state_dict(trainer.model_wrapped))
    if not trainer.is_world_process_zero():
        return None
    return rebuild_from_state(type(model), model, {k: v.detach().float().cpu() for k, v in state.items()})


class KGeluZeroCallback(TrainerCallback):
    """θ under DeepSpeed (a no-op otherwise): the configuration checked when the trainer is built, the
    float32 θ read from the masters at train begin, and the masters kept on the schedule after every
    optimizer step (see the module docstring)."""

    def __init__(self):
        self.active = False
        self.theta: ZeroTheta | None = None

    def prepare(self, model: nn.Module, args) -> None:
        self.active = current_engine() == "deepspeed" and bool(find_sites(model))
        if self.active:
            check_deepspeed_config(deepspeed_config(args) or {})

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model, args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not self.active:
            return
        self.theta = ZeroTheta([site for _, site in find_sites(model)])
        self.theta.read_masters()
        if self.theta.sites:
            logger.info("DeepSpeed: %d λ-GELU site(s) compute with a float32 θ read from the optimizer's masters",
                        len(self.theta.sites))

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.theta is not None:
            self.theta.step()
