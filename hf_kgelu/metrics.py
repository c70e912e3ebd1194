"""Every evaluation metric in one place (offline, no Hub): accuracy, perplexity, `evaluate_model`,
the classification loss, the sentence-embedding cosine, and the Trainer's `compute_metrics`.

`evaluate_model` runs a model over batches of dicts whose keys are the model's inputs
(`pixel_values`, `input_ids`, `attention_mask`, `token_type_ids`) plus `labels` (or `label`),
and returns {"accuracy": ...} for classification or {"perplexity": ..., "loss": ...} for
language models. The LM loss is the mean next-token negative log-likelihood over every
predicted token of the whole data set (not a mean of batch means).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("classification", "causal_lm", "masked_lm")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")
IGNORE_INDEX = -100
USED_KEYS = (*MODEL_INPUT_KEYS, "labels", "label")  # other columns (raw text, ids) are not collated
# Padding value per key when rows of a batch differ in length.
_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX, "label": IGNORE_INDEX}


def metric_of(task: str) -> tuple[str, bool]:
    """(metric name, whether higher is better) of a task."""
    if task == "classification":
        return "accuracy", True
    if task in ("causal_lm", "masked_lm"):
        return "perplexity", False
    if task == "embedding":
        return "mean cosine to the original's embeddings", True
    raise ValueError(f"unknown task {task!r}: choose one of {', '.join((*TASKS, 'embedding'))}")


@dataclass
class Comparison:
    """One metric of an original model and of the ReLU model made from it, on the same data."""

    metric: str
    higher_is_better: bool
    original: float
    relu: float
    original_label: str = "original (GELU)"

    @property
    def change(self) -> float:
        return self.relu - self.original

    def as_markdown(self) -> str:
        return (f"| model | {self.metric} |\n|---|---:|\n| {self.original_label} | {self.original:.4f} |\n"
                f"| this model (ReLU) | {self.relu:.4f} |")

    def card_results(self) -> list[tuple[str, float]]:
        """(name, value) pairs for the model card's Hub eval results."""
        return [(f"{self.metric} (ReLU, this model)", self.relu), (f"{self.metric} ({self.original_label})", self.original)]


def accuracy(predictions, labels) -> float:
    """Fraction of correct predictions. `predictions` are class ids, or logits (argmax over the
    last dimension); labels equal to -100 are ignored."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    if predictions.is_floating_point() and predictions.dim() == labels.dim() + 1:
        predictions = predictions.argmax(-1)
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} do not match")
    keep = labels != IGNORE_INDEX
    total = int(keep.sum())
    if total == 0:
        raise ValueError("accuracy needs at least one labelled example")
    return float((predictions[keep] == labels[keep]).sum()) / total


def perplexity(loss: float) -> float:
    """exp(mean negative log-likelihood in nats); +inf when that overflows a float."""
    loss = float(loss)
    if math.isnan(loss):
        return float("nan")
    return math.exp(loss) if loss < 709.0 else float("inf")


def infer_task(model: nn.Module) -> str:
    """"classification", "causal_lm" or "masked_lm", from the model's class or config architectures."""
    names = [type(model).__name__]
    config = getattr(model, "config", None)
    names += list(getattr(config, "architectures", None) or [])
    for name in names:
        if name.endswith(("ForCausalLM", "LMHeadModel")):
            return "causal_lm"
        if name.endswith("ForMaskedLM"):
            return "masked_lm"
        if name.endswith(("ForImageClassification", "ForSequenceClassification")):
            return "classification"
    raise ValueError(
        f"cannot tell which metric fits {type(model).__name__}: pass task= one of {', '.join(TASKS)} "
        "(classification reports accuracy, causal_lm/masked_lm report perplexity)"
    )


