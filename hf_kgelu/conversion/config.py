"""`ConversionConfig`: how a pretrained GELU model becomes a ReLU model, validated when it is made."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from ..hardness import BOUNDS, check_lambda
from ..training.arguments import DATA_BOUND
from ..training.schedule import SHAPES, check_anneal_start

METHODS = ("readout_finetune", "readout", "anneal", "swap_finetune", "swap")
TRAINED_METHODS = ("readout_finetune", "anneal", "swap_finetune")
TASKS = ("classification", "causal_lm", "masked_lm", "embedding")
EMBEDDING_TASK = "embedding"


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")


def _finite(name: str, value, low: float = 0.0, low_open: bool = True) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if low_open else '≥'} {low:g}, got {value!r}")


@dataclass
class ConversionConfig:
    """The recipe of `convert_gelu_to_relu` (see `hf_kgelu.conversion.recipe` for what each method does).

    method: readout_finetune (default: the benchmark's best), readout (no training), anneal (the
        paper's λ-GELU annealing, then relu_ize), swap_finetune, swap (neither fit nor training).
    steps: optimizer steps of the fine-tune (the trained methods need it; the others ignore it).
    learning_rate, batch_size, seed: of the fine-tune (peak learning rate, linear decay).
        learning_rate=None chooses it from the checkpoint: 0.3 × the peak rate its own training
        recorded (training_args.bin, trainer_state.json), else 2e-5 (`hf_kgelu.conversion.defaults`).
    calibration_batches: batches of the training data the readout fit uses; None draws batches
        until each readout has 8 rows per unknown of its least-squares fit (or the data ends).
    keep_better: after a fine-tune, measure the readout fit alone and the fine-tuned model on
        held-out data (the caller's evaluation data, else `held_out_fraction` of the training rows,
        at most 512, which then neither calibrate nor train) and return the better one.
        False trains on all the data and returns the fine-tuned model, as before.
    distill: add distillation from the original model to the task loss; None distils exactly
        where there is no task loss (encoders without a task head). distill_alpha mixes it with
        the task loss; distill_temperature softens both distributions.
    anneal_start, anneal_shape, bound, tolerance, target_lambda: the anneal method's schedule
        (as `KGeluTrainingArguments`' kgelu_* fields; geometric from step 0 by default).
    disable_dropout: a conversion fine-tune of a few steps is a calibration; dropout only adds noise.
    task: classification, causal_lm, masked_lm or embedding; None reads it from the model.
    """

    method: str = "readout_finetune"
    steps: int | None = None
    learning_rate: float | None = None
    batch_size: int = 16
    seed: int = 0
    calibration_batches: int | None = None
    keep_better: bool = True
    held_out_fraction: float = 0.1
    distill: bool | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 1.0
    anneal_start: float = 0.0
    anneal_shape: str = "geometric"
    bound: str = "gate_l1"
    tolerance: float = 0.005
    target_lambda: float | None = None
    disable_dropout: bool = True
    task: str | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown conversion method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.trains:
            if self.steps is None:
                raise ValueError(f"method {self.method!r} fine-tunes: give steps (a positive number of optimizer steps)")
            _positive_int("steps", self.steps)
        if self.learning_rate is not None:
            _finite("learning_rate", self.learning_rate)
        _positive_int("batch_size", self.batch_size)
        if self.calibration_batches is not None:
            _positive_int("calibration_batches", self.calibration_batches)
        if not isinstance(self.keep_better, bool):
            raise ValueError(f"keep_better must be True or False, got {self.keep_better!r}")
        _finite("held_out_fraction", self.held_out_fraction)
        if self.held_out_fraction >= 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be a whole number, got {self.seed!r}")
        if self.distill is not None and not isinstance(self.distill, bool):
            raise ValueError(f"distill must be True, False or None (automatic), got {self.distill!r}")
        _finite("distill_alpha", self.distill_alpha, 0.0, low_open=False)
        if self.distill_alpha > 1:
            raise ValueError(f"distill_alpha must be in [0, 1], got {self.distill_alpha!r}")
        _finite("distill_temperature", self.distill_temperature)
        check_anneal_start(self.anneal_start)
        if self.anneal_shape not in SHAPES:
            raise ValueError(f"anneal_shape must be one of {', '.join(SHAPES)}, got {self.anneal_shape!r}")
        if self.bound not in (*BOUNDS, DATA_BOUND):
            raise ValueError(f"bound must be one of {', '.join((*BOUNDS, DATA_BOUND))}, got {self.bound!r}")
        _finite("tolerance", self.tolerance)
        if self.target_lambda is not None:
            check_lambda(self.target_lambda, "target_lambda (λ*)")
        if self.task is not None and self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)} (or None: read from the model), got {self.task!r}")

    @property
    def trains(self) -> bool:
        return self.method in TRAINED_METHODS

    def to_dict(self) -> dict:
        return asdict(self)


def steps_from_budget(budget: str | float | int, checkpoint: str | os.PathLike | None) -> int:
    """Optimizer steps from a budget: an integer ≥ 1 is a number of steps; a fraction in (0, 1) (or
    "3%") is that share of the checkpoint's own training steps (`global_step` in its trainer_state.json)."""
    text = str(budget).strip()
    percent = text.endswith("%")
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"--budget must be a number of steps (200), a fraction (0.03) or a percentage (3%), got {budget!r}")
    if percent:
        value /= 100.0
        if not 0 < value < 1:
            raise ValueError(f"--budget {budget!r}: a percentage of the checkpoint's training steps must be above 0% and below 100%")
    elif value >= 1:
        if value != int(value):
            raise ValueError(f"--budget {budget!r}: a number of steps must be a whole number")
        return int(value)
    elif value <= 0:
        raise ValueError(f"--budget must be > 0, got {budget!r}")
    state = Path(checkpoint or "") / "trainer_state.json"
    if not state.is_file():
        raise ValueError(
            f"--budget {budget} is a share of the checkpoint's training steps, but {state} does not exist: "
            "give the budget as a number of optimizer steps instead (e.g. --budget 200)"
        )
    try:
        pretrain_steps = json.loads(state.read_text()).get("global_step") or 0
    except (ValueError, AttributeError) as error:  # not JSON, or not a JSON object
        reason = " ".join(str(error).split())
        raise ValueError(f"{state} is not a readable trainer state ({reason}): give --budget as a number of steps") from None
    if not isinstance(pretrain_steps, int) or pretrain_steps < 1:
        raise ValueError(f"{state} records no training steps (global_step); give --budget as a number of steps")
    return max(1, math.ceil(value * pretrain_steps))
