"""`KGeluTrainer`: learned-then-annealed hardness with the stock Trainer loop.

Swap `Trainer`/`TrainingArguments` for `KGeluTrainer`/`KGeluTrainingArguments` and train a model
whose activations are λ-GELU (`hidden_act="kgelu"`, or a GELU model passed through
`convert_to_kgelu`). The trainer

- puts every θ in its own optimizer group: learning rate × `kgelu_lr_multiplier`, weight decay 0;
  every other parameter is grouped exactly as the stock Trainer groups it, so the LambdaLR
  schedulers keep the θ/weight ratio;
- learns θ until the switch step s₀ = round(`kgelu_anneal_start`·S), then freezes it
  (`requires_grad=False`: no gradient, no optimizer update, no weight-decay or momentum drift)
  and drives λ linearly to λ* so that the last optimizer step S trains at λ* and the model ends
  there exactly (see `hf_kgelu.annealing`);
- resumes exactly: the λ learned by the switch is saved in every checkpoint's
  `trainer_state.json` and restored whenever training resumes, with or without
  `restore_callback_states_from_checkpoint`;
- with `kgelu_bound="data"`, chooses at the switch one target per site (the smallest λ whose mean
  swap error on that site's real pre-activations is ≤ ε, from a few training batches: see
  `hf_kgelu.data_aware`) and stores the targets beside the switch λ, so resuming reproduces them;
- logs λ per site, the mean λ, the drift D and the anneal phase through the Trainer's own logs
  (so every `report_to` integration receives them), and keeps `hardness_history.json` in
  `output_dir` (and a copy in each checkpoint) for `hf_kgelu.plotting.plot_hardness`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .annealing import SHAPES, AnnealingSchedule, check_anneal_start
from .hardness import BOUNDS, DEFAULT_LAMBDA_RANGE, INIT_MODES, hardness_drift, init_lambdas, target_lambda
from .history import HISTORY_FILENAME, HISTORY_FORMAT, HISTORY_VERSION, read_history, write_history
from .modules import DEFAULT_LAMBDA_INIT, KGELU, find_sites
from .peft_utils import trained_sites

logger = logging.getLogger(__name__)

REINIT_MODES = ("auto", "always", "never")
DATA_BOUND = "data"  # per-site targets from the sites' real pre-activations (hf_kgelu.data_aware)
LOG_PREFIX = "kgelu/"


# ----------------------------------------------------------------------------------------------
# Arguments


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class KGeluTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the λ-GELU settings (all `kgelu_*`, all readable by `HfArgumentParser`).

    Hardness initialisation (`kgelu_init`, `kgelu_lambda_init`, `kgelu_lambda_range`) left at
    None keeps what the model was built with (its config's `kgelu_*` values, by default uniform
    λ = 1.05). When one of them is given, `kgelu_reinit` decides whether it is applied when the
    trainer is built: "auto" applies it only to θ still at their construction-time value (a
    model loaded from a trained λ-GELU checkpoint keeps its learned λ, with a warning), "always"
    applies it even over trained θ, "never" leaves θ alone. Resuming from a checkpoint always
    restores the checkpoint's θ.
    """

    kgelu_tau: Optional[float] = field(
        default=None,
        metadata={"help": "temperature τ of λ = 1 + softplus(θ/τ); None keeps the model's (default 0.1). λ is kept when τ changes."},
    )
    kgelu_per_channel: Optional[bool] = field(
        default=None,
        metadata={"help": "one λ per channel (True) or per site (False) at every site, switched when the trainer is built "
                          "(keeping each site's mean λ); None keeps the model's (config kgelu_per_channel)"},
    )
    kgelu_lr_multiplier: float = field(
        default=10.0, metadata={"help": "η: θ trains at learning_rate × η, without weight decay"}
    )
    kgelu_init: Optional[str] = field(
        default=None, metadata={"help": "hardness init across depth: uniform, increasing or decreasing (None: the model's)"}
    )
    kgelu_lambda_init: Optional[float] = field(
        default=None, metadata={"help": f"initial λ of uniform init (None: the model's, default {DEFAULT_LAMBDA_INIT})"}
    )
    kgelu_lambda_range: Optional[list[float]] = field(
        default=None,
        metadata={"help": f"LOW HIGH λ of increasing/decreasing init (None: the model's, default {DEFAULT_LAMBDA_RANGE[0]} {DEFAULT_LAMBDA_RANGE[1]})"},
    )
    kgelu_reinit: str = field(
        default="auto",
        metadata={"help": "apply the init above when the trainer is built: auto (only to untrained θ), always, never"},
    )
    kgelu_anneal_start: Optional[Union[float, str]] = field(
        default=0.25,
        metadata={"help": "fraction of the optimizer steps in [0, 1) after which θ freezes and λ anneals to λ*; none = learn λ throughout"},
    )
    kgelu_anneal_shape: str = field(
        default="linear",
        metadata={"help": f"how λ moves from the switch to λ*: {', '.join(SHAPES)} (linear in λ, the paper's; or in log λ, "
                          "which hardens evenly: better for short conversions of pretrained GELU models)"},
    )
    kgelu_tolerance: float = field(
        default=0.005, metadata={"help": "tolerance ε that sets λ* through kgelu_bound (0.005 with gate_l1: λ* ≈ 160)"}
    )
    kgelu_bound: str = field(
        default="gate_l1",
        metadata={"help": f"how ε becomes λ*: a closed-form bound ({', '.join(BOUNDS)}), or '{DATA_BOUND}': per site, the "
                          "smallest λ whose mean |λ-GELU − ReLU| on that site's pre-activations (a few training batches "
                          "at the switch) is ≤ ε"},
    )
    kgelu_data_relative: bool = field(
        default=True,
        metadata={"help": "kgelu_bound='data': ε is relative to each site's output scale E|ReLU(x)| (else absolute)"},
    )
    kgelu_data_batches: int = field(
        default=4, metadata={"help": "kgelu_bound='data': training batches whose pre-activations set the targets"}
    )
    kgelu_data_per_channel: bool = field(
        default=False, metadata={"help": "kgelu_bound='data': one target per channel at per-channel sites (else one per site)"}
    )
    kgelu_target_lambda: Optional[float] = field(
        default=None, metadata={"help": "explicit annealing target λ* ≥ 1 (overrides kgelu_tolerance)"}
    )
    kgelu_log_every: Optional[int] = field(
        default=None,
        metadata={"help": "record λ every N optimizer steps (and log then); None: at the Trainer's logging_steps"},
    )

    def __post_init__(self):
        self._validate_kgelu()  # before the (slower) stock checks, so a bad value fails first
        super().__post_init__()

    def _validate_kgelu(self) -> None:
        if self.kgelu_tau is not None and (not _is_number(self.kgelu_tau) or self.kgelu_tau <= 0):
            raise ValueError(f"kgelu_tau must be a finite number > 0 (the temperature τ), got {self.kgelu_tau!r}")
        if not _is_number(self.kgelu_lr_multiplier) or self.kgelu_lr_multiplier < 0:
            raise ValueError(f"kgelu_lr_multiplier (η) must be a finite number ≥ 0, got {self.kgelu_lr_multiplier!r}")
        if self.kgelu_init is not None and self.kgelu_init not in INIT_MODES:
            raise ValueError(f"kgelu_init must be one of {', '.join(INIT_MODES)} (or None), got {self.kgelu_init!r}")
        if self.kgelu_lambda_init is not None and (not _is_number(self.kgelu_lambda_init) or self.kgelu_lambda_init < 1):
            raise ValueError(f"kgelu_lambda_init must be a finite λ ≥ 1, got {self.kgelu_lambda_init!r}")
        if self.kgelu_lambda_range is not None:
            value = self.kgelu_lambda_range
            if isinstance(value, str):  # "1.05,2.0" from a JSON/YAML config
                try:
                    value = [float(v) for v in value.replace(",", " ").split()]
                except ValueError:
                    raise ValueError(f"kgelu_lambda_range must be two numbers LOW HIGH, got {self.kgelu_lambda_range!r}") from None
            value = list(value)
            if len(value) != 2 or not all(_is_number(v) for v in value) or not 1 <= value[0] <= value[1]:
                raise ValueError(f"kgelu_lambda_range must be two numbers 1 ≤ LOW ≤ HIGH, got {self.kgelu_lambda_range!r}")
            self.kgelu_lambda_range = [float(v) for v in value]
        if self.kgelu_reinit not in REINIT_MODES:
            raise ValueError(f"kgelu_reinit must be one of {', '.join(REINIT_MODES)}, got {self.kgelu_reinit!r}")
        start = self.kgelu_anneal_start
        if isinstance(start, str):
            if start.strip().lower() in ("none", "null", "off", "no", ""):
                start = None
            else:
                try:
                    start = float(start)
                except ValueError:
                    raise ValueError(f"kgelu_anneal_start must be a fraction in [0, 1) or 'none', got {start!r}") from None
        if start is not None:
            try:
                start = check_anneal_start(start)
            except ValueError:
                raise ValueError(
                    f"kgelu_anneal_start must be a fraction of the optimizer steps in [0, 1), or None/'none' to learn λ "
                    f"throughout, got {self.kgelu_anneal_start!r}"
                ) from None
        self.kgelu_anneal_start = start
        if self.kgelu_anneal_shape not in SHAPES:
            raise ValueError(f"kgelu_anneal_shape must be one of {', '.join(SHAPES)}, got {self.kgelu_anneal_shape!r}")
        if not _is_number(self.kgelu_tolerance) or self.kgelu_tolerance <= 0:
            raise ValueError(f"kgelu_tolerance (ε) must be a finite number > 0, got {self.kgelu_tolerance!r}")
        if self.kgelu_bound not in (*BOUNDS, DATA_BOUND):
            raise ValueError(f"kgelu_bound must be one of {', '.join((*BOUNDS, DATA_BOUND))}, got {self.kgelu_bound!r}")
        if isinstance(self.kgelu_data_batches, bool) or not isinstance(self.kgelu_data_batches, int) or self.kgelu_data_batches < 1:
            raise ValueError(f"kgelu_data_batches must be a positive number of batches, got {self.kgelu_data_batches!r}")
        if self.kgelu_target_lambda is not None and (not _is_number(self.kgelu_target_lambda) or self.kgelu_target_lambda < 1):
            raise ValueError(
                f"kgelu_target_lambda (λ*) must be a finite number ≥ 1 (λ = 1 is GELU), got {self.kgelu_target_lambda!r}"
            )
        if self.kgelu_log_every is not None and (
            isinstance(self.kgelu_log_every, bool) or not isinstance(self.kgelu_log_every, int) or self.kgelu_log_every < 1
        ):
            raise ValueError(f"kgelu_log_every must be a positive number of optimizer steps (or None), got {self.kgelu_log_every!r}")

    @property
    def kgelu_data_targets(self) -> bool:
        """Whether the targets are chosen per site from data at the switch (`kgelu_bound="data"`, no explicit λ*)."""
        return self.kgelu_bound == DATA_BOUND and self.kgelu_target_lambda is None

    @property
    def kgelu_resolved_target_lambda(self) -> float | None:
        """λ*: `kgelu_target_lambda` when given, else the λ that meets `kgelu_tolerance` under `kgelu_bound`;
        None with data-aware targets (they are chosen per site at the switch)."""
        if self.kgelu_target_lambda is not None:
            return float(self.kgelu_target_lambda)
        if self.kgelu_bound == DATA_BOUND:
            return None
        return target_lambda(self.kgelu_tolerance, self.kgelu_bound)

    def kgelu_settings(self) -> dict:
        """The kgelu_* arguments as a plain dict (recorded in the hardness history)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith("kgelu_")}


# ----------------------------------------------------------------------------------------------
# Sites


def short_site_names(names: list[str]) -> list[str]:
    """Site names without the parts they all share: `transformer.h.0.mlp.act` → `h.0`."""
    if not names:
        return []
    parts = [name.split(".") for name in names]
    if len(parts) == 1:
        return [".".join(parts[0][-2:])]
    shortest = min(len(p) for p in parts)
    prefix = 0
    while prefix < shortest - 1 and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix - 1 and len({p[-1 - suffix] for p in parts}) == 1:
        suffix += 1
    short = []
    for p in parts:
        # A bare layer index reads badly: keep the container name in front of it ("h.0").
        start = prefix - 1 if prefix > 0 and p[prefix].isdigit() else prefix
        short.append(".".join(p[start : len(p) - suffix]))
    return short if len(set(short)) == len(short) else list(names)


def _require_sites(model: nn.Module) -> list[tuple[str, KGELU]]:
    sites = trained_sites(model)
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no λ-GELU (KGELU) activation sites, so KGeluTrainer has no hardness to train: "
            'build the model from a config with hidden_act="kgelu" (GPT-2: activation_function="kgelu"), or convert a '
            "GELU model with hf_kgelu.convert_to_kgelu(model) before passing it to the trainer"
        )
    return sites


def _model_config(model: nn.Module):
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    return getattr(model, "config", None)


def _untouched(site: KGELU) -> bool:
    """Whether λ still holds its construction-time value (never trained, loaded or set by hand).

    Compared on λ to float32 precision: the init paths compute θ in slightly different ways."""
    initial = max(getattr(site, "initial_lambda", DEFAULT_LAMBDA_INIT), 1.0 + 1e-6)
    return bool(((_site_lambda(site) - initial).abs() <= 1e-6 * initial).all())


def _switch_channels(model: nn.Module, per_channel: bool) -> None:
    """One θ per channel (or per site) at every site, each keeping its mean λ; recorded in the config
    so a saved checkpoint rebuilds the same shapes."""
    from .registry import infer_num_channels

    if hasattr(model, "get_base_model"):
        raise ValueError(
            "kgelu_per_channel cannot reshape θ inside a PEFT model (the adapter copies are already made): build the "
            "base model per channel first (config kgelu_per_channel=True, or convert_to_kgelu(model, per_channel=True)), "
            "then wrap it"
        )
    for name, site in find_sites(model):
        site.resize_channels(infer_num_channels(model, name) if per_channel else None)
    config = _model_config(model)
    if config is not None:
        config.kgelu_per_channel = per_channel


def prepare_hardness(model: nn.Module, args: KGeluTrainingArguments) -> None:
    """Apply `kgelu_tau` and the hardness init of `args` to `model` (see `KGeluTrainingArguments`)."""
    sites = _require_sites(model)
    config = _model_config(model)
    if args.kgelu_per_channel is not None and any(site.per_channel != args.kgelu_per_channel for _, site in sites):
        _switch_channels(model, bool(args.kgelu_per_channel))
        sites = _require_sites(model)
    trained = [name for name, site in sites if not _untouched(site)]  # judged before τ rewrites θ
    if args.kgelu_tau is not None:
        for _, site in find_sites(model):  # every copy, so PEFT's original and adapter copy agree
            if site.tau != args.kgelu_tau:
                site.set_tau(args.kgelu_tau)  # keeps λ, rewrites θ
        if config is not None:
            config.kgelu_tau = float(args.kgelu_tau)
    given = any(v is not None for v in (args.kgelu_init, args.kgelu_lambda_init, args.kgelu_lambda_range))
    if args.kgelu_reinit == "never" or (args.kgelu_reinit == "auto" and not given):
        return

    def setting(name, default):
        value = getattr(args, name)
        if value is None and config is not None:
            value = getattr(config, name, None)
        return default if value is None else value

    mode = setting("kgelu_init", "uniform")
    lambda_init = float(setting("kgelu_lambda_init", DEFAULT_LAMBDA_INIT))
    lambda_range = [float(v) for v in setting("kgelu_lambda_range", DEFAULT_LAMBDA_RANGE)]
    if args.kgelu_reinit == "auto" and trained:
        logger.warning(
            "kgelu_init/kgelu_lambda_init/kgelu_lambda_range were not applied: the θ of %d λ-GELU site(s) (e.g. %s) "
            "are not at their initial value (loaded from a trained checkpoint or set by hand), so their learned λ is "
            "kept. Pass kgelu_reinit='always' to re-initialise them anyway.",
            len(trained),
            trained[0],
        )
        return
    for (_, site), lam in zip(sites, init_lambdas(len(sites), mode, lambda_init, lambda_range)):
        site.set_lambda(lam)
        site.initial_lambda = lam
    if config is not None:
        config.kgelu_init, config.kgelu_lambda_init, config.kgelu_lambda_range = mode, lambda_init, lambda_range


# ----------------------------------------------------------------------------------------------
# The callback: schedule, freezing, history


def _mean(value: float | list[float]) -> float:
    return sum(value) / len(value) if isinstance(value, list) else float(value)


def _site_lambda(site: KGELU) -> torch.Tensor:
    """λ of a site as float64 on the CPU (the float32 λ, exactly)."""
    return site.lam.detach().to(device="cpu", dtype=torch.float64)


class KGeluHardnessCallback(TrainerCallback, ExportableState):
    """Freezes θ at the switch, drives λ along the annealing schedule and records the trajectory.

    It reads its settings from the `KGeluTrainingArguments` the Trainer passes to every event,
    so it needs no constructor arguments. Its only state — the λ learned by the switch — is
    exported into every checkpoint's `trainer_state.json`; `on_train_begin` reads it back from
    there when training resumes, whatever `restore_callback_states_from_checkpoint` says.
    `KGeluTrainer` adds it for you. A stock `Trainer` given `KGeluTrainingArguments` and this
    callback runs the same schedule, but puts θ under weight decay at the base learning rate
    and keeps no history copy in the checkpoints.

    Multi-GPU: freezing θ mid-run needs DDP's `find_unused_parameters=True`, the Trainer's default
    for transformers models except under activation checkpointing; `KGeluTrainer` then sets
    `ddp_find_unused_parameters=True` unless you chose a value.
    """

    def __init__(self):
        self.start_lambda: dict[str, list[float]] | None = None  # site name -> λ at the switch
        self.start_step: int | None = None
        self.site_targets: dict[str, float | list[float]] | None = None  # site name -> data-aware λ*
        self.resume_dir: str | None = None
        self.data_forward = None  # set by KGeluTrainer: runs a few training batches through a model
        self._reset_run()

    def _reset_run(self) -> None:
        self.schedule: AnnealingSchedule | None = None
        self.sites: list[tuple[str, KGELU]] = []
        self.short_names: list[str] = []
        self.history: dict | None = None
        self.frozen_by_us: list[KGELU] = []
        self.last_logged_profile: dict[str, float] | None = None

    # ---- ExportableState
    def state(self) -> dict:
        return {
            "args": {},
            "attributes": {"start_lambda": self.start_lambda, "start_step": self.start_step, "site_targets": self.site_targets},
        }

    # ---- measurements
    def site_stats(self) -> dict[str, dict[str, float]]:
        """{short name: {mean, min, max}} of λ over each site's channels (one value for scalar sites)."""
        stats = {}
        for short, (_, site) in zip(self.short_names, self.sites):
            lam = _site_lambda(site)
            stats[short] = {"mean": lam.mean().item(), "min": lam.min().item(), "max": lam.max().item()}
        return stats

    def log_values(self, step: int) -> dict[str, float]:
        """The kgelu_* entries added to a training log at optimizer step `step`."""
        if not self.sites:
            return {}
        stats = self.site_stats()
        values: dict[str, float] = {}
        for short, (_, site) in zip(self.short_names, self.sites):
            if site.per_channel:  # thousands of channels: summaries, not one scalar each
                for key in ("mean", "min", "max"):
                    values[f"{LOG_PREFIX}lambda/{short}/{key}"] = stats[short][key]
            else:
                values[f"{LOG_PREFIX}lambda/{short}"] = stats[short]["mean"]
        profile = {short: s["mean"] for short, s in stats.items()}
        values[f"{LOG_PREFIX}lambda_mean"] = sum(profile.values()) / len(profile)
        if self.last_logged_profile is not None:
            values[f"{LOG_PREFIX}drift"] = hardness_drift(self.last_logged_profile, profile)
        self.last_logged_profile = profile
        annealing = self.schedule is not None and self.start_lambda is not None and step > self.schedule.start_step
        values[f"{LOG_PREFIX}annealing"] = 1.0 if annealing else 0.0
        if self.schedule is not None:
            values[f"{LOG_PREFIX}anneal_progress"] = self.schedule.progress(step)
        return values

    # ---- schedule
    def _freeze(self) -> None:
        for _, site in self.sites:
            if not site.frozen:
                site.freeze()
                self.frozen_by_us.append(site)
            site.theta.grad = None

    def _site_target(self, name: str) -> float | torch.Tensor:
        """λ* of one site: its data-aware target when there are some, else the run's λ*."""
        if self.site_targets is None:
            return self.schedule.target_lambda
        value = self.site_targets[name]
        return torch.tensor(value, dtype=torch.float64) if isinstance(value, list) else float(value)

    def _choose_data_targets(self, args, model) -> None:
        """kgelu_bound="data": per-site targets from the pre-activations of a few training batches."""
        from .data_aware import data_aware_targets

        if self.data_forward is None:
            raise ValueError(
                "kgelu_bound='data' chooses the targets from training batches at the switch, which needs KGeluTrainer "
                "(a stock Trainer does not hand the callback its data): train with hf_kgelu.KGeluTrainer, or use a "
                "closed-form bound"
            )
        self.site_targets = data_aware_targets(
            model, lambda: self.data_forward(model), args.kgelu_tolerance, relative=args.kgelu_data_relative,
            per_channel=args.kgelu_data_per_channel, seed=args.seed, sites=self.sites,
        )
        self._use_site_targets()
        logger.info("data-aware annealing targets: %s", {s: _mean(self.site_targets[n]) for s, (n, _) in zip(self.short_names, self.sites)})

    def _use_site_targets(self) -> None:
        # The schedule's λ* becomes the largest site target (what the history and the model card report).
        largest = max(max(v) if isinstance(v, list) else v for v in self.site_targets.values())
        self.schedule = dataclasses.replace(self.schedule, target_lambda=float(largest))

    def _record_switch(self, step: int, args, model) -> None:
        self.start_step = step
        self.start_lambda = {name: _site_lambda(site).tolist() for name, site in self.sites}
        if getattr(args, "kgelu_data_targets", False) and self.site_targets is None:
            self._choose_data_targets(args, model)
        above = [
            short for short, (name, _) in zip(self.short_names, self.sites)
            if (torch.tensor(self.start_lambda[name], dtype=torch.float64) > self._site_target(name)).any()
        ]
        if above:
            logger.warning(
                "λ-GELU site(s) %s learned a hardness above the annealing target λ* = %.6g by the switch (step %d): "
                "annealing moves them down to λ*.",
                ", ".join(above),
                self.schedule.target_lambda,
                step,
            )
        self._freeze()

    def _apply(self, step: int) -> None:
        """Set every site to the λ that optimizer step `step` trains with."""
        step = min(step, self.schedule.max_steps)
        for name, site in self.sites:
            start, target = self.start_lambda[name], self._site_target(name)
            if len(start) == 1 and not isinstance(target, torch.Tensor):
                # one λ: float arithmetic, no tensor ops (this runs for every site before every step,
                # and a dozen small CPU ops per site cost ~0.1 ms of host time each)
                site.set_lambda(self.schedule.lambda_at(step, start[0], target))
                continue
            lam = self.schedule.lambda_at(step, torch.tensor(start, dtype=torch.float64), target)
            site.set_lambda(lam.reshape(site.theta.shape))

    # ---- history
    def _new_history(self, args, state) -> dict:
        return {
            "format": HISTORY_FORMAT,
            "version": HISTORY_VERSION,
            "sites": dict(zip(self.short_names, (name for name, _ in self.sites))),
            "per_channel": {short: site.per_channel for short, (_, site) in zip(self.short_names, self.sites)},
            "max_steps": state.max_steps,
            "anneal_start_step": None,
            "target_lambda": None,
            "target_lambdas": None,
            "anneal_start_lambda": None,
            "settings": args.kgelu_settings(),
            "steps": [],
            "epochs": [],
        }

    def _load_history(self, args, state) -> dict:
        for folder in (self.resume_dir, args.output_dir):
            if not folder or not os.path.isfile(os.path.join(folder, HISTORY_FILENAME)):
                continue
            try:
                history = read_history(folder)
            except (ValueError, OSError) as error:
                logger.warning("ignoring the hardness history in %s: %s", folder, error)
                continue
            history["steps"] = [e for e in history.get("steps", []) if e["step"] <= state.global_step]
            history["epochs"] = [e for e in history.get("epochs", []) if e["step"] <= state.global_step]
            return history
        return self._new_history(args, state)

    def _update_history_header(self, args, state) -> None:
        h = self.history
        h["max_steps"], h["settings"] = state.max_steps, args.kgelu_settings()
        if self.schedule is not None:
            h["anneal_start_step"], h["target_lambda"] = self.schedule.start_step, self.schedule.target_lambda
        if self.site_targets is not None:
            h["target_lambdas"] = {short: _mean(self.site_targets[name]) for short, (name, _) in zip(self.short_names, self.sites)}
        if self.start_lambda is not None:
            h["anneal_start_lambda"] = {
                short: sum(self.start_lambda[name]) / len(self.start_lambda[name])
                for short, (name, _) in zip(self.short_names, self.sites)
            }

    def _record(self, state, stats: dict) -> None:
        steps = self.history["steps"]
        if steps and steps[-1]["step"] == state.global_step:
            return
        profile = {short: s["mean"] for short, s in stats.items()}
        entry = {
            "step": state.global_step,
            "epoch": state.epoch,
            "phase": "anneal" if self.start_lambda is not None and self.schedule is not None
            and state.global_step > self.schedule.start_step else "learn",
            "lambda": profile,
            "mean": sum(profile.values()) / len(profile),
        }
        if any(site.per_channel for _, site in self.sites):
            entry["lambda_min"] = {short: s["min"] for short, s in stats.items()}
            entry["lambda_max"] = {short: s["max"] for short, s in stats.items()}
        if steps and set(steps[-1]["lambda"]) == set(profile):
            entry["drift"] = hardness_drift(steps[-1]["lambda"], profile)
        steps.append(entry)

    def write_history(self, folder: str | os.PathLike) -> None:
        if self.history is not None:
            write_history(self.history, os.path.join(folder, HISTORY_FILENAME))

    def _save(self, args, state) -> None:
        if state.is_world_process_zero and args.output_dir:
            self.write_history(args.output_dir)

    # ---- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._reset_run()
        self.sites = _require_sites(model)
        self.short_names = short_site_names([name for name, _ in self.sites])
        anneal = getattr(args, "kgelu_anneal_start", None)
        if anneal is not None and state.max_steps >= 1:
            target = args.kgelu_resolved_target_lambda
            # Data-aware targets are chosen at the switch; until then λ* is only a placeholder.
            self.schedule = AnnealingSchedule.from_fraction(
                anneal, state.max_steps, 1.0 if target is None else target, getattr(args, "kgelu_anneal_shape", "linear")
            )

        step = state.global_step
        if step == 0:
            self.start_lambda = self.start_step = self.site_targets = None
            self.history = self._new_history(args, state)
        else:
            self._restore(state)
            self.history = self._load_history(args, state)

        if self.schedule is not None:
            if self.start_lambda is not None:
                # The switch happened before the checkpoint: continue the schedule it started.
                self.schedule = dataclasses.replace(self.schedule, start_step=self.start_step, max_steps=state.max_steps)
                if self.site_targets is not None:
                    self._use_site_targets()
                elif getattr(args, "kgelu_data_targets", False):
                    logger.warning("the checkpoint holds no data-aware targets: choosing them again from the current model")
                    self._choose_data_targets(args, model)
                self._freeze()
            elif step >= self.schedule.start_step:
                if step > 0:
                    logger.warning(
                        "resuming at step %d, past the anneal start %d, without the λ learned at the switch in the "
                        "checkpoint's trainer_state.json: annealing restarts from the current λ",
                        step,
                        self.schedule.start_step,
                    )
                    self.schedule = dataclasses.replace(self.schedule, start_step=step, max_steps=state.max_steps)
                self._record_switch(step, args, model)
        self._update_history_header(args, state)
        if step == 0:
            self._record(state, self.site_stats())
        self._save(args, state)

    def _restore(self, state) -> None:
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[-1] if stored else None
        attributes = (stored or {}).get("attributes", {})
        start_lambda = attributes.get("start_lambda")
        names = {name for name, _ in self.sites}
        if start_lambda is not None and set(start_lambda) != names:
            logger.warning("the checkpoint's anneal-start λ names other λ-GELU sites than the model has; ignoring it")
            start_lambda = None
        self.start_lambda = start_lambda
        self.start_step = attributes.get("start_step") if start_lambda is not None else None
        site_targets = attributes.get("site_targets") if start_lambda is not None else None
        if site_targets is not None and set(site_targets) != names:
            logger.warning("the checkpoint's data-aware targets name other λ-GELU sites than the model has; ignoring them")
            site_targets = None
        self.site_targets = site_targets

    def on_step_begin(self, args, state, control, **kwargs):
        # Set the λ this optimizer step trains with; between steps the model holds λ(global_step).
        if self.schedule is not None and self.start_lambda is not None:
            self._apply(state.global_step + 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if args.kgelu_log_every and step % args.kgelu_log_every == 0:
            control.should_log = True
        every = args.kgelu_log_every or max(1, int(state.logging_steps or 1))
        switch = self.schedule is not None and self.start_lambda is None and step >= self.schedule.start_step
        if switch:
            self._record_switch(step, args, model)
            self._update_history_header(args, state)
        if step % every == 0 or step >= state.max_steps or switch:
            self._record(state, self.site_stats())
            self._save(args, state)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.history is None:
            return
        profile = {short: s["mean"] for short, s in self.site_stats().items()}
        epochs = self.history["epochs"]
        entry = {"epoch": state.epoch, "step": state.global_step, "lambda": profile}
        if epochs and set(epochs[-1]["lambda"]) == set(profile):
            entry["drift"] = hardness_drift(epochs[-1]["lambda"], profile)
        epochs.append(entry)
        self._save(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        if self.history is None:
            return
        if self.schedule is not None:
            target = self.schedule.target_lambda
            off = [
                not torch.allclose(_site_lambda(site), torch.as_tensor(self._site_target(name), dtype=torch.float64).expand(site.theta.shape), rtol=1e-5, atol=0)
                for name, site in self.sites
            ]
            if self.start_lambda is None or any(off):  # stopped before the switch, or before the end
                logger.warning(
                    "training ended at step %d of %d with λ not at the annealing target λ* = %.6g (stopped early, or "
                    "load_best_model_at_end loaded an earlier checkpoint): the model is not yet as close to ReLU as "
                    "planned.",
                    state.global_step,
                    state.max_steps,
                    target,
                )
        for site in self.frozen_by_us:  # θ was frozen for the schedule only
            site.unfreeze()
        self.frozen_by_us = []
        self._save(args, state)


# ----------------------------------------------------------------------------------------------
# The trainer


def _keep_ddp_working_when_theta_freezes(model, args: KGeluTrainingArguments) -> None:
    """θ stops receiving gradients at the switch; DDP without unused-parameter detection then fails with
    "Expected to have finished reduction in the prior iteration". The Trainer turns detection off under
    activation checkpointing, so turn it back on there (unless the user decided)."""
    if args.kgelu_anneal_start is None or args.ddp_find_unused_parameters is not None:
        return
    checkpointing = any(getattr(args, name, False) for name in ("activation_checkpointing", "gradient_checkpointing"))
    checkpointing = checkpointing or any(
        getattr(model, name, False) for name in ("is_activation_checkpointing", "is_gradient_checkpointing")
    )
    if checkpointing:
        args.ddp_find_unused_parameters = True
        logger.info("ddp_find_unused_parameters=True: θ freezes at the anneal start and DDP must not wait for its gradient")


class KGeluTrainer(Trainer):
    """`Trainer` for λ-GELU models: θ optimizer group, annealing, hardness logging, exact resume.

    Takes the same arguments as `Trainer`; `args` must be `KGeluTrainingArguments`. The model
    (or the one `model_init` builds) must have λ-GELU sites.
    """

    def __init__(self, model=None, args: KGeluTrainingArguments | None = None, *positional, callbacks=None, **kwargs):
        if args is None:
            args = KGeluTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, KGeluTrainingArguments):
            raise TypeError(
                f"KGeluTrainer needs KGeluTrainingArguments (the kgelu_* settings), got {type(args).__name__}: "
                "build them as hf_kgelu.KGeluTrainingArguments(output_dir=..., ...), which accepts every TrainingArguments field"
            )
        if model is not None:
            prepare_hardness(model, args)
        _keep_ddp_working_when_theta_freezes(model, args)
        callbacks = list(callbacks or [])
        if not any(isinstance(cb, KGeluHardnessCallback) or cb is KGeluHardnessCallback for cb in callbacks):
            callbacks.append(KGeluHardnessCallback())
        from .distributed import KGeluDistributedCallback  # multi-process: float32 θ under FSDP2, θ-sync check

        if not any(isinstance(cb, KGeluDistributedCallback) or cb is KGeluDistributedCallback for cb in callbacks):
            callbacks.append(KGeluDistributedCallback())
        self._kgelu_resume_dir: str | None = None
        super().__init__(model, args, *positional, callbacks=callbacks, **kwargs)

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        prepare_hardness(model, self.args)
        if hasattr(self, "callback_handler"):  # train() rebuilds the model; callbacks must see the new one
            self.callback_handler.model = model
        return model

    @property
    def hardness_callback(self) -> KGeluHardnessCallback | None:
        """The callback that runs the schedule (looked up each time: resuming may replace it)."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, KGeluHardnessCallback)), None)

    # ---- optimizer
    def _theta_ids(self, model: nn.Module, trained_only: bool) -> set[int]:
        sites = trained_sites(model) if trained_only else find_sites(model)
        return {id(site.theta) for _, site in sites}

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The stock list without any θ: hardness is never weight-decayed."""
        theta_ids = self._theta_ids(model, trained_only=False)
        theta_names = {name for name, p in model.named_parameters() if id(p) in theta_ids}
        return [name for name in super().get_decay_parameter_names(model) if name not in theta_names]

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh:
            self._split_theta_group(optimizer, self.model if model is None else model)
        return optimizer

    def _split_theta_group(self, optimizer, model: nn.Module) -> None:
        """Move every θ out of the stock groups into one group with lr × η and weight decay 0."""
        param_groups = getattr(optimizer, "param_groups", None)
        theta_ids = self._theta_ids(model, trained_only=True)
        if not param_groups:
            return
        thetas, source = [], None
        for group in param_groups:
            moved = [p for p in group["params"] if id(p) in theta_ids]
            if moved:
                thetas += moved
                source = source or group
                group["params"] = [p for p in group["params"] if id(p) not in theta_ids]
        if not thetas:
            if any(site.theta.requires_grad for _, site in trained_sites(model)):
                logger.warning(
                    "%s does not expose θ in its parameter groups: θ trains with the optimizer's own settings "
                    "(no kgelu_lr_multiplier, possibly weight decay)",
                    type(optimizer).__name__,
                )
            return
        param_groups[:] = [g for g in param_groups if g["params"]]
        group = {key: value for key, value in source.items() if key != "params"}
        lr = source.get("lr")
        if lr is None:
            logger.warning("the optimizer's learning rate is not set per group: kgelu_lr_multiplier cannot apply")
        else:
            group["lr"] = lr * self.args.kgelu_lr_multiplier
        group["weight_decay"] = 0.0
        group["params"] = thetas
        optimizer.add_param_group(group)

    # ---- logging, checkpoints, resume
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        callback = self.hardness_callback
        if "loss" in logs and callback is not None:  # training logs only, not evaluation results
            logs.update(callback.log_values(self.state.global_step))
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if isinstance(path, bool):
            path = get_last_checkpoint(self.args.output_dir) if path else None
        self._kgelu_resume_dir = os.fspath(path) if path is not None else None
        callback = self.hardness_callback
        if callback is not None:
            callback.resume_dir = self._kgelu_resume_dir
            callback.data_forward = self._kgelu_data_forward
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _load_callback_state(self) -> None:
        super()._load_callback_state()
        callback = self.hardness_callback  # a new instance when restore_callback_states_from_checkpoint=True
        if callback is not None:
            callback.resume_dir = self._kgelu_resume_dir
            callback.data_forward = self._kgelu_data_forward

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        callback = self.hardness_callback
        if callback is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if os.path.isdir(folder):
                callback.write_history(folder)

    # ---- data-aware targets
    def _kgelu_data_forward(self, model: nn.Module) -> None:
        """Run `kgelu_data_batches` training batches through `model` (for `kgelu_bound="data"`).

        The examples are a fixed random subset (seeded by `args.seed`, drawn from a private generator so
        the training order is untouched), batched by the trainer's collator, and the same on every
        process (not sharded), so every rank chooses the same targets."""
        args = self.args
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("kgelu_bound='data' needs a train_dataset: the targets come from a few of its batches")
        batch_size = args.per_device_train_batch_size
        wanted = args.kgelu_data_batches * batch_size
        if isinstance(dataset, torch.utils.data.IterableDataset):
            examples = list(itertools.islice(iter(dataset), wanted))
        else:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[:wanted]
            examples = [dataset[int(i)] for i in order]
        if not examples:
            raise ValueError("kgelu_bound='data': the train_dataset is empty")
        collator = self._get_collator_with_removed_columns(self.data_collator, "kgelu data-aware targets")
        for start in range(0, len(examples), batch_size):
            inputs = self._prepare_inputs(collator(examples[start : start + batch_size]))
            with self.accelerator.autocast():
                model(**inputs)

    # ---- substitution
    def evaluate_substitution(self, eval_dataset=None, task: str | None = None, gelu_baseline: nn.Module | None = None):
        """The eval metric of the current model (after `train()` with `load_best_model_at_end`: the best
        one) with its λ-GELU activations and after swapping every λ-GELU for ReLU, on copies: the trained
        model is not touched. A PEFT model is merged on a copy first.

        Returns `hf_kgelu.relu.SubstitutionReport` (accuracy for classification, perplexity for language
        models, computed offline; `.as_markdown()`, `.to_dict()`). `eval_dataset` defaults to the
        trainer's; it is batched by the trainer's own collator, as `evaluate()` sees it.
        """
        from .relu import substitution_report

        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if data is None:
            raise ValueError("evaluate_substitution needs an eval_dataset (pass one, or give the trainer eval_dataset=...)")
        if isinstance(data, dict) and not any(key in data for key in ("input_ids", "pixel_values")):
            raise ValueError("evaluate_substitution takes one evaluation dataset, not a dict of several: pick one")
        model = self.model
        _require_sites(model)
        if hasattr(model, "merge_and_unload"):  # PEFT: relu_ize needs the adapters merged
            model = copy.deepcopy(model).merge_and_unload()
        if not isinstance(data, dict):
            data = self.get_eval_dataloader(data)
        return substitution_report(model, data, gelu_baseline=gelu_baseline, task=task)
