"""The shared flow of the scripts, the demo and the reproduction: one call from a model and data
to a trained model, its numbers, and (for λ-GELU) a ReLU model with its card.

`run_pipeline(model, args, train_dataset, eval_dataset, ...)`:

1. trains with `KGeluTrainer` when the model has λ-GELU sites (the λ schedule, logging and
   `hardness_history.json` come from it), otherwise with the stock `Trainer`, evaluating every
   `eval_strategy` step with accuracy (classification) or perplexity (causal LM);
2. reads the paper's Table I quantities: best validation score and its epoch, the learned
   layerwise λ (at the anneal switch, or at the end when λ is learned throughout), its mean,
   and the hardness drift D between epochs of the learning phase;
3. runs the substitution test (Table II): the metric before and after swapping every λ-GELU
   for ReLU (`substitution_report`), with a trained GELU baseline's direct swap when given;
   for a GELU model, its own direct swap;
4. with `relu_output_dir`: `relu_ize` and save the ReLU folder (weights, config, processor,
   λ plot, model card) with `save_relu_model`; with `push_to_hub`: upload that folder — never
   the λ-GELU checkpoints (the Trainer's own `push_to_hub` is turned off here);
5. writes `report.md`, `results.json` and the λ-trajectory PNG into `args.output_dir`.

Steps 2–5 run on the main process only; the others wait for it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from .hardness import hardness_profile
from .metrics import IGNORE_INDEX, MODEL_INPUT_KEYS, accuracy, evaluate_model, infer_task, iter_batches, perplexity
from .modules import find_sites
from .registry import GELU_NAMES, KGELU_NAME, activation_config_keys, kgelu_config, renamed_activation
from .relu import gelu_module_classes, relu_ize, substitution_report

logger = logging.getLogger(__name__)

ACTIVATIONS = ("gelu", "relu", "kgelu")
REPORT_FILENAME = "report.md"
RESULTS_FILENAME = "results.json"
PLOT_FILENAME = "hardness.png"
RELU_DIRNAME = "relu_model"


# ----------------------------------------------------------------------------------------------
# Script arguments


@dataclass
class PipelineArguments:
    """The command-line options every script shares (read with `HfArgumentParser` beside
    `KGeluTrainingArguments`, whose `--push_to_hub`/`--hub_model_id`/`--hub_token`/
    `--hub_private_repo` here publish the ReLU model, never the λ-GELU checkpoints)."""

    activation: str = field(default="kgelu", metadata={"help": "activation to train with: gelu, relu or kgelu"})
    relu_ize_at_end: bool = field(
        default=False,
        metadata={"help": "after training, swap the activations for ReLU and save that model (with its card and the "
                          "substitution report) in relu_output_dir; a GELU model gets the direct swap"},
    )
    relu_output_dir: str | None = field(default=None, metadata={"help": "where the ReLU model goes (default: OUTPUT_DIR/relu_model)"})
    overwrite_relu_output: bool = field(default=False, metadata={"help": "replace an existing non-empty relu_output_dir"})
    substitution: bool = field(default=True, metadata={"help": "measure the metric before/after the ReLU swap on the eval set"})

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    def relu_dir(self, output_dir: str, push_to_hub: bool) -> str | None:
        if self.relu_output_dir:
            return self.relu_output_dir
        return os.path.join(output_dir, RELU_DIRNAME) if self.relu_ize_at_end or push_to_hub else None


@dataclass
class ConversionArguments:
    """`--convert_from_gelu METHOD` of run_clm.py and run_image_classification.py (`run_conversion`)."""

    convert_from_gelu: str | None = field(
        default=None,
        metadata={"help": "instead of training: convert the GELU checkpoint --model_name_or_path into a ReLU model with this "
                          "recipe (readout_finetune, the best; readout; anneal; swap_finetune; swap) on the training data, for "
                          "--max_steps (or --num_train_epochs) optimizer steps, and save it in relu_output_dir (--activation is "
                          "not used; see hf-kgelu convert)"},
    )
    convert_calibration_batches: int = field(default=8, metadata={"help": "--convert_from_gelu readout*: batches for the readout fit"})
    convert_distill: bool = field(
        default=False, metadata={"help": "--convert_from_gelu: add distillation from the GELU original to the task loss"}
    )

    def __post_init__(self):
        if self.convert_from_gelu is not None:
            from .convert import METHODS

            if self.convert_from_gelu not in METHODS:
                raise ValueError(f"--convert_from_gelu must be one of {', '.join(METHODS)}, got {self.convert_from_gelu!r}")


def parse_script_arguments(*dataclass_types, args: Sequence[str] | None = None):
    """`HfArgumentParser` over `dataclass_types` + `PipelineArguments` + `KGeluTrainingArguments`;
    a single `.json`/`.yaml` argument is read as a file of all arguments (the transformers way)."""
    from transformers import HfArgumentParser

    from .trainer import KGeluTrainingArguments

    parser = HfArgumentParser((*dataclass_types, PipelineArguments, KGeluTrainingArguments))
    argv = list(sys.argv[1:] if args is None else args)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def print_summary(result: PipelineResult) -> None:
    """The few lines a script ends with: where the report is, the scores, the ReLU model."""
    lines = [f"best val {result.metric}: {_fmt(result.best_score)} (epoch {_fmt(result.best_epoch, 2)}), final {_fmt(result.final_score)}"]
    if result.mean_lambda is not None:
        lines.append(f"mean learned λ: {result.mean_lambda:.4f}" + (f", annealed to λ* = {result.target_lambda:.4g}" if result.annealed else ""))
    if result.substitution:
        s = result.substitution
        lines.append(f"{result.metric} before → after the ReLU swap: {_fmt(s['before'])} → {_fmt(s['after'])}")
    if result.relu_dir:
        lines.append(f"ReLU model: {result.relu_dir}" + (f" (pushed to {result.hub_url})" if result.hub_url else ""))
    if result.report_path:
        lines.append(f"report: {result.report_path}")
    print("\n".join(lines), flush=True)


# ----------------------------------------------------------------------------------------------
# Activations


def with_activation(config, activation: str, **kgelu_settings):
    """A copy of `config` whose activation keys build `activation` ("gelu", "relu" or "kgelu").

    Every key naming a GELU-family activation, "kgelu" or "relu" is rewritten; for "kgelu" the
    config also records `kgelu_settings` (init, lambda_init, lambda_range, tau, per_channel: see
    `kgelu_config`)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    names = (*GELU_NAMES, KGELU_NAME, "relu")
    keys = activation_config_keys(config, names)
    if not keys:
        raise ValueError(
            f"{type(config).__name__} has no activation key naming GELU, λ-GELU or ReLU (e.g. hidden_act, "
            "activation_function): cannot switch its activation"
        )
    if activation == KGELU_NAME:
        config = copy.deepcopy(config)
        for key in keys:  # kgelu_config converts GELU-family keys only
            setattr(config, key, renamed_activation(getattr(config, key), "gelu"))
        return kgelu_config(config, **kgelu_settings)
    config = copy.deepcopy(config)
    for key in keys:
        setattr(config, key, renamed_activation(getattr(config, key), activation))
    for key in [k for k in vars(config) if k.startswith("kgelu_")]:
        delattr(config, key)
    return config


