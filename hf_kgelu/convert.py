"""Convert a pretrained GELU model into a ReLU model on a small fine-tuning budget.

`convert_gelu_to_relu(model, train_dataset, steps=...)` runs one of the recipes measured in
`scripts/convert_benchmark.py` (numbers in docs/results.md) and returns the ReLU model:

- "swap": replace every GELU by ReLU, no training (the direct swap; `steps` is ignored);
- "swap_finetune": swap, then fine-tune the ReLU model for `steps` optimizer steps (the rival:
  ReLU Strikes Back, ProSparse);
- "readout": swap, then re-fit the linear layer that reads each activation so that it reproduces
  the GELU layer's output on a few training batches (least squares, no training:
  `swap_with_readout_correction`); "readout_finetune" (default): that, then fine-tune like
  "swap_finetune" — the best recipe of the benchmark (docs/results.md);
- "anneal": turn every GELU into λ-GELU at λ = 1 (the same function), fine-tune with
  `KGeluTrainer` while λ anneals to λ* (closed-form bound, or `bound="data"`: per-site targets
  from real pre-activations), then `relu_ize`. The default schedule is geometric (log λ moves
  linearly from the first step): the paper's linear schedule is ReLU-like after a tenth of a
  short budget, so it leaves the network no gradual path.

With `distill=True` the training loss adds the original GELU model as a teacher: KL
divergence between the teacher's and the student's token/class distributions (mixed with the
task loss by `distill_alpha`), or, for an encoder without a task head (a sentence-embedding
`BertModel`), 1 − cosine between mean-pooled embeddings. The teacher is a frozen copy of the
model as it was passed in.

`hf-kgelu convert CHECKPOINT --budget …` wraps this for a checkpoint folder.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer, TrainingArguments

from .metrics import IGNORE_INDEX, MODEL_INPUT_KEYS
from .modules import KGELU
from .registry import convert_to_kgelu
from .relu import ReluReport, relu_ize

logger = logging.getLogger(__name__)

METHODS = ("swap", "swap_finetune", "anneal", "readout", "readout_finetune")
EMBEDDING_TASK = "embedding"
DEFAULT_METHOD = "readout_finetune"


# ----------------------------------------------------------------------------------------------
# Distillation


def mean_pooled(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers' mean pooling computes them (padding left out)."""
    if attention_mask is None:
        return last_hidden_state.mean(1)
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def _task_of(model: nn.Module) -> str:
    from .metrics import infer_task

    try:
        return infer_task(model)
    except ValueError:
        if type(model).__name__.endswith("Model") and hasattr(model, "config"):
            return EMBEDDING_TASK  # a bare encoder (BertModel): its output is the embedding
        raise


def distillation_loss(student_out, teacher_out, inputs: dict, task: str, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) per predicted token/example (×T²), or 1 − cos of mean-pooled embeddings."""
    if task == EMBEDDING_TASK:
        mask = inputs.get("attention_mask")
        student = mean_pooled(student_out.last_hidden_state, mask)
        teacher = mean_pooled(teacher_out.last_hidden_state, mask)
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    s_logits, t_logits = student_out.logits.float(), teacher_out.logits.float()
    keep = None
    if task == "causal_lm":
        s_logits, t_logits = s_logits[..., :-1, :], t_logits[..., :-1, :]
        labels = inputs.get("labels")
        if labels is not None:
            keep = labels[..., 1:] != IGNORE_INDEX
        elif inputs.get("attention_mask") is not None:
            keep = inputs["attention_mask"][..., 1:] != 0
    s_log = F.log_softmax(s_logits / temperature, dim=-1)
    t_log = F.log_softmax(t_logits / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1)
    if keep is not None:
        kl = kl[keep]
    return kl.mean() * temperature**2


def without_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability of `model` to 0 (in place; the config is left as it was)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return model


class _DistillationMixin:
    """compute_loss = α·distillation + (1 − α)·task loss (the distillation alone for embeddings)."""

    def __init__(self, *args, teacher: nn.Module | None = None, distill_alpha: float = 0.5, distill_temperature: float = 1.0,
                 distill_task: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        self.distill_task = distill_task
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS or k == "labels"}
        if self.distill_task == EMBEDDING_TASK:
            model_inputs.pop("labels", None)
        outputs = model(**model_inputs)
        with torch.no_grad():
            teacher_outputs = self.teacher(**{k: v for k, v in model_inputs.items() if k != "labels"})
        loss = distillation_loss(outputs, teacher_outputs, inputs, self.distill_task, self.distill_temperature)
        task_loss = getattr(outputs, "loss", None)
        if self.distill_task != EMBEDDING_TASK and task_loss is not None and self.distill_alpha < 1:
            loss = self.distill_alpha * loss + (1 - self.distill_alpha) * task_loss
        return (loss, outputs) if return_outputs else loss


class DistillationTrainer(_DistillationMixin, Trainer):
    """`Trainer` with an optional frozen teacher (see `distillation_loss`)."""


def _distilling_kgelu_trainer():
    from .trainer import KGeluTrainer

    class DistillationKGeluTrainer(_DistillationMixin, KGeluTrainer):
        """`KGeluTrainer` (annealing) with an optional frozen teacher."""

    return DistillationKGeluTrainer


# ----------------------------------------------------------------------------------------------
# Training-free readout correction


def _linear_consumers(model: nn.Module, sites: list[tuple[str, nn.Module]], batch: dict) -> dict[str, nn.Module]:
    """For each activation site, the linear layer that reads its output (found by tracing one batch:
    the first Linear/Conv1D whose input is that very tensor; dropout in eval mode passes it through).
    A site read by something else first (BERT's MLM head: a LayerNorm) has no entry."""
    outputs: dict[int, str] = {}
    consumers: dict[str, nn.Module] = {}
    handles = []
    for name, module in sites:
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(id(o), name)))
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            def pre(m, inputs):
                name = outputs.get(id(inputs[0]))
                if name is not None and name not in consumers:
                    consumers[name] = m
            handles.append(module.register_forward_pre_hook(pre))
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return consumers


