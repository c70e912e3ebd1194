"""`KGeluTrainingArguments`: `TrainingArguments` plus the λ-GELU settings, validated in `__post_init__`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional, Union

from transformers import TrainingArguments

from ..hardness import (
    BOUNDS,
    DEFAULT_LAMBDA_INIT,
    DEFAULT_LAMBDA_RANGE,
    INIT_MODES,
    is_finite_number,
    target_lambda,
)
from .schedule import SHAPES, check_anneal_start
from .theta_sync import THETA_SYNC_MODES

REINIT_MODES = ("auto", "always", "never")
DATA_BOUND = "data"  # per-site targets from the sites' real pre-activations (hf_kgelu.training.data_aware)


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

    kgelu_theta_sync: str = field(
        default="auto",
        metadata={"help": "where θ is synchronised over processes: auto (outside the engine under DDP and FSDP2: "
                          "θ float32 and whole on every rank, one all-reduce of all θ gradients per step; inside "
                          "DeepSpeed's optimizer, in its own group), outside, or engine (θ reduced by DDP's buckets, "
                          "or one float32 FSDP2 unit per site: the previous behaviour)"},
    )

    def __post_init__(self):
        self._validate_kgelu()  # before the (slower) stock checks, so a bad value fails first
        super().__post_init__()

    def _validate_kgelu(self) -> None:
        if self.kgelu_tau is not None and (not is_finite_number(self.kgelu_tau) or self.kgelu_tau <= 0):
            raise ValueError(f"kgelu_tau must be a finite number > 0 (the temperature τ), got {self.kgelu_tau!r}")
        if not is_finite_number(self.kgelu_lr_multiplier) or self.kgelu_lr_multiplier < 0:
            raise ValueError(f"kgelu_lr_multiplier (η) must be a finite number ≥ 0, got {self.kgelu_lr_multiplier!r}")
        if self.kgelu_init is not None and self.kgelu_init not in INIT_MODES:
            raise ValueError(f"kgelu_init must be one of {', '.join(INIT_MODES)} (or None), got {self.kgelu_init!r}")
        if self.kgelu_lambda_init is not None and (not is_finite_number(self.kgelu_lambda_init) or self.kgelu_lambda_init < 1):
            raise ValueError(f"kgelu_lambda_init must be a finite λ ≥ 1, got {self.kgelu_lambda_init!r}")
        if self.kgelu_lambda_range is not None:
            value = self.kgelu_lambda_range
            if isinstance(value, str):  # "1.05,2.0" from a JSON/YAML config
                try:
                    value = [float(v) for v in value.replace(",", " ").split()]
                except ValueError:
                    raise ValueError(f"kgelu_lambda_range must be two numbers LOW HIGH, got {self.kgelu_lambda_range!r}") from None
            value = list(value)
            if len(value) != 2 or not all(is_finite_number(v) for v in value) or not 1 <= value[0] <= value[1]:
                raise ValueError(f"kgelu_lambda_range must be two numbers 1 ≤ LOW ≤ HIGH, got {self.kgelu_lambda_range!r}")
            self.kgelu_lambda_range = [float(v) for v in value]
        if self.kgelu_per_channel is not None and not isinstance(self.kgelu_per_channel, bool):
            raise ValueError(f"kgelu_per_channel must be True, False or None, got {self.kgelu_per_channel!r}")
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
        if not is_finite_number(self.kgelu_tolerance) or self.kgelu_tolerance <= 0:
            raise ValueError(f"kgelu_tolerance (ε) must be a finite number > 0, got {self.kgelu_tolerance!r}")
        if self.kgelu_bound not in (*BOUNDS, DATA_BOUND):
            raise ValueError(f"kgelu_bound must be one of {', '.join((*BOUNDS, DATA_BOUND))}, got {self.kgelu_bound!r}")
        if isinstance(self.kgelu_data_batches, bool) or not isinstance(self.kgelu_data_batches, int) or self.kgelu_data_batches < 1:
            raise ValueError(f"kgelu_data_batches must be a positive number of batches, got {self.kgelu_data_batches!r}")
        if self.kgelu_target_lambda is not None and (not is_finite_number(self.kgelu_target_lambda) or self.kgelu_target_lambda < 1):
            raise ValueError(
                f"kgelu_target_lambda (λ*) must be a finite number ≥ 1 (λ = 1 is GELU), got {self.kgelu_target_lambda!r}"
            )
        if self.kgelu_theta_sync not in THETA_SYNC_MODES:
            raise ValueError(f"kgelu_theta_sync must be one of {', '.join(THETA_SYNC_MODES)}, got {self.kgelu_theta_sync!r}")
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