def activation_of(model: nn.Module) -> str:
    """"kgelu" when the model has λ-GELU sites, else "gelu" when it has GELU modules, else "relu"."""
    if find_sites(model):
        return KGELU_NAME
    if any(isinstance(m, gelu_module_classes()) for m in model.modules()):
        return "gelu"
    return "relu"


# ----------------------------------------------------------------------------------------------
# Metrics inside the Trainer's evaluation loop (gathered across processes by the Trainer)


def _argmax_logits(logits, labels):
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits.argmax(-1)


def _accuracy_metrics(eval_pred) -> dict[str, float]:
    return {"accuracy": accuracy(torch.as_tensor(eval_pred.predictions), torch.as_tensor(eval_pred.label_ids))}


def _token_nll(logits, labels):
    """Per sequence: [sum of next-token NLL, number of scored tokens], so the perplexity over the
    whole evaluation set is exact (not a mean of batch means)."""
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    logits, labels = logits[..., :-1, :].float(), labels[..., 1:]
    nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return torch.stack([nll.sum(-1), (labels != IGNORE_INDEX).sum(-1).to(nll.dtype)], dim=-1)


def _perplexity_metrics(eval_pred) -> dict[str, float]:
    sums = torch.as_tensor(eval_pred.predictions).reshape(-1, 2).double().sum(0)
    loss = float(sums[0] / sums[1].clamp_min(1))
    return {"perplexity": perplexity(loss), "token_loss": loss}


