"""The convert verb: a pretrained GELU checkpoint in, a published ReLU model out."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

from ..conversion import (
    ConversionConfig,
    ConversionResult,
    convert_gelu_to_relu,
    task_of,
)
from ..conversion.selection import READOUT_FIT
from ..data import LocalData
from ..metrics import (
    Comparison,
    embedding_cosine,
    evaluate_model,
    iter_batches,
    metric_of,
)
from ..publishing.card import CardDetails
from ..publishing.folder import check_output_dir, recover_interrupted_save
from .publish import HubTarget, Published, publish
from .relu_ize import max_positions
from .source import Checkpoint, load_checkpoint

_DONE = {
    "readout": "every GELU was swapped for ReLU and the linear layer reading each activation was re-fitted by least "
               "squares so that it reproduces the GELU layer's output on calibration batches (no training)",
    "readout_finetune": "every GELU was swapped for ReLU, the linear layer reading each activation was re-fitted by "
                        "least squares to reproduce the GELU layer's output on calibration batches, then {steps} followed",
    "swap_finetune": "every GELU was swapped for ReLU, then {steps} followed",
    "anneal": "every GELU became λ-GELU at λ = 1 (the same function), λ was annealed to λ* over {steps}, then every "
              "λ-GELU was swapped for ReLU",
    "swap": "every GELU was swapped for ReLU directly (no fit, no training)",
}


def conversion_details(result: ConversionResult, made_with: str, details: CardDetails | None = None) -> CardDetails:
    """The card's account of a conversion: what was done, with which settings (and which of them were
    chosen, and why), and which model was kept after the held-out comparison."""
    steps = f"{result.steps} fine-tuning step{'' if result.steps == 1 else 's'}"
    steps += " with distillation from the GELU original" if result.distill else ""
    training = {"conversion": f"{result.method}{' + distillation' if result.distill else ''}, {result.steps} steps"}
    if result.method == "anneal":
        training.update({key: result.settings.get(key) for key in ("anneal_start", "bound", "tolerance")})
    if result.steps:
        choice = result.choices.get("learning_rate")
        training["learning rate"] = str(choice) if choice else f"{result.settings.get('learning_rate'):g}"
    if result.settings.get("calibration_batches"):
        choice = result.choices.get("calibration_batches")
        training["readout fit"] = (f"least squares on {result.settings['calibration_batches']} batches of "
                                   f"{result.settings.get('batch_size')}" + (f" (chosen: {choice.reason})" if choice else ""))
    selection = result.selection
    text = _DONE[result.method].format(steps=steps)
    if selection is not None:
        training["returned model"] = selection.describe()
        if result.fine_tuned:
            text += f"; the fine-tuned model was kept after a check against {selection.baseline} ({selection.numbers})"
        else:
            kept = "readout" if selection.baseline == READOUT_FIT else "swap"
            text = (f"{_DONE[kept]}. A fine-tune ({result.method}, {steps}) was run as well and discarded, because it was "
                    f"worse than {selection.baseline} ({selection.numbers})")
    elif result.selection_note:
        training["returned model"] = f"the fine-tuned model, not checked against the no-training fit: {result.selection_note}"
    return replace(details or CardDetails(), made_by="conversion", made_with=made_with,
                   conversion_text=text, training=training)


def measure_conversion(original, converted, data, task: str, batch_size: int = 32, collate=None) -> Comparison:
    """The original GELU model against the converted ReLU model on the same held-out data: the task's
    metric, or for a sentence encoder the mean cosine of its embeddings to the original's."""
    metric, higher = metric_of(task)
    if task == "embedding":
        batches = (list(iter_batches(data, batch_size)) if collate is None  # rows prepared without a collator
                   else [collate(data[i : i + batch_size]) for i in range(0, len(data), batch_size)])
        return Comparison(metric, higher, 1.0, embedding_cosine(converted, original, batches))
    return Comparison(metric, higher, evaluate_model(original, data, task, batch_size)[metric],
                      evaluate_model(converted, data, task, batch_size)[metric])


def _rows(data, source: Checkpoint, task: str, data_collator):
    if isinstance(data, LocalData):
        return data.rows(source.tokenizer, task, max_positions(source.model))
    return data, data_collator


def convert_checkpoint(
    checkpoint: str | os.PathLike | Checkpoint,
    output_dir: str | os.PathLike,
    *,
    data,
    config: ConversionConfig,
    evaluation=None,
    data_collator=None,
    details: CardDetails | None = None,
    made_with: str = "`hf-kgelu convert`",
    hub: HubTarget | None = None,
    overwrite: bool = False,
    training_overrides: dict | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> Published:
    """Load a GELU checkpoint (or take a loaded `Checkpoint`), convert it with `config` on `data`,
    measure original vs ReLU on `evaluation`, then write and push the folder (`publish`).
    `evaluation` is also the held-out data on which a fine-tune is checked against the no-training
    fit (`config.keep_better`); without it, part of `data` is held out for that.

    `data` and `evaluation` are files on disk (`LocalData`, read with the checkpoint's tokenizer) or
    datasets already prepared (rows of model inputs, batched by `data_collator`)."""
    output_dir = check_output_dir(output_dir, overwrite, None if isinstance(checkpoint, Checkpoint) else checkpoint)  # fail before training
    recover_interrupted_save(output_dir)
    source = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    task = config.task or task_of(source.model)
    config = replace(config, task=task)
    train, collate = _rows(data, source, task, data_collator)
    held_out, eval_collate = _rows(evaluation, source, task, data_collator) if evaluation is not None else (None, None)
    distilling = config.trains and (config.distill or (config.distill is None and task == "embedding"))
    log(f"converting {source.name} ({type(source.model).__name__}, {task}) with {config.method}"
        f"{' + distillation' if distilling else ''}{f' for {config.steps} steps' if config.trains else ''}")
    result = convert_gelu_to_relu(source.model, train, config, data_collator=collate, training_overrides=training_overrides,
                                  eval_dataset=held_out, checkpoint=source.folder)
    for name, choice in result.choices.items():
        log(f"{name.replace('_', ' ')}: {choice}")
    if result.selection is not None:
        log(f"returned model: {result.selection.describe()}")
    elif result.selection_note:
        log(f"returned model: the fine-tuned one, unchecked ({result.selection_note})")
    comparison = None
    if held_out is not None:
        comparison = measure_conversion(source.model, result.model, held_out, task, collate=eval_collate)
        log(f"{comparison.metric}: GELU {comparison.original:.4f} → ReLU {comparison.relu:.4f}")
    return publish(result.model, result.report, output_dir, comparison=comparison,
                   details=conversion_details(result, made_with, details), source=source, overwrite=overwrite, hub=hub)