def _collate_column(key: str, column) -> torch.Tensor:
    if isinstance(column, torch.Tensor):
        return column
    values = [torch.as_tensor(v) for v in column]
    if all(v.shape == values[0].shape for v in values):
        return torch.stack(values)
    if key in _PAD_VALUES and all(v.dim() == 1 for v in values):
        return nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=_PAD_VALUES[key])
    raise ValueError(f"rows of {key!r} differ in shape and cannot be padded: give fixed-size examples or a DataLoader")


def iter_batches(data, batch_size: int = 32) -> Iterable[Mapping]:
    """Batches of dicts from a DataLoader / iterable of batch dicts, a `datasets.Dataset` or a list
    of example dicts, or one dict of tensors (a single batch)."""
    if isinstance(data, Mapping):
        yield data
        return
    if isinstance(data, torch.utils.data.DataLoader):
        yield from data
        return
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        for start in range(0, len(data), batch_size):
            rows = data[start : start + batch_size]
            if not isinstance(rows, Mapping):  # a list of example dicts; a datasets.Dataset slice is already columns
                rows = {key: [row[key] for row in rows] for key in rows[0]}
            yield {key: _collate_column(key, column) for key, column in rows.items() if key in USED_KEYS}
        return
    yield from data


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype float inputs (pixel values) must have: a bf16 model takes bf16 images."""
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _labels(batch: Mapping) -> torch.Tensor | None:
    value = batch.get("labels", batch.get("label"))
    return None if value is None else torch.as_tensor(value)


@torch.no_grad()
def evaluate_model(model: nn.Module, data, task: str | None = None, batch_size: int = 32) -> dict[str, float]:
    """Run `model` over `data` and return {"accuracy"} (classification) or {"perplexity", "loss"}
    (causal_lm / masked_lm). The model's train/eval mode is restored afterwards.

    Causal LM without labels uses `input_ids` (padding masked out by `attention_mask`) and
    scores each token from the ones before it; masked LM needs `labels` (-100 = not scored).
    """
    task = task or infer_task(model)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    device, dtype = _model_device(model), _model_dtype(model)
    was_training = model.training
    model.eval()
    correct = examples = 0
    nll_sum, tokens = 0.0, 0
    try:
        for batch in iter_batches(data, batch_size):
            inputs = {k: torch.as_tensor(v).to(device) for k, v in batch.items() if k in MODEL_INPUT_KEYS}
            inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
            if not inputs:
                raise ValueError(f"a batch has none of the model input keys {MODEL_INPUT_KEYS}; its keys: {sorted(batch)}")
            labels = _labels(batch)
            logits = model(**inputs).logits.float()
            if task == "classification":
                if labels is None:
                    raise ValueError("classification data needs a `labels` (or `label`) column")
                labels = labels.to(device)
                predicted = logits.argmax(-1)
                keep = labels != IGNORE_INDEX
                correct += int((predicted[keep] == labels[keep]).sum())
                examples += int(keep.sum())
                continue
            if labels is None:
                if task == "masked_lm":
                    raise ValueError("masked-LM data needs `labels` (the masked tokens, -100 elsewhere)")
                labels = inputs["input_ids"].clone()
                if "attention_mask" in inputs:
                    labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
            labels = labels.to(device)
            if task == "causal_lm":  # token t is predicted from tokens < t
                logits, labels = logits[..., :-1, :], labels[..., 1:]
            nll_sum += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum"))
            tokens += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    if task == "classification":
        if examples == 0:
            raise ValueError("no labelled examples to evaluate")
        return {"accuracy": correct / examples}
    if tokens == 0:
        raise ValueError("no tokens to score: every label is -100 or the sequences are one token long")
    loss = nll_sum / tokens
    return {"perplexity": perplexity(loss), "loss": loss}


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


def mean_pooled(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Sentence embeddings as sentence-transformers' mean pooling computes them (padding left out)."""
    if attention_mask is None:
        return last_hidden_state.mean(1)
    mask = attention_mask.unsqueeze(-1).to(last_hidden_state.dtype)
    return (last_hidden_state * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


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