def _weight_in_out(layer: nn.Module) -> torch.Tensor:
    """The weight as (in_features, out_features): Conv1D stores it so, nn.Linear transposed."""
    return layer.weight.detach().double().t() if isinstance(layer, nn.Linear) else layer.weight.detach().double()


def _store_weight(layer: nn.Module, weight_in_out: torch.Tensor, bias: torch.Tensor) -> None:
    w = weight_in_out.t() if isinstance(layer, nn.Linear) else weight_in_out
    layer.weight.copy_(w.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.to(layer.weight.dtype))
    else:
        layer.bias.copy_(bias.to(layer.bias.dtype))


@torch.no_grad()
def swap_with_readout_correction(
    model: nn.Module, batches: list[dict], *, mode: str = "least_squares", ridge: float = 1e-2, max_rows: int = 32768,
) -> tuple[nn.Module, ReluReport]:
    """Swap every GELU (or λ-GELU) for ReLU and re-fit the linear layer that reads each activation so
    that it reproduces the original layer's output on real data, without any training.

    Sites are corrected in depth order; each sees the inputs produced by the already-corrected
    layers before it. A site that no linear layer reads directly is swapped without a fit. For a site with inputs X and its reader y = f(X)·W + b (f the original
    activation):
    - mode="bias": b += mean(f(X) − ReLU(X))·W (the first-order fix, as in data-free bias
      correction for quantization);
    - mode="least_squares": [W; b] = argmin ‖[ReLU(X), 1]·M − y‖² + ρ‖M − [W; b]‖², ρ = `ridge` ×
      the mean diagonal of the Gram matrix (pulls toward the original weights where data is thin).
    `batches` are dicts of model inputs (an `attention_mask` leaves padding out); at most
    `max_rows` rows per site are used. The model is not changed; returns (ReLU copy, report)."""
    from .relu import gelu_module_classes

    if mode not in ("least_squares", "bias"):
        raise ValueError(f"mode must be 'least_squares' or 'bias', got {mode!r}")
    if not batches:
        raise ValueError("readout correction needs at least one batch of real inputs")
    work = copy.deepcopy(model).eval()
    kinds = (nn.GELU, KGELU, *gelu_module_classes())
    sites = [(name, module) for name, module in work.named_modules() if name and isinstance(module, kinds)]
    if not sites:
        raise ValueError(f"{type(model).__name__} has no GELU or λ-GELU activation to swap")
    device = next(work.parameters()).device
    batches = [{k: torch.as_tensor(v).to(device) for k, v in b.items() if k in MODEL_INPUT_KEYS} for b in batches]
    consumers = _linear_consumers(work, sites, batches[0])
    unread = [name for name, _ in sites if name not in consumers]
    if len(unread) == len(sites):
        raise ValueError("no linear layer reads any activation's output directly: there is no readout to fit")
    if unread:
        logger.warning("no linear layer reads %s directly: swapped for ReLU without a readout fit", ", ".join(unread))
    relu_hooks = []
    for name, site in sites:
        if name not in consumers:
            relu_hooks.append(site.register_forward_hook(lambda m, i, o: torch.relu(i[0])))
            continue
        rows: list[torch.Tensor] = []
        mask: dict[str, torch.Tensor | None] = {"m": None}

        def grab(module, inputs):
            x = inputs[0]
            m = mask["m"]
            x = x[m.bool()] if m is not None and x.dim() == 3 and x.shape[:2] == m.shape else x.reshape(-1, x.shape[-1])
            if sum(r.shape[0] for r in rows) < max_rows:
                rows.append(x.detach().double().cpu())

        handle = site.register_forward_pre_hook(grab)
        for batch in batches:
            mask["m"] = batch.get("attention_mask")
            work(**batch)
        handle.remove()
        x = torch.cat(rows)[:max_rows]
        reader = consumers[name]
        weight = _weight_in_out(reader).cpu()
        bias = reader.bias.detach().double().cpu() if reader.bias is not None else torch.zeros(weight.shape[1], dtype=torch.float64)
        original = site(x.to(device)).double().cpu()  # the activation being replaced, in float64
        relu = torch.relu(x)
        if mode == "bias":
            bias = bias + (original - relu).mean(0) @ weight
        else:
            target = original @ weight + bias
            features = torch.cat([relu, torch.ones(relu.shape[0], 1, dtype=torch.float64)], dim=1)
            gram = features.T @ features
            rho = ridge * gram.diagonal().mean()
            prior = torch.cat([weight, bias[None]], dim=0)
            solution = torch.linalg.solve(gram + rho * torch.eye(gram.shape[0], dtype=torch.float64),
                                          features.T @ target + rho * prior)
            weight, bias = solution[:-1], solution[-1]
        _store_weight(reader, weight.to(device), bias.to(device))
        # From here on this site computes ReLU, so the next sites see the corrected network's inputs.
        relu_hooks.append(site.register_forward_hook(lambda m, i, o: torch.relu(i[0])))
    for handle in relu_hooks:
        handle.remove()
    relu_model, report = relu_ize(work, inplace=True, include_gelu=True)
    return relu_model, report


