"""The train verb, which the scripts, the demo and the reproduction share: a model and data in, a
trained model, its numbers, and (for λ-GELU or GELU) a published ReLU model out.

`train_and_relu_ize(model, args, train_dataset, eval_dataset, ...)`:

1. trains with `KGeluTrainer` when the model has λ-GELU sites (the λ schedule, logging and
   `hardness_history.json` come from it), otherwise with the stock `Trainer`, evaluating every
   `eval_strategy` step with accuracy (classification) or perplexity (causal LM), or `metric`
   (`hf_kgelu.metrics.load_metric`: an `evaluate` name, a local metric path or module);
2. reads the paper's Table I quantities: best validation score and its epoch, the learned
   layerwise λ (at the anneal switch, or at the end when λ is learned throughout), its mean,
   and the hardness drift D between epochs of the learning phase;
3. measures the substitution (Table II): the metric before and after swapping every λ-GELU for
   ReLU, with a trained GELU baseline's direct swap when given; a GELU model gets its own direct
   swap;
4. with `relu_output_dir`: publishes the ReLU model (`hf_kgelu.checkpoint.publish`) and, with
   `push_to_hub`, uploads it — never the λ-GELU checkpoints (the Trainer's own push is off here);
5. writes report.md, results.json and the λ-trajectory PNG into `args.output_dir`.

Steps 2–5 run on the main process only; the others wait for it.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from ..metrics import (
    Metric,
    classification_loss,
    evaluate_model,
    infer_task,
    load_metric,
    trainer_metrics,
)
from ..modeling.config import KGELU_NAME
from ..modeling.convert import activation_of
from ..modeling.sites import hardness_profile, short_site_names
from ..publishing.card import CardDetails
from ..publishing.push import HubPushError
from ..relu import relu_ize
from ..substitution import substitution_report
from ..training.history import read_history
from .publish import HubTarget, publish
from .report import REPORT_FILENAME, RESULTS_FILENAME, TrainResult, render_report

logger = logging.getLogger(__name__)

PLOT_FILENAME = "hardness.png"
RELU_DIRNAME = "relu_model"


def _eval_history(log_history: Sequence[Mapping], metric: str) -> list[tuple[float, float]]:
    key = f"eval_{metric}"
    return [(float(entry.get("epoch", 0.0)), float(entry[key])) for entry in log_history if key in entry]


def best_of(history: Sequence[tuple[float, float]], higher_is_better: bool) -> tuple[float | None, float | None]:
    """(best score, epoch of its first occurrence)."""
    if not history:
        return None, None
    best = max(history, key=lambda e: e[1]) if higher_is_better else min(history, key=lambda e: e[1])
    return best[1], best[0]


def hardness_numbers(output_dir: str, sites_now: dict[str, float]) -> dict[str, Any]:
    """Learned profile, anneal info and learning-phase drift from the trainer's hardness history."""
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


def _short_profile(model: nn.Module) -> dict[str, float]:
    profile = hardness_profile(model)
    return dict(zip(short_site_names(list(profile)), profile.values()))


def _plot(output_dir: str) -> str | None:
    try:
        from ..plotting import plot_hardness
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


def _training_settings(args) -> dict[str, Any]:
    settings = {"seed": args.seed, "learning_rate": args.learning_rate, "epochs": args.num_train_epochs,
                "max_steps": args.max_steps, "batch_size": args.per_device_train_batch_size}
    if hasattr(args, "kgelu_settings"):
        settings.update(args.kgelu_settings())
    return settings


def _card_training(args) -> dict[str, Any]:
    annealed = args.kgelu_anneal_start is not None
    return {
        "eta": args.kgelu_lr_multiplier,
        "anneal_start": args.kgelu_anneal_start if annealed else "none (λ learned throughout)",
        "tolerance": args.kgelu_tolerance if annealed and args.kgelu_target_lambda is None else None,
        "bound": args.kgelu_bound if annealed else None,
        "target_lambda": args.kgelu_resolved_target_lambda if annealed else None,
    }