def trainer_metrics(task: str) -> tuple[dict, str, bool]:
    """(Trainer kwargs computing the task's metric, the metric name, whether higher is better)."""
    if task == "classification":
        return {"compute_metrics": _accuracy_metrics, "preprocess_logits_for_metrics": _argmax_logits}, "accuracy", True
    if task == "causal_lm":
        return {"compute_metrics": _perplexity_metrics, "preprocess_logits_for_metrics": _token_nll}, "perplexity", False
    raise ValueError(f"the pipeline handles classification and causal_lm, not {task!r}")


# ----------------------------------------------------------------------------------------------
# Progress


class EpochProgress(TrainerCallback):
    """A Trainer callback printing one line per evaluation: epoch, eval metric, mean λ, elapsed time.

    Used instead of the Trainer's per-log dicts (`run_pipeline(..., log_lines=False)`) where a
    compact record of the run reads better (the demo, the reproduction)."""

    def __init__(self, label: str, metric: str, stream=None):
        self.label, self.metric, self.stream = label, metric, stream
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        value = (metrics or {}).get(f"eval_{self.metric}")
        lam = ""
        if model is not None and find_sites(model):
            profile = hardness_profile(model)
            lam = f"  mean λ {sum(profile.values()) / len(profile):8.3f}"
        total = int(state.num_train_epochs) if state.num_train_epochs else "?"
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        shown = f"{value:.4f}" if value is not None else "–"
        print(f"  [{self.label}] epoch {state.epoch:5.2f}/{total}  val {self.metric} {shown}{lam}  ({elapsed:.0f} s)",
              file=self.stream or sys.stdout, flush=True)


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class PipelineResult:
    """What one run produced. Scores are on the evaluation set; λ profiles are {site: mean λ}."""

    name: str
    activation: str
    task: str
    metric: str
    higher_is_better: bool
    output_dir: str
    eval_history: list[tuple[float, float]] = field(default_factory=list)  # (epoch, score) per evaluation
    best_score: float | None = None
    best_epoch: float | None = None
    final_score: float | None = None
    lambda_learned: dict[str, float] | None = None  # at the anneal switch, or the end without annealing
    lambda_final: dict[str, float] | None = None
    annealed: bool = False
    target_lambda: float | None = None
    drift: float | None = None  # mean epoch-to-epoch D over the learning phase
    drift_per_epoch: list[float] = field(default_factory=list)
    substitution: dict[str, float | None] | None = None  # before/after (and gelu_before/gelu_after)
    relu_dir: str | None = None
    hub_url: str | None = None
    report_path: str | None = None
    plot_path: str | None = None
    train_seconds: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_lambda(self) -> float | None:
        if not self.lambda_learned:
            return None
        return sum(self.lambda_learned.values()) / len(self.lambda_learned)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_lambda"] = self.mean_lambda
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineResult:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["eval_history"] = [tuple(x) for x in values.get("eval_history", [])]
        return cls(**values)


def _eval_history(log_history: Sequence[Mapping], metric: str) -> list[tuple[float, float]]:
    key = f"eval_{metric}"
    return [(float(entry.get("epoch", 0.0)), float(entry[key])) for entry in log_history if key in entry]


def best_of(history: Sequence[tuple[float, float]], higher_is_better: bool) -> tuple[float | None, float | None]:
    """(best score, epoch of its first occurrence)."""
    if not history:
        return None, None
    best = max(history, key=lambda e: e[1]) if higher_is_better else min(history, key=lambda e: e[1])
    return best[1], best[0]