# ----------------------------------------------------------------------------------------------
# The recipes


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
    from .trainer import KGeluTrainingArguments

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
    *,
    steps: int,
    method: str = DEFAULT_METHOD,
    distill: bool | None = None,
    teacher: nn.Module | None = None,
    task: str | None = None,
    output_dir: str | os.PathLike = "convert_output",
    learning_rate: float = 3e-4,
    batch_size: int = 16,
    anneal_start: float = 0.0,
    anneal_shape: str = "geometric",
    bound: str = "gate_l1",
    tolerance: float = 0.005,
    target_lambda: float | None = None,
    distill_alpha: float = 0.5,
    distill_temperature: float = 1.0,
    data_collator=None,
    seed: int = 0,
    training_overrides: dict | None = None,
    callbacks: list | None = None,
    calibration_batches: int = 8,
    fitted: tuple[nn.Module, ReluReport] | None = None,
    disable_dropout: bool = True,
) -> ConversionResult:
    """Turn a GELU `model` into a ReLU model with `steps` optimizer steps of fine-tuning on
    `train_dataset` (see the module docstring for the methods). `model` is not changed: the
    recipe works on a copy. Returns a `ConversionResult` whose `.model` has only ReLU where the
    GELUs were, and a config that stock transformers rebuilds.

    "readout*" methods fit the readouts on `calibration_batches` batches of `train_dataset`;
    `fitted` = (ReLU model, report) from an earlier `swap_with_readout_correction` of this same
    model skips that fit (it is copied, not changed). `disable_dropout` turns the student's dropout
    off: a conversion fine-tune of a few steps is a calibration, and dropout noise only costs there.
    `distill=None` distils only where there is no task loss (embedding encoders)."""
    from transformers import default_data_collator

    if method not in METHODS:
        raise ValueError(f"unknown conversion method {method!r}: choose one of {', '.join(METHODS)}")
    if method not in ("swap", "readout") and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise ValueError(f"steps must be a positive number of optimizer steps for method {method!r}, got {steps!r}")
    task = task or _task_of(model)
    if distill is None:  # the benchmark: distillation did not help models that have a task loss
        distill = task == EMBEDDING_TASK
    if task == EMBEDDING_TASK and method not in ("swap", "readout") and not distill:
        raise ValueError(
            f"{type(model).__name__} is an encoder without a task head, so the only training signal is the original model's "
            "embeddings: use distill=True (or leave it at None, which distils exactly for such models)"
        )
    if method not in ("swap", "readout") and distill and teacher is None:
        teacher = copy.deepcopy(model)
    student = copy.deepcopy(model)
    settings = {"method": method, "distill": distill, "steps": steps, "learning_rate": learning_rate, "batch_size": batch_size}
    if method == "swap":
        relu_model, report = relu_ize(student, inplace=True, include_gelu=True)
        return ConversionResult(relu_model, report, method, False, 0, 0.0, settings)

    collator = _with_labels(data_collator or default_data_collator, task)
    if method.startswith("readout"):
        if fitted is not None:
            student, report = copy.deepcopy(fitted[0]), fitted[1]
        else:
            calibration = _calibration_batches(train_dataset, collator, calibration_batches, batch_size, seed)
            student, report = swap_with_readout_correction(student, calibration)
        settings["calibration_batches"] = calibration_batches
        if method == "readout":
            return ConversionResult(student.eval(), report, method, False, 0, 0.0, settings)
    distill_kwargs = {"teacher": teacher if distill else None, "distill_alpha": distill_alpha,
                      "distill_temperature": distill_temperature, "distill_task": task}
    extra = dict(training_overrides or {})
    if method in ("swap_finetune", "readout_finetune"):
        if method == "swap_finetune":
            student, report = relu_ize(student, inplace=True, include_gelu=True)
        args = _training_args(output_dir, steps, learning_rate, batch_size, seed, None, extra)
        trainer = DistillationTrainer(model=student, args=args, train_dataset=train_dataset, data_collator=collator,
                                      callbacks=callbacks, **distill_kwargs)
    else:
        convert_to_kgelu(student, lambda_init=1.0)  # λ = 1 is the GELU the model was trained with
        kgelu = {"kgelu_anneal_start": anneal_start, "kgelu_anneal_shape": anneal_shape, "kgelu_bound": bound,
                 "kgelu_tolerance": tolerance, "kgelu_target_lambda": target_lambda}
        settings.update({k.removeprefix("kgelu_"): v for k, v in kgelu.items()})
        args = _training_args(output_dir, steps, learning_rate, batch_size, seed, kgelu, extra)
        trainer = _distilling_kgelu_trainer()(
            model=student, args=args, train_dataset=train_dataset, data_collator=collator, callbacks=callbacks, **distill_kwargs
        )
    if disable_dropout:
        without_dropout(student)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    student = trainer.model
    if method == "anneal":
        student, report = relu_ize(student, inplace=True)
    student.eval()
    return ConversionResult(student, report, method, distill, steps, seconds, settings, list(trainer.state.log_history))


