"""Convert a pretrained GELU model into a ReLU model on a small fine-tuning budget.

`convert_gelu_to_relu(model, train_dataset, ConversionConfig(...))` runs one of the recipes
measured by `scripts/convert_benchmark.py` (numbers in docs/results.md):

- "swap": replace every GELU by ReLU, no training (the direct swap);
- "swap_finetune": swap, then fine-tune the ReLU model for `steps` optimizer steps (the rival:
  ReLU Strikes Back, ProSparse);
- "readout": swap, then re-fit the linear layer that reads each activation so that it reproduces
  the GELU layer's output on a few training batches (least squares, no training:
  `hf_kgelu.conversion.readout`); "readout_finetune" (default): that, then fine-tune like
  "swap_finetune" — the best recipe of the benchmark;
- "anneal": turn every GELU into λ-GELU at λ = 1 (the same function), fine-tune with
  `KGeluTrainer` while λ anneals to λ*, then `relu_ize`. The default schedule is geometric (log λ
  moves linearly from the first step): the paper's linear schedule is ReLU-like after a tenth of
  a short budget, so it leaves the network no gradual path.

Distillation from the original (`hf_kgelu.conversion.distill`) is on by default exactly for
encoders without a task head, whose only training signal it is. A fine-tune never makes things
worse than the no-training fit: both are measured on held-out data and the better one is returned
(`keep_better`, `hf_kgelu.conversion.selection`). Settings left at None (learning rate,
calibration size) are chosen from the checkpoint and the data (`hf_kgelu.conversion.defaults`).
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import TrainingArguments

from ..metrics import IGNORE_INDEX, infer_task
from ..modeling.convert import convert_to_kgelu
from ..relu import ReluReport, relu_ize
from ..training import KGeluTrainingArguments
from .config import EMBEDDING_TASK, ConversionConfig
from .defaults import Choice, choose_calibration, choose_learning_rate
from .distill import DistillationKGeluTrainer, DistillationTrainer, without_dropout
from .readout import MAX_ROWS, readout_rows, swap_with_readout_correction
from .selection import (
    DIRECT_SWAP,
    FINE_TUNED,
    READOUT_FIT,
    Selection,
    held_out_batches,
    keep_better,
    split_held_out,
)

logger = logging.getLogger(__name__)


def task_of(model: nn.Module) -> str:
    try:
        return infer_task(model)
    except ValueError:
        if type(model).__name__.endswith("Model") and hasattr(model, "config"):
            return EMBEDDING_TASK  # a bare encoder (BertModel): its output is the embedding
        raise


@dataclass
class ConversionResult:
    """The ReLU model and how it was made."""

    model: nn.Module
    report: ReluReport
    method: str
    distill: bool
    steps: int
    train_seconds: float
    settings: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict] = field(default_factory=list)
    choices: dict[str, Choice] = field(default_factory=dict)  # settings left at None: the value chosen and why
    selection: Selection | None = None  # keep_better's held-out comparison of the no-training fit and the fine-tune
    selection_note: str | None = None  # why keep_better could not compare (no data to hold out)

    @property
    def fine_tuned(self) -> bool:
        """Whether `model` is the fine-tuned model (False: the no-training fit was better on held-out data)."""
        return self.steps > 0 and (self.selection is None or self.selection.kept == FINE_TUNED)


def _training_args(output_dir, steps, learning_rate, batch_size, seed, kgelu: dict | None, extra: dict):
    settings = dict(
        output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate, per_device_train_batch_size=batch_size,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, logging_steps=max(1, steps // 5), save_strategy="no",
        report_to="none", disable_tqdm=True, seed=seed, data_seed=seed, dataloader_pin_memory=False,
        use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
    )
    settings.update(extra)
    if kgelu is None:
        return TrainingArguments(**settings)
    return KGeluTrainingArguments(**settings, **kgelu)


def _with_labels(collator, task: str):
    """Causal-LM blocks without a `labels` column learn to predict their own tokens."""

    def collate(rows):
        batch = collator(rows)
        if task == "causal_lm" and "labels" not in batch and "input_ids" in batch:
            labels = batch["input_ids"].clone()
            if "attention_mask" in batch:
                labels[batch["attention_mask"] == 0] = IGNORE_INDEX
            batch["labels"] = labels
        return batch

    return collate


def _calibration_batches(dataset, collator, num_batches: int, batch_size: int, seed: int) -> list[dict]:
    """`num_batches` batches of a fixed random subset of `dataset` (a private generator: no global RNG use)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        import itertools

        rows = list(itertools.islice(iter(dataset), num_batches * batch_size))
    else:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[: num_batches * batch_size]
        rows = [dataset[int(i)] for i in order]
    return [collator(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def _readout_fit(model, dataset, collator, config: ConversionConfig, choices: dict) -> tuple[nn.Module, ReluReport]:
    """The training-free readout fit on calibration batches of `dataset` (their number chosen from
    the data when `config.calibration_batches` is None; the choice goes into `choices`)."""
    if config.calibration_batches is not None:
        batches = _calibration_batches(dataset, collator, config.calibration_batches, config.batch_size, config.seed)
    else:
        batches, choices["calibration_batches"] = choose_calibration(
            dataset, collator, config.batch_size, config.seed, lambda batch: readout_rows(model, batch), MAX_ROWS)
    return swap_with_readout_correction(model, batches)


def _no_training_model(model, dataset, collator, config, fitted, choices, required: bool) -> tuple[nn.Module, ReluReport, str]:
    """(model, report, name) of the no-training conversion: the readout fit (a copy of `fitted` when
    given), or, where no readout can be fitted and the recipe does not need one, the direct swap."""
    if fitted is not None:
        return copy.deepcopy(fitted[0]).eval(), fitted[1], READOUT_FIT
    try:
        fit_model, report = _readout_fit(model, dataset, collator, config, choices)
        return fit_model.eval(), report, READOUT_FIT
    except ValueError as error:
        if required:
            raise
        logger.info("no readout fit to compare the fine-tune with (%s): comparing with the direct swap", error)
        swapped, report = relu_ize(copy.deepcopy(model), inplace=True, include_gelu=True)
        return swapped.eval(), report, DIRECT_SWAP


def _held_out_split(train_dataset, eval_dataset, config: ConversionConfig):
    """(training rows, held-out rows or None, what was held out) for `keep_better`."""
    if eval_dataset is None:
        return split_held_out(train_dataset, config.held_out_fraction, config.seed)
    if not (hasattr(eval_dataset, "__getitem__") and hasattr(eval_dataset, "__len__")):
        eval_dataset = list(eval_dataset)
    return train_dataset, eval_dataset, f"the evaluation data ({len(eval_dataset)} rows)"


def _fine_tune(student, method, train, collator, config, settings, steps, distill_kwargs, output_dir, callbacks, extra):
    """Train `student` with the recipe's trainer; returns (trained model, trainer)."""
    common = (output_dir, steps, settings["learning_rate"], config.batch_size, config.seed)
    if method in ("swap_finetune", "readout_finetune"):
        trainer = DistillationTrainer(model=student, args=_training_args(*common, None, extra), train_dataset=train,
                                      data_collator=collator, callbacks=callbacks, **distill_kwargs)
    else:
        convert_to_kgelu(student, lambda_init=1.0)  # λ = 1 is the GELU the model was trained with
        kgelu = {"kgelu_anneal_start": config.anneal_start, "kgelu_anneal_shape": config.anneal_shape,
                 "kgelu_bound": config.bound, "kgelu_tolerance": config.tolerance, "kgelu_target_lambda": config.target_lambda}
        settings.update({k.removeprefix("kgelu_"): v for k, v in kgelu.items()})
        trainer = DistillationKGeluTrainer(model=student, args=_training_args(*common, kgelu, extra), train_dataset=train,
                                           data_collator=collator, callbacks=callbacks, **distill_kwargs)
    if config.disable_dropout:
        without_dropout(student)
    trainer.train()
    return trainer.model, trainer


def convert_gelu_to_relu(
    model: nn.Module,
    train_dataset,
    config: ConversionConfig | None = None,
    *,
    data_collator=None,
    teacher: nn.Module | None = None,
    output_dir: str | os.PathLike | None = None,
    callbacks: list | None = None,
    training_overrides: dict | None = None,
    fitted: tuple[nn.Module, ReluReport] | None = None,
    eval_dataset=None,
    checkpoint: str | os.PathLike | None = None,
) -> ConversionResult:
    """Turn a GELU `model` into a ReLU model with the recipe `config` (a `ConversionConfig`; the
    default is readout_finetune, which needs `steps`) on `train_dataset`. `model` is not changed:
    the recipe works on a copy. Returns a `ConversionResult` whose `.model` has only ReLU where the
    GELUs were, and a config that stock transformers rebuilds.

    Settings left at None are chosen (`hf_kgelu.conversion.defaults`): the learning rate from the
    training record of the folder `checkpoint` (default: the folder `model` was loaded from), the
    calibration size from the data. With `config.keep_better` a fine-tune is checked against the
    no-training fit on `eval_dataset` (rows like `train_dataset`'s), else on rows held out of
    `train_dataset`, and the better model is returned (`hf_kgelu.conversion.selection`).

    `data_collator` batches `train_dataset` (default: transformers' default collator; causal-LM
    rows without labels learn their own tokens). `teacher` overrides the distillation teacher (a
    frozen copy of `model` by default). `output_dir` is the Trainer's scratch folder (a temporary
    one by default; nothing of it is kept). `training_overrides` are extra TrainingArguments
    (bf16, gradient_accumulation_steps, …). `fitted` = (ReLU model, report) from an earlier
    `swap_with_readout_correction` of this same model skips the readout fit (it is copied; with
    keep_better and no `eval_dataset`, fit it on rows that exclude the held-out ones to keep them honest)."""
    config = config if config is not None else ConversionConfig(method="readout")
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="hf-kgelu-convert-") as scratch:
            return convert_gelu_to_relu(model, train_dataset, config, data_collator=data_collator, teacher=teacher,
                                        output_dir=scratch, callbacks=callbacks, training_overrides=training_overrides,
                                        fitted=fitted, eval_dataset=eval_dataset, checkpoint=checkpoint)
    from transformers import default_data_collator

    method = config.method
    task = config.task or task_of(model)
    distill = config.distill
    if distill is None:  # the benchmark: distillation did not help models that have a task loss
        distill = task == EMBEDDING_TASK
    if task == EMBEDDING_TASK and config.trains and not distill:
        raise ValueError(
            f"{type(model).__name__} is an encoder without a task head, so the only training signal is the original model's "
            "embeddings: use distill=True (or leave it at None, which distils exactly for such models)"
        )
    steps = config.steps if config.trains else 0
    settings = {"method": method, "distill": distill, "steps": steps, "learning_rate": config.learning_rate,
                "batch_size": config.batch_size}
    if method == "swap":
        relu_model, report = relu_ize(copy.deepcopy(model), inplace=True, include_gelu=True)
        return ConversionResult(relu_model, report, method, False, 0, 0.0, settings)

    collator = _with_labels(data_collator or default_data_collator, task)
    choices: dict[str, Choice] = {}
    train, held_out, held_out_note = train_dataset, None, None
    if config.trains and config.keep_better:
        train, held_out, held_out_note = _held_out_split(train_dataset, eval_dataset, config)
        if held_out is None:
            logger.warning("conversion: the fine-tuned model is returned unchecked: %s", held_out_note)
    baseline = None
    if method.startswith("readout") or held_out is not None:
        baseline, baseline_report, baseline_name = _no_training_model(model, train, collator, config, fitted, choices,
                                                                      required=method.startswith("readout"))
        report = baseline_report
        if baseline_name == READOUT_FIT:
            settings["calibration_batches"] = (choices["calibration_batches"].value if "calibration_batches" in choices
                                               else config.calibration_batches)
        if method == "readout":
            return ConversionResult(baseline, report, method, False, 0, 0.0, settings, choices=choices)
    if config.learning_rate is None:
        choices["learning_rate"] = choose_learning_rate(checkpoint or getattr(model, "name_or_path", None))
        settings["learning_rate"] = choices["learning_rate"].value
    for name, choice in choices.items():
        logger.info("conversion: %s %s", name, choice)
    if distill and teacher is None:
        teacher = copy.deepcopy(model)
    if method == "readout_finetune":
        student = copy.deepcopy(baseline) if held_out is not None else baseline  # the fit is kept for the comparison
    else:
        student = copy.deepcopy(model)
    if method == "swap_finetune":
        student, report = relu_ize(student, inplace=True, include_gelu=True)
    distill_kwargs = {"teacher": teacher if distill else None, "distill_alpha": config.distill_alpha,
                      "distill_temperature": config.distill_temperature, "distill_task": task}
    started = time.perf_counter()
    student, trainer = _fine_tune(student, method, train, collator, config, settings, steps, distill_kwargs, output_dir,
                                  callbacks, dict(training_overrides or {}))
    seconds = time.perf_counter() - started
    if method == "anneal":
        student, report = relu_ize(student, inplace=True)
    student.eval()
    selection = None
    if held_out is not None:
        kept, selection = keep_better(baseline, student, held_out_batches(held_out, collator, config.batch_size), task,
                                      held_out_note, reference=teacher if teacher is not None else model, baseline=baseline_name)
        if kept is baseline:
            student, report = baseline, baseline_report
    return ConversionResult(student, report, method, distill, steps, seconds, settings, list(trainer.state.log_history),
                            choices=choices, selection=selection, selection_note=None if held_out is not None else held_out_note)
