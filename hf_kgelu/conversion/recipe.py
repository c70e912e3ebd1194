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
encoders without a task head, whose only training signal it is.
"""

from __future__ import annotations

import copy
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
from .distill import DistillationKGeluTrainer, DistillationTrainer, without_dropout
from .readout import swap_with_readout_correction


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
) -> ConversionResult:
    """Turn a GELU `model` into a ReLU model with the recipe `config` (a `ConversionConfig`; the
    default is readout_finetune, which needs `steps`) on `train_dataset`. `model` is not changed:
    the recipe works on a copy. Returns a `ConversionResult` whose `.model` has only ReLU where the
    GELUs were, and a config that stock transformers rebuilds.

    `data_collator` batches `train_dataset` (default: transformers' default collator; causal-LM
    rows without labels learn their own tokens). `teacher` overrides the distillation teacher (a
    frozen copy of `model` by default). `output_dir` is the Trainer's scratch folder (a temporary
    one by default; nothing of it is kept). `training_overrides` are extra TrainingArguments
    (bf16, gradient_accumulation_steps, …). `fitted` = (ReLU model, report) from an earlier
    `swap_with_readout_correction` of this same model skips the readout fit (it is copied)."""
    config = config if config is not None else ConversionConfig(method="readout")
    if output_dir is None:
        with tempfile.TemporaryDirectory(prefix="hf-kgelu-convert-") as scratch:
            return convert_gelu_to_relu(model, train_dataset, config, data_collator=data_collator, teacher=teacher,
                                        output_dir=scratch, callbacks=callbacks, training_overrides=training_overrides,
                                        fitted=fitted)
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
    if config.trains and distill and teacher is None:
        teacher = copy.deepcopy(model)
    student = copy.deepcopy(model)
    steps = config.steps if config.trains else 0
    settings = {"method": method, "distill": distill, "steps": steps, "learning_rate": config.learning_rate,
                "batch_size": config.batch_size}
    if method == "swap":
        relu_model, report = relu_ize(student, inplace=True, include_gelu=True)
        return ConversionResult(relu_model, report, method, False, 0, 0.0, settings)

    collator = _with_labels(data_collator or default_data_collator, task)
    if method.startswith("readout"):
        if fitted is not None:
            student, report = copy.deepcopy(fitted[0]), fitted[1]
        else:
            calibration = _calibration_batches(train_dataset, collator, config.calibration_batches, config.batch_size, config.seed)
            student, report = swap_with_readout_correction(student, calibration)
        settings["calibration_batches"] = config.calibration_batches
        if method == "readout":
            return ConversionResult(student.eval(), report, method, False, 0, 0.0, settings)
    distill_kwargs = {"teacher": teacher if distill else None, "distill_alpha": config.distill_alpha,
                      "distill_temperature": config.distill_temperature, "distill_task": task}
    extra = dict(training_overrides or {})
    common = (output_dir, steps, config.learning_rate, config.batch_size, config.seed)
    if method in ("swap_finetune", "readout_finetune"):
        if method == "swap_finetune":
            student, report = relu_ize(student, inplace=True, include_gelu=True)
        trainer = DistillationTrainer(model=student, args=_training_args(*common, None, extra), train_dataset=train_dataset,
                                      data_collator=collator, callbacks=callbacks, **distill_kwargs)
    else:
        convert_to_kgelu(student, lambda_init=1.0)  # λ = 1 is the GELU the model was trained with
        kgelu = {"kgelu_anneal_start": config.anneal_start, "kgelu_anneal_shape": config.anneal_shape,
                 "kgelu_bound": config.bound, "kgelu_tolerance": config.tolerance, "kgelu_target_lambda": config.target_lambda}
        settings.update({k.removeprefix("kgelu_"): v for k, v in kgelu.items()})
        trainer = DistillationKGeluTrainer(model=student, args=_training_args(*common, kgelu, extra),
                                           train_dataset=train_dataset, data_collator=collator, callbacks=callbacks,
                                           **distill_kwargs)
    if config.disable_dropout:
        without_dropout(student)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    student = trainer.model
    if method == "anneal":
        student, report = relu_ize(student, inplace=True)
    student.eval()
    return ConversionResult(student, report, method, distill, steps, seconds, settings, list(trainer.state.log_history))