# ----------------------------------------------------------------------------------------------
# Scores


@torch.no_grad()
def embedding_cosine(model: nn.Module, reference: nn.Module, batches) -> float:
    """Mean cosine similarity between the mean-pooled sentence embeddings of `model` and
    `reference` over `batches` (dicts with input_ids and attention_mask)."""
    total, count = 0.0, 0
    for module in (model, reference):
        module.eval()
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        a = mean_pooled(model(**inputs).last_hidden_state, inputs.get("attention_mask"))
        b = mean_pooled(reference(**inputs).last_hidden_state, inputs.get("attention_mask"))
        cos = F.cosine_similarity(a.float(), b.float(), dim=-1)
        total += float(cos.sum())
        count += cos.numel()
    if count == 0:
        raise ValueError("no sentences to compare")
    return total / count


# ----------------------------------------------------------------------------------------------
# The `hf-kgelu convert` command


def resolve_budget(budget: str | float | int, checkpoint: str | os.PathLike | None) -> int:
    """Optimizer steps from `--budget`: an integer ≥ 1 is a number of steps; a fraction in (0, 1) (or
    "3%") is that share of the checkpoint's own training steps (`global_step` in its trainer_state.json)."""
    import json

    text = str(budget).strip()
    percent = text.endswith("%")
    try:
        value = float(text.rstrip("%"))
    except ValueError:
        raise ValueError(f"--budget must be a number of steps (200), a fraction (0.03) or a percentage (3%), got {budget!r}") from None
    if percent:
        value /= 100.0
    if not percent and value >= 1:
        if value != int(value):
            raise ValueError(f"--budget {budget!r}: a number of steps must be a whole number")
        return int(value)
    if not 0 < value < 1:
        raise ValueError(f"--budget must be > 0, got {budget!r}")
    state = Path(checkpoint or "") / "trainer_state.json"
    if not state.is_file():
        raise ValueError(
            f"--budget {budget} is a share of the checkpoint's training steps, but {state} does not exist: "
            "give the budget as a number of optimizer steps instead (e.g. --budget 200)"
        )
    pretrain_steps = json.loads(state.read_text()).get("global_step") or 0
    if pretrain_steps < 1:
        raise ValueError(f"{state} records no training steps (global_step); give --budget as a number of steps")
    return max(1, math.ceil(value * pretrain_steps))