def _hardness_numbers(output_dir: str, sites_now: dict[str, float]) -> dict[str, Any]:
    """Learned profile, anneal info and learning-phase drift from the trainer's hardness history."""
    from .history import read_history

    try:
        history = read_history(output_dir)
    except (FileNotFoundError, ValueError) as error:
        logger.warning("no usable hardness history in %s (%s): λ numbers come from the final model only", output_dir, error)
        return {"lambda_learned": sites_now, "annealed": False, "target_lambda": None, "drift": None, "drift_per_epoch": []}
    full_to_short = {full: short for short, full in history.get("sites", {}).items()}
    start_step = history.get("anneal_start_step")
    start_lambda = history.get("anneal_start_lambda")
    if start_lambda:
        learned = {k: float(sum(v) / len(v)) if isinstance(v, list) else float(v) for k, v in start_lambda.items()}
        learned = {full_to_short.get(k, k): v for k, v in learned.items()}
    else:
        learned = {full_to_short.get(k, k): v for k, v in sites_now.items()}
    drifts = [
        float(e["drift"]) for e in history.get("epochs", [])
        if "drift" in e and (start_step is None or not start_lambda or e["step"] <= start_step)
    ]
    return {
        "lambda_learned": learned,
        "annealed": bool(start_lambda),
        "target_lambda": history.get("target_lambda"),
        "drift": sum(drifts) / len(drifts) if drifts else None,
        "drift_per_epoch": drifts,
    }