def scrub_token(command: str, token: str | None) -> str:
    for secret in (token, os.environ.get("HF_TOKEN")):
        if secret:
            command = command.replace(secret, "***")
    return command


def _hub_target(args, push_to_hub: bool | None) -> HubTarget | None:
    if not (args.push_to_hub if push_to_hub is None else push_to_hub):
        return None
    if not args.hub_model_id:
        raise ValueError("push_to_hub needs hub_model_id (--hub_model_id NAMESPACE/NAME): the repo the ReLU model goes to")
    return HubTarget(args.hub_model_id, private=bool(args.hub_private_repo), token=args.hub_token)


def _trainer(model, args, train_dataset, eval_dataset, activation, task, metric: Metric, callbacks, log_lines, **kwargs):
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from ..training import (
        KGeluDistributedCallback,
        KGeluTrainer,
        KGeluTrainingArguments,
    )

    metric_kwargs, _, _ = trainer_metrics(task, metric)
    if activation == KGELU_NAME:
        if not isinstance(args, KGeluTrainingArguments):
            raise TypeError("a λ-GELU model trains with hf_kgelu.KGeluTrainingArguments (the kgelu_* settings), got "
                            f"{type(args).__name__}")
        trainer_class = KGeluTrainer
    else:
        trainer_class = Trainer  # its FSDP2 wrap-list fix helps GELU models too:
        callbacks = [*(callbacks or []), KGeluDistributedCallback(check_sync=False)]
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                            callbacks=list(callbacks or []), **metric_kwargs, **kwargs)
    if not log_lines:
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
    return trainer


def train_and_relu_ize(
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
    details: CardDetails | None = None,
    command: str | None = None,
    write_report: bool = True,
    save_model: bool = True,
    log_lines: bool = True,
    metric=None,
) -> TrainResult:
    """Train `model`, measure it, and (optionally) publish the ReLU model made from it.

    `args` are `KGeluTrainingArguments` (plain `TrainingArguments` do for GELU/ReLU models).
    `gelu_baseline`: a trained GELU twin whose direct swap the substitution test also reports.
    `relu_output_dir`: where the ReLU folder goes (a λ-GELU model: its `relu_ize`; a GELU model: its
    direct swap; a ReLU model has nothing to swap). `push_to_hub` (default: `args.push_to_hub`)
    uploads that folder to `args.hub_model_id` with `args.hub_token` / `args.hub_private_repo`.
    `details`: what the card says beyond the run (base model, datasets, license).
    `log_lines=False` drops the Trainer's printed log dicts; pass an `EpochProgress` in `callbacks`
    for one line per epoch. `metric`: what the evaluations, the final score and the substitution report
    measure (default: the exact built-in accuracy / perplexity; else `hf_kgelu.metrics.load_metric`'s
    name, path or `evaluate` module). Returns a `TrainResult` (also written to results.json)."""
    from transformers.trainer_utils import get_last_checkpoint

    task = task or infer_task(model)
    activation = activation_of(model)
    metric = load_metric(metric, task)
    hub = _hub_target(args, push_to_hub)
    if hub is not None and relu_output_dir is None:
        relu_output_dir = os.path.join(args.output_dir, RELU_DIRNAME)
    args = copy.copy(args)
    args.push_to_hub = False  # the λ-GELU checkpoints stay local; only the ReLU model is published
    args.hub_token = None  # the Trainer pickles its args into every checkpoint: keep the token out
    trainer = _trainer(model, args, train_dataset, eval_dataset, activation, task, metric, callbacks, log_lines,
                       data_collator=data_collator, processing_class=processing_class)
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
    if trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled:  # sharded, or DeepSpeed's bf16 parameters:
        from ..training.distributed import gather_full_model  # rank 0 measures and publishes a gathered plain
        from ..training.zero import gather_deepspeed_model  # copy (a collective)

        model = gather_deepspeed_model(trainer) if trainer.is_deepspeed_enabled else gather_full_model(model)
        model = model.to(args.device) if model is not None else None
    result = TrainResult(
        name=name or Path(args.output_dir).name, activation=activation, task=task, metric=metric.name,
        higher_is_better=metric.higher_is_better, output_dir=str(args.output_dir), train_seconds=train_seconds,
        settings=_training_settings(args),
    )
    if trainer.is_world_process_zero():
        _measure_and_publish(result, model, trainer, args, eval_dataset, metric, gelu_baseline=gelu_baseline,
                             substitution=substitution, relu_output_dir=relu_output_dir, overwrite=overwrite_relu_output,
                             hub=hub, processing_class=processing_class, details=details, command=command,
                             write_report=write_report)
    trainer.accelerator.wait_for_everyone()
    return result