def load_checkpoint(checkpoint: str | os.PathLike):
    """(model, tokenizer or None) of a transformers checkpoint folder."""
    from .hub import _load_tokenizer
    from .hub import load_checkpoint as load_model

    tokenizer = _load_tokenizer(checkpoint)
    if tokenizer is not None and tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return load_model(checkpoint), tokenizer


def _text_rows(path: Path, tokenizer, block_size: int, task: str):
    """A text file as training rows: fixed token blocks (causal LM), or one row per non-empty
    line, padded per batch (embedding models)."""
    from .metrics import load_eval_data

    if task != EMBEDDING_TASK:
        return load_eval_data(path, tokenizer=tokenizer, block_size=block_size), None
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{path} has no non-empty line to train on")
    rows = [{"text": line} for line in lines]

    def collate(batch):
        return dict(tokenizer([r["text"] for r in batch], padding=True, truncation=True, max_length=block_size, return_tensors="pt"))

    return rows, collate


def _describe_conversion(folder: Path, result: ConversionResult, scores, made_with: str) -> None:
    """The card template describes a direct swap or a λ-GELU training run; say what the conversion did."""
    readme = Path(folder) / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    steps = f"{result.steps} fine-tuning step(s){' with distillation from the GELU original' if result.distill else ''}"
    done = {
        "readout": "every GELU was swapped for ReLU and the linear layer reading each activation was re-fitted by least "
                   "squares so that it reproduces the GELU layer's output on calibration batches (no training)",
        "readout_finetune": "every GELU was swapped for ReLU, the linear layer reading each activation was re-fitted by "
                            f"least squares to reproduce the GELU layer's output on calibration batches, then {steps} followed",
        "swap_finetune": f"every GELU was swapped for ReLU, then {steps} followed",
    }.get(result.method)
    if done is not None:
        text = re.sub(r"by swapping every GELU of a GELU model for ReLU directly\n\(the direct-swap baseline[^)]*\)[^)]*\)",
                      f"by converting a GELU model with {made_with}", text)
        text = re.sub(r"GELU is λ-GELU f\(x\) = x·Φ\(λx\) at λ = 1\. Every GELU was replaced by ReLU without any training\n"
                      r"\(`hf_kgelu\.relu_ize\(model, include_gelu=True\)`\), so the bounds below are those of λ = 1\.",
                      f"Converted from a GELU checkpoint with {made_with}: {done}. The bounds below compare ReLU "
                      "with the GELU it replaced (λ = 1); the re-fit and fine-tuning compensate for that difference.", text)
    if scores is not None:
        metric, before, after = scores
        section = (f"\n## Original GELU model vs this ReLU model\n\n| model | {metric} |\n|---|---:|\n"
                   f"| original (GELU) | {before:.4f} |\n| this model (ReLU) | {after:.4f} |\n")
        marker = "\n## Citation"
        text = text.replace(marker, section + marker, 1) if marker in text else text + section
    readme.write_text(text, encoding="utf-8")


def conversion_scores(original: nn.Module, result: ConversionResult, eval_dataset, task: str, batch_size: int = 32):
    """(metric, original GELU model's score, converted ReLU model's score) on `eval_dataset`:
    accuracy (classification) or perplexity (causal/masked LM)."""
    from .metrics import evaluate_model

    metric = "accuracy" if task == "classification" else "perplexity"
    return (metric, evaluate_model(original, eval_dataset, task=task, batch_size=batch_size)[metric],
            evaluate_model(result.model, eval_dataset, task=task, batch_size=batch_size)[metric])