@torch.no_grad()
def classification_loss(model: nn.Module, data, batch_size: int = 64) -> float:
    """Mean cross-entropy over the evaluation set: a finer view of a swap than accuracy, which
    moves only when a prediction flips."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in iter_batches(data, batch_size):
            inputs = {k: torch.as_tensor(v).to(device) for k, v in batch.items() if k in MODEL_INPUT_KEYS}
            labels = torch.as_tensor(batch.get("labels", batch.get("label"))).to(device)
            logits = model(**inputs).logits.float()
            total += float(F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX, reduction="sum"))
            count += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _short_profile(model: nn.Module) -> dict[str, float]:
    from .trainer import short_site_names

    profile = hardness_profile(model)
    return dict(zip(short_site_names(list(profile)), profile.values()))


# ----------------------------------------------------------------------------------------------
# Report


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def render_report(result: PipelineResult, *, title: str | None = None, command: str | None = None) -> str:
    """report.md of one run: the Table I row, the substitution (Table II) row, the λ profile."""
    lines = [f"# {title or result.name}", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    lines += [
        f"Activation **{result.activation}**, task {result.task}, metric {result.metric} "
        f"({'higher' if result.higher_is_better else 'lower'} is better), output `{result.output_dir}`.",
        "",
        "## Training (Table I row)",
        "",
        f"| activation | best val {result.metric} | epoch | final {result.metric} | mean λ (learned) | drift D |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {result.activation} | {_fmt(result.best_score)} | {_fmt(result.best_epoch, 1)} | {_fmt(result.final_score)} "
        f"| {_fmt(result.mean_lambda, 3)} | {_fmt(result.drift, 4)} |",
        "",
    ]
    if result.annealed:
        lines += [f"λ was learned, then annealed to λ* = {_fmt(result.target_lambda, 2)} (the learned λ is the one at the switch).", ""]
    if result.substitution:
        s = result.substitution
        lines += ["## ReLU substitution (Table II row)", "", f"| model | {result.metric} before | after ReLU swap | change |", "|---|---:|---:|---:|"]
        has_loss = s.get("loss_before") is not None
        if has_loss:
            lines[-2] += " val loss before | after | change |"
            lines[-1] += "---:|---:|---:|"

        def row(label, before, after, loss_before=None, loss_after=None):
            text = f"| {label} | {_fmt(before)} | {_fmt(after)} | {after - before:+.4f} |"
            if has_loss:
                text += (f" {_fmt(loss_before)} | {_fmt(loss_after)} | {loss_after - loss_before:+.4f} |"
                         if loss_before is not None else " – | – | – |")
            return text

        if s.get("before") is not None:
            label = "λ-GELU (annealed) → ReLU" if result.activation == KGELU_NAME else "GELU → ReLU (direct swap)"
            lines.append(row(label, s["before"], s["after"], s.get("loss_before"), s.get("loss_after")))
        if s.get("gelu_before") is not None and result.activation == KGELU_NAME:
            lines.append(row("GELU baseline → ReLU (direct swap)", s["gelu_before"], s["gelu_after"],
                             s.get("gelu_loss_before"), s.get("gelu_loss_after")))
        lines.append("")
    if result.lambda_learned:
        lines += ["## Learned λ per layer", "", "| site | λ learned | λ final |", "|---|---:|---:|"]
        final = result.lambda_final or {}
        lines += [f"| `{k}` | {v:.4f} | {_fmt(final.get(k), 4)} |" for k, v in result.lambda_learned.items()]
        lines.append("")
    if result.plot_path:
        lines += [f"![λ per layer over training]({os.path.relpath(result.plot_path, result.output_dir)})", ""]
    if result.relu_dir:
        lines += [f"ReLU model: `{result.relu_dir}`" + (f" (pushed: {result.hub_url})" if result.hub_url else ""), ""]
    if result.eval_history:
        lines += ["## Evaluations", "", f"| epoch | {result.metric} |", "|---:|---:|"]
        lines += [f"| {epoch:.2f} | {score:.4f} |" for epoch, score in result.eval_history]
        lines.append("")
    return "\n".join(lines)


def _plot(output_dir: str) -> str | None:
    try:
        from .plotting import plot_hardness
    except ImportError as error:
        logger.warning("no λ plot: %s", error)
        return None
    path = os.path.join(output_dir, PLOT_FILENAME)
    try:
        plot_hardness(output_dir, path)
    except Exception as error:  # a plot is a convenience: never lose a finished run over it
        logger.warning("could not draw the λ plot into %s: %s: %s", path, type(error).__name__, error)
        return None
    return path


# ----------------------------------------------------------------------------------------------
# The flow


def _custom_code_note(folder: Path, config) -> None:
    """A model type that transformers does not ship loads with trust_remote_code=True (the folder
    carries its code); say so in the card instead of promising a stock load."""
    auto_map = getattr(config, "auto_map", None)
    readme = folder / "README.md"
    if not auto_map or not readme.is_file():
        return
    auto_class = next((k for k in auto_map if k.startswith("AutoModelFor")), "AutoModel")
    note = (
        f"\n> **Custom architecture** (`{config.model_type}`): transformers does not ship this model class. "
        "The folder carries its code (no λ-GELU, only torch and transformers), so load it with\n"
        f"> `{auto_class}.from_pretrained(path_or_repo, trust_remote_code=True)`, or `import hf_kgelu` first "
        "and load it without `trust_remote_code`.\n"
    )
    text = readme.read_text(encoding="utf-8")
    text = text.replace("the model loads in stock 🤗 Transformers, no extra package.", "see the note on loading below.")
    # The card's loading snippet names an Auto class; make it the one auto_map provides, with remote code.
    snippet = re.search(r"```python\n.*?```", text, flags=re.S)
    if snippet:
        code = re.sub(r"\bAutoModel\w*", auto_class, snippet.group(0))
        code = re.sub(r'from_pretrained\(("[^"]*")\)', r"from_pretrained(\1, trust_remote_code=True)", code)
        text = text[: snippet.start()] + code + text[snippet.end():]
    marker = "\n## How it was made"
    text = text.replace(marker, note + marker, 1) if marker in text else text + note
    readme.write_text(text, encoding="utf-8")


def _training_settings(args) -> dict[str, Any]:
    settings = {"seed": args.seed, "learning_rate": args.learning_rate, "epochs": args.num_train_epochs, "max_steps": args.max_steps,
                "batch_size": args.per_device_train_batch_size}
    if hasattr(args, "kgelu_settings"):
        settings.update(args.kgelu_settings())
    return settings


def _card_training(args) -> dict[str, Any]:
    if not hasattr(args, "kgelu_lr_multiplier"):
        return {}
    annealed = args.kgelu_anneal_start is not None
    return {
        "eta": args.kgelu_lr_multiplier,
        "anneal_start": args.kgelu_anneal_start if annealed else "none (λ learned throughout)",
        "tolerance": args.kgelu_tolerance if annealed and args.kgelu_target_lambda is None else None,
        "bound": args.kgelu_bound if annealed else None,
        "target_lambda": args.kgelu_resolved_target_lambda if annealed else None,
    }


def run_pipeline(
    model: nn.Module,
    args,
    train_dataset,
    eval_dataset,
    *,
    task: str | None = None,
    name: str | None = None,
    data_collator=None,
    processing_class=None,
    gelu_baseline: nn.Module | None = None,
    substitution: bool = True,
    relu_output_dir: str | os.PathLike | None = None,
    overwrite_relu_output: bool = True,
    push_to_hub: bool | None = None,
    resume_from_checkpoint: str | bool | None = None,
    callbacks: Sequence | None = None,
    dataset_name: str | None = None,
    base_model: str | None = None,
    command: str | None = None,
    write_report: bool = True,
    save_model: bool = True,
    log_lines: bool = True,
) -> PipelineResult:
    """Train `model`, measure it, and (optionally) turn it into a saved/pushed ReLU model.

    `args` are `KGeluTrainingArguments` (plain `TrainingArguments` do for GELU/ReLU models).
    `gelu_baseline`: a trained GELU twin whose direct swap the substitution test also reports.
    `relu_output_dir`: where the ReLU folder goes (with a λ-GELU model: its `relu_ize`; with a
    GELU model: its direct swap; a ReLU model has nothing to swap). `push_to_hub` (default:
    `args.push_to_hub`) uploads that folder to `args.hub_model_id` with `args.hub_token` /
    `args.hub_private_repo`. `log_lines=False` drops the Trainer's printed log dicts (progress
    bar or `PrinterCallback`); pass an `EpochProgress` in `callbacks` for one line per epoch.
    Returns a `PipelineResult` (also written to results.json).
    """
    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    from .trainer import KGeluTrainer, KGeluTrainingArguments

    task = task or infer_task(model)
    activation = activation_of(model)
    metric_kwargs, metric, higher_is_better = trainer_metrics(task)
    push = bool(args.push_to_hub if push_to_hub is None else push_to_hub)
    if push and not args.hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id (--hub_model_id NAMESPACE/NAME): the repo the ReLU model goes to")
    if push and relu_output_dir is None:
        relu_output_dir = os.path.join(args.output_dir, RELU_DIRNAME)
    hub_token = args.hub_token
    args = copy.copy(args)
    args.push_to_hub = False  # the λ-GELU checkpoints stay local; only the ReLU model is published
    args.hub_token = None  # the Trainer pickles its args into every checkpoint: keep the token out

    if activation == KGELU_NAME:
        if not isinstance(args, KGeluTrainingArguments):
            raise TypeError("a λ-GELU model trains with hf_kgelu.KGeluTrainingArguments (the kgelu_* settings), got "
                            f"{type(args).__name__}")
        trainer_class = KGeluTrainer
    else:
        from .distributed import KGeluDistributedCallback  # its FSDP2 wrap-list fix helps GELU models too

        trainer_class = Trainer
        callbacks = [*(callbacks or []), KGeluDistributedCallback(check_sync=False)]
    trainer = trainer_class(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=data_collator,
        processing_class=processing_class, callbacks=list(callbacks or []), **metric_kwargs,
    )
    if not log_lines:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    if resume_from_checkpoint in (True, "true", "True", "last"):
        resume_from_checkpoint = get_last_checkpoint(args.output_dir)
        if resume_from_checkpoint is None:
            logger.warning("no checkpoint in %s to resume from: training from the start", args.output_dir)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
    train_seconds = time.perf_counter() - started
    if save_model:
        trainer.save_model(args.output_dir)

    model = trainer.accelerator.unwrap_model(trainer.model)
    if trainer.is_fsdp_enabled:  # sharded: rank 0 measures and publishes a gathered plain copy (a collective)
        from .distributed import gather_full_model

        model = gather_full_model(model)
        model = model.to(args.device) if model is not None else None
    result = PipelineResult(
        name=name or Path(args.output_dir).name, activation=activation, task=task, metric=metric,
        higher_is_better=higher_is_better, output_dir=str(args.output_dir), train_seconds=train_seconds,
        settings=_training_settings(args),
    )
    if trainer.is_world_process_zero():
        _measure_and_publish(
            result, model, trainer, args, eval_dataset, task=task, gelu_baseline=gelu_baseline,
            substitution=substitution, relu_output_dir=relu_output_dir, overwrite=overwrite_relu_output, push=push,
            processing_class=processing_class, dataset_name=dataset_name, base_model=base_model,
            command=command, write_report=write_report, hub_token=hub_token,
        )
    trainer.accelerator.wait_for_everyone()
    return result


def _measure_and_publish(result: PipelineResult, model, trainer, args, eval_dataset, *, task, gelu_baseline, substitution,
                         relu_output_dir, overwrite, push, processing_class, dataset_name, base_model, command, write_report,
                         hub_token):
    from .hub import HubPushError, push_relu_model, save_relu_model

    push_error = None
    result.eval_history = _eval_history(trainer.state.log_history, result.metric)
    result.best_score, result.best_epoch = best_of(result.eval_history, result.higher_is_better)
    final = evaluate_model(model, eval_dataset, task=task, batch_size=args.per_device_eval_batch_size)
    result.final_score = final[result.metric]
    if not result.eval_history:  # no evaluation during training: the end is the only score
        result.best_score, result.best_epoch = result.final_score, float(trainer.state.epoch or 0.0)

    report = relu_model = sub = None
    if result.activation == KGELU_NAME:
        result.lambda_final = _short_profile(model)
        for key, value in _hardness_numbers(args.output_dir, result.lambda_final).items():
            setattr(result, key, value)
        result.plot_path = _plot(args.output_dir)
        if substitution:
            sub = substitution_report(model, eval_dataset, gelu_baseline=gelu_baseline, task=task,
                                      batch_size=args.per_device_eval_batch_size)
            result.substitution = {"before": sub.kgelu_before, "after": sub.kgelu_after,
                                   "gelu_before": sub.gelu_before, "gelu_after": sub.gelu_after}
        if relu_output_dir is not None or (substitution and task == "classification"):
            relu_model, report = relu_ize(model, inplace=False)
        if substitution and task == "classification":
            batch = args.per_device_eval_batch_size
            result.substitution["loss_before"] = classification_loss(model, eval_dataset, batch)
            result.substitution["loss_after"] = classification_loss(relu_model, eval_dataset, batch)
            if gelu_baseline is not None:
                result.substitution["gelu_loss_before"] = classification_loss(gelu_baseline, eval_dataset, batch)
                swapped, _ = relu_ize(gelu_baseline, inplace=False, include_gelu=True)
                result.substitution["gelu_loss_after"] = classification_loss(swapped, eval_dataset, batch)
    elif result.activation == "gelu" and (substitution or relu_output_dir is not None):
        relu_model, report = relu_ize(model, inplace=False, include_gelu=True)
        after = evaluate_model(relu_model, eval_dataset, task=task, batch_size=args.per_device_eval_batch_size)[result.metric]
        result.substitution = {"before": result.final_score, "after": after, "gelu_before": None, "gelu_after": None}
        if task == "classification":
            batch = args.per_device_eval_batch_size
            result.substitution["loss_before"] = classification_loss(model, eval_dataset, batch)
            result.substitution["loss_after"] = classification_loss(relu_model, eval_dataset, batch)
    elif relu_output_dir is not None:
        logger.warning("the model is already ReLU: nothing to relu-ize, no ReLU folder written (its checkpoint is %s)", args.output_dir)

    if relu_output_dir is not None and relu_model is not None:
        folder = save_relu_model(
            relu_model, relu_output_dir, report=report, substitution=sub, processor=processing_class, overwrite=overwrite,
            repo_id=args.hub_model_id if push else None, base_model=base_model,
            datasets=[dataset_name] if dataset_name else None, eval_dataset=dataset_name,
            training=_card_training(args), plot_file=result.plot_path,
        )
        _custom_code_note(folder, relu_model.config)
        result.relu_dir = str(folder)
        if push:
            try:
                result.hub_url = push_relu_model(folder, args.hub_model_id, private=bool(args.hub_private_repo), token=hub_token)
                logger.info("pushed the ReLU model to %s", result.hub_url)
            except HubPushError as error:  # the run is done and saved: write its report, then say what failed
                push_error = error

    if write_report:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        report_path = out / REPORT_FILENAME
        report_path.write_text(render_report(result, command=_scrub_token(command, hub_token)), encoding="utf-8")
        result.report_path = str(report_path)
        (out / RESULTS_FILENAME).write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    if push_error is not None:
        raise push_error


def _scrub_token(command: str, token: str | None) -> str:
    for secret in (token, os.environ.get("HF_TOKEN")):
        if secret:
            command = command.replace(secret, "***")
    return command


# ----------------------------------------------------------------------------------------------
# Converting a pretrained GELU checkpoint (the scripts' --convert_from_gelu)


def conversion_steps(args, num_train_rows: int) -> int:
    """The optimizer steps the Trainer would take under `args`: `max_steps`, else the epochs' worth."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    batches = math.ceil(num_train_rows / args.per_device_train_batch_size)
    per_epoch = max(batches // args.gradient_accumulation_steps, 1)
    return max(1, math.ceil(args.num_train_epochs * per_epoch))


def run_conversion(model: nn.Module, args, run_args: PipelineArguments, conversion: ConversionArguments, train_dataset,
                   eval_dataset, *, task: str,
                   data_collator=None, processing_class=None, checkpoint: str | None = None, dataset_name: str | None = None,
                   script: str | None = None) -> str:
    """`--convert_from_gelu METHOD`: convert the GELU `model` with `hf_kgelu.convert.convert_gelu_to_relu` on
    `train_dataset` for the steps, learning rate, batch size and seed of the TrainingArguments `args`,
    print GELU vs ReLU on `eval_dataset`, save the ReLU folder (the same as `hf-kgelu convert` writes) in
    `--relu_output_dir` (default OUTPUT_DIR/relu_model) and push it with `--push_to_hub`. Returns the folder."""
    from .convert import conversion_scores, convert_gelu_to_relu, save_conversion
    from .hub import check_output_dir, push_relu_model

    method = conversion.convert_from_gelu
    if activation_of(model) != "gelu":
        raise ValueError(f"--convert_from_gelu needs a GELU checkpoint, but --model_name_or_path builds a {activation_of(model)} "
                         "model: train a λ-GELU model with --relu_ize_at_end instead, or give a GELU checkpoint")
    if args.world_size > 1:
        raise ValueError("--convert_from_gelu runs in one process (a small budget): launch the script with python, not accelerate")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id (--hub_model_id NAMESPACE/NAME): the repo the ReLU model goes to")
    relu_dir = run_args.relu_output_dir or os.path.join(args.output_dir, RELU_DIRNAME)
    check_output_dir(relu_dir, overwrite=run_args.overwrite_relu_output)  # fail before training, not after
    steps = conversion_steps(args, len(train_dataset))
    overrides = {"gradient_accumulation_steps": args.gradient_accumulation_steps, "bf16": args.bf16, "fp16": args.fp16,
                 "dataloader_num_workers": args.dataloader_num_workers, "disable_tqdm": args.disable_tqdm}
    if args.use_cpu:
        overrides["use_cpu"] = True
    anneal = {}
    if hasattr(args, "kgelu_bound"):  # the anneal recipe's target; its schedule keeps the conversion defaults
        anneal = {"bound": args.kgelu_bound, "tolerance": args.kgelu_tolerance, "target_lambda": args.kgelu_target_lambda}
    trained = method not in ("swap", "readout")
    print(f"converting {checkpoint or type(model).__name__} with {method}{f' for {steps} steps' if trained else ''}", flush=True)
    result = convert_gelu_to_relu(
        model, train_dataset, steps=steps, method=method, distill=True if conversion.convert_distill else None, task=task,
        output_dir=args.output_dir, learning_rate=args.learning_rate, batch_size=args.per_device_train_batch_size,
        data_collator=data_collator, seed=args.seed, training_overrides=overrides,
        calibration_batches=conversion.convert_calibration_batches, **anneal,
    )
    scores = None
    if eval_dataset is not None:
        scores = conversion_scores(model, result, eval_dataset, task, batch_size=args.per_device_eval_batch_size)
        print(f"{scores[0]}: GELU {scores[1]:.4f} → ReLU {scores[2]:.4f}", flush=True)
    script = script or Path(sys.argv[0]).name
    folder = save_conversion(
        result, relu_dir, processor=processing_class, overwrite=run_args.overwrite_relu_output, scores=scores,
        made_with=f"`{script} --convert_from_gelu {method}`", repo_id=args.hub_model_id if args.push_to_hub else None,
        dataset_name=dataset_name,
    )
    _custom_code_note(folder, result.model.config)
    print(f"ReLU model: {folder}", flush=True)
    if args.push_to_hub:
        url = push_relu_model(folder, args.hub_model_id, private=bool(args.hub_private_repo), token=args.hub_token)
        print(f"pushed to {url}", flush=True)
    return str(folder)