def _measure_and_publish(result: TrainResult, model, trainer, args, eval_dataset, metric: Metric, *, gelu_baseline, substitution,
                         relu_output_dir, overwrite, hub, processing_class, details, command, write_report):
    push_error = None
    task, batch = result.task, args.per_device_eval_batch_size
    result.eval_history = _eval_history(trainer.state.log_history, result.metric)
    result.best_score, result.best_epoch = best_of(result.eval_history, result.higher_is_better)
    result.final_score = evaluate_model(model, eval_dataset, task=task, batch_size=batch, metric=metric)[result.metric]
    if not result.eval_history:  # no evaluation during training: the end is the only score
        result.best_score, result.best_epoch = result.final_score, float(trainer.state.epoch or 0.0)

    kgelu = result.activation == KGELU_NAME
    details = details or CardDetails()
    if kgelu:
        result.lambda_final = _short_profile(model)
        for key, value in hardness_numbers(args.output_dir, result.lambda_final).items():
            setattr(result, key, value)
        result.plot_path = _plot(args.output_dir)
        details = replace(details, training={**_card_training(args), **details.training})
    comparison = relu_model = report = None
    if result.activation == "relu":
        if relu_output_dir is not None:
            logger.warning("the model is already ReLU: nothing to relu-ize, no ReLU folder written (its checkpoint is %s)",
                           args.output_dir)
    elif substitution or relu_output_dir is not None:
        relu_model, report = relu_ize(model, inplace=False, include_gelu=not kgelu)
    if substitution and relu_model is not None:
        comparison = substitution_report(model, eval_dataset, gelu_baseline=gelu_baseline if kgelu else None, task=task,
                                         batch_size=batch, include_gelu=not kgelu, metric=metric)
        result.substitution = {"before": comparison.kgelu_before, "after": comparison.kgelu_after,
                               "gelu_before": comparison.gelu_before, "gelu_after": comparison.gelu_after}
        if task == "classification":
            result.substitution["loss_before"] = classification_loss(model, eval_dataset, batch)
            result.substitution["loss_after"] = classification_loss(relu_model, eval_dataset, batch)
            if kgelu and gelu_baseline is not None:
                result.substitution["gelu_loss_before"] = classification_loss(gelu_baseline, eval_dataset, batch)
                swapped, _ = relu_ize(gelu_baseline, inplace=False, include_gelu=True)
                result.substitution["gelu_loss_after"] = classification_loss(swapped, eval_dataset, batch)

    if relu_output_dir is not None and relu_model is not None:
        try:
            published = publish(relu_model, report, relu_output_dir, comparison=comparison, details=details,
                                processor=processing_class, plot_file=result.plot_path, overwrite=overwrite, hub=hub)
            result.relu_dir, result.hub_url = str(published.folder), published.url
        except HubPushError as error:  # the run is done and saved: write its report, then say what failed
            result.relu_dir, push_error = str(error.folder), error
    if write_report:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        report_path = out / REPORT_FILENAME
        report_path.write_text(render_report(result, command=scrub_token(command, hub.token if hub else None)),
                               encoding="utf-8")
        result.report_path = str(report_path)
        (out / RESULTS_FILENAME).write_text(json.dumps(result.to_dict(), indent=1, default=str) + "\n", encoding="utf-8")
    if push_error is not None:
        raise push_error