def save_conversion(result: ConversionResult, output_dir: str | os.PathLike, *, processor=None, overwrite: bool = False,
                    scores: tuple[str, float, float] | None = None, made_with: str = "`hf-kgelu convert`",
                    repo_id: str | None = None, base_model: str | None = None, dataset_name: str | None = None) -> Path:
    """Save `result.model` as a stock-transformers ReLU folder (`save_relu_model`) whose card says what
    the conversion did (`made_with`: the command that did it) and, with `scores`, shows original vs ReLU."""
    from .hub import save_relu_model

    settings = result.settings
    training = {"conversion": f"{result.method}{' + distillation' if result.distill else ''}, {result.steps} steps"}
    if result.method == "anneal":
        training.update({key: settings.get(key) for key in ("anneal_start", "bound", "tolerance")})
    if result.method.startswith("readout"):
        training["readout fit"] = f"least squares on {settings.get('calibration_batches')} batches of {settings.get('batch_size')}"
    folder = save_relu_model(result.model, output_dir, report=result.report, processor=processor, overwrite=overwrite,
                             training=training, repo_id=repo_id, base_model=base_model,
                             datasets=[dataset_name] if dataset_name else None, eval_dataset=dataset_name if scores else None)
    _describe_conversion(Path(folder), result, scores, made_with)
    return Path(folder)


def run_convert(args) -> int:
    """`hf-kgelu convert`: load, convert with the chosen recipe, evaluate, save (see `_add_convert` in cli.py)."""
    import sys

    from .hub import check_output_dir
    from .metrics import load_eval_data

    def fail(message: str) -> int:
        print(f"hf-kgelu convert: error: {message}", file=sys.stderr)
        return 2

    scratch = None
    try:
        check_output_dir(args.output_dir, overwrite=args.overwrite)
        steps = resolve_budget(args.budget, args.checkpoint)
        model, tokenizer = load_checkpoint(args.checkpoint)
        task = args.task or _task_of(model)
        data_path = Path(args.data)
        collator = None
        if data_path.is_dir():
            train = load_eval_data(data_path, split=args.split or "train")
        elif data_path.is_file():
            if tokenizer is None:
                return fail(f"{data_path} is a text file, but {args.checkpoint} has no tokenizer to read it with")
            train, collator = _text_rows(data_path, tokenizer, args.block_size, task)
        else:
            return fail(f"--data {data_path} is neither a datasets folder nor a text file")
        scratch = tempfile.mkdtemp(prefix="hf-kgelu-convert-")  # the trainer's output_dir: nothing of it is kept
        trained = args.method not in ("swap", "readout")
        print(f"converting {args.checkpoint} ({type(model).__name__}, {task}) with {args.method}"
              f"{' + distillation' if trained and (args.distill or task == EMBEDDING_TASK) else ''}"
              f"{f' for {steps} steps' if trained else ''}", flush=True)
        result = convert_gelu_to_relu(
            model, train, steps=steps, method=args.method, distill=True if args.distill else None, task=task,
            output_dir=scratch,
            learning_rate=args.learning_rate, batch_size=args.batch_size, anneal_start=args.anneal_start,
            anneal_shape=args.anneal_shape, bound=args.bound, tolerance=args.tolerance, data_collator=collator, seed=args.seed,
            calibration_batches=args.calibration_batches,
        )
        scores = None  # (metric, original GELU model, converted ReLU model)
        if args.eval_data and task == EMBEDDING_TASK:
            rows, collate = _text_rows(Path(args.eval_data), tokenizer, args.block_size, task)
            batches = [collate(rows[i : i + 32]) for i in range(0, len(rows), 32)]
            scores = ("mean cosine of sentence embeddings to the original's", 1.0, embedding_cosine(result.model, model, batches))
        if args.eval_data and task != EMBEDDING_TASK:
            evaluation = load_eval_data(args.eval_data, split=args.eval_split, tokenizer=tokenizer, block_size=args.block_size)
            scores = conversion_scores(model, result, evaluation, task)
        if scores is not None:
            print(f"{scores[0]}: GELU {scores[1]:.4f} → ReLU {scores[2]:.4f}", flush=True)
        folder = save_conversion(result, args.output_dir, processor=tokenizer, overwrite=args.overwrite, scores=scores)
    except (ValueError, FileNotFoundError, FileExistsError, OSError) as error:
        return fail(str(error))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"ReLU model written to {folder}")
    return 0
