"""Every evaluation metric in one place: accuracy, perplexity, `evaluate_model`, the classification
loss, the sentence-embedding cosine, the Trainer's `compute_metrics`, and `load_metric`, the one
door to Hugging Face `evaluate` metrics.

`evaluate_model` runs a model over batches of dicts whose keys are the model's inputs
(`pixel_values`, `input_ids`, `attention_mask`, `token_type_ids`) plus `labels` (or `label`),
and returns {"accuracy": ...} for classification or {"perplexity": ..., "loss": ...} for
language models. The LM loss is the mean next-token negative log-likelihood over every
predicted token of the whole data set (not a mean of batch means).

`metric=` (here, in `substitution_report`, the scripts' `--metric`) takes a name, a path or an
`evaluate` module; `load_metric` says how each is found, offline first. Without it the exact
built-in accuracy / perplexity are used, and `evaluate` is not even imported.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

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
    original_label: str = "GELU original"

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


# Metrics through `evaluate`, offline first


# Outputs whose words say lower is better; every other metric is taken as higher-is-better.
_LOWER_IS_BETTER = {"loss", "perplexity", "error", "wer", "cer", "mse", "mae", "rmse"}


@dataclass(frozen=True)
class Metric:
    """The metric `evaluate_model`, `substitution_report` and the Trainer report.

    `module=None` is hf_kgelu's exact built-in accuracy or perplexity. Otherwise `module` is an
    `evaluate` EvaluationModule or CombinedEvaluations, fed with predicted and true ids: class ids
    for classification, next-token ids for language models, label -100 left out. `name` is the
    key of its output that is reported (its only output when the module's name is not a key).
    Build one directly to say `higher_is_better` or the reported key of an unusual module."""

    name: str
    higher_is_better: bool
    module: Any = None
    source: str = "built-in"

    def add_batch(self, predictions: torch.Tensor, references: torch.Tensor) -> None:
        self.module.add_batch(predictions=predictions.cpu().numpy(), references=references.cpu().numpy())

    def compute(self, **pairs) -> dict[str, float]:
        """The module's results as floats (from the added batches, or from `predictions=`/`references=`)."""
        results = {key: float(value) for key, value in self.module.compute(**pairs).items() if _is_number(value)}
        if self.name not in results:
            if len(results) != 1:
                raise ValueError(f"the metric {self.name!r} returned {sorted(results)}: pick the key to report with "
                                 "hf_kgelu.metrics.Metric(name=KEY, higher_is_better=..., module=...)")
            results[self.name] = next(iter(results.values()))
        return results


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def is_evaluate_module(obj) -> bool:
    """Whether `obj` is an `evaluate` EvaluationModule or CombinedEvaluations (without importing evaluate)."""
    evaluate = sys.modules.get("evaluate")
    return evaluate is not None and isinstance(obj, (evaluate.EvaluationModule, evaluate.CombinedEvaluations))


def _module_metric(module, source: str) -> Metric:
    modules = getattr(module, "evaluation_modules", [module])
    name = modules[0].name
    higher = not any(word in _LOWER_IS_BETTER for word in name.lower().replace("-", "_").split("_"))
    return Metric(name, higher, module, source)


@contextlib.contextmanager
def _evaluate_switches(evaluate, offline: bool):
    """evaluate reads its switches once, at import, and ignores HF_HUB_OFFLINE: for one load, no
    download-count ping (three 10 s requests), and with `offline` no network at all."""
    config = evaluate.config
    before = config.HF_EVALUATE_OFFLINE, config.HF_UPDATE_DOWNLOAD_COUNTS
    config.HF_EVALUATE_OFFLINE, config.HF_UPDATE_DOWNLOAD_COUNTS = before[0] or offline, False
    try:
        yield
    finally:
        config.HF_EVALUATE_OFFLINE, config.HF_UPDATE_DOWNLOAD_COUNTS = before


def _load_by_name(name: str) -> tuple[Any, str]:
    """(module, where it came from) or (None, why not): evaluate's cache first (no network), then the
    Hub unless it is offline (one request; a network that swallows it costs evaluate's 100 s timeout)."""
    import evaluate
    from huggingface_hub import constants

    def load(offline: bool):
        with _evaluate_switches(evaluate, offline):
            return evaluate.load(name, module_type="metric", keep_in_memory=True)

    try:
        return load(offline=True), "evaluate cache"
    except (FileNotFoundError, ConnectionError):
        reason = "not in evaluate's cache"
    except ImportError as error:  # cached, but the script needs a package that is missing
        reason = f"cached, but {type(error).__name__}: {error}"
    if constants.HF_HUB_OFFLINE or evaluate.config.HF_EVALUATE_OFFLINE:
        return None, f"{reason}, and the Hub is offline (HF_HUB_OFFLINE)"
    try:
        return load(offline=False), "the Hub"
    except (FileNotFoundError, ConnectionError, ImportError) as error:
        return None, f"{reason}, and the Hub did not serve it ({type(error).__name__})"


def load_metric(metric=None, task: str | None = None) -> Metric:
    """The `Metric` for `metric`, offline first:

    - None: the task's exact built-in metric (accuracy, or perplexity for language models);
    - a `Metric`, or an `evaluate` module (EvaluationModule, CombinedEvaluations): used as given;
    - a path to a metric script or to a folder holding `<folder name>.py`: loaded from there;
    - "perplexity": always the built-in (evaluate's perplexity scores a Hub model by id, not this one);
    - any other name ("accuracy", "f1", "owner/metric"): evaluate's cache, then the Hub unless it is
      offline. "accuracy" falls back to the built-in one with a one-line note; others raise ValueError.
    """
    if isinstance(metric, Metric):
        return metric
    if metric is None:
        return Metric(*metric_of(task or "classification"))
    if is_evaluate_module(metric):
        return _module_metric(metric, "module")
    if not isinstance(metric, (str, os.PathLike)):
        raise TypeError(f"metric must be a name, a path or an evaluate module, got {type(metric).__name__}")
    spec = os.fspath(metric)
    if os.path.exists(spec):
        import evaluate

        return _module_metric(evaluate.load(spec, keep_in_memory=True), f"local module {spec}")
    if spec == "perplexity":
        return Metric("perplexity", False)
    module, where = _load_by_name(spec)
    if module is not None:
        return _module_metric(module, where)
    if spec == "accuracy":
        logger.warning("evaluate's 'accuracy' cannot be fetched (%s): using hf_kgelu's built-in exact accuracy", where)
        return Metric("accuracy", True)
    raise ValueError(f"cannot load the metric {spec!r}: {where}. Give a path to a local evaluate metric script (or its "
                     "folder), run once online to cache it, or use accuracy / perplexity (built in)")


def _predicted_pairs(predicted: torch.Tensor, labels: torch.Tensor, task: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true ids, flat, labels -100 left out; for a causal LM, position t predicts token t + 1."""
    if task == "causal_lm":
        predicted, labels = predicted[..., :-1], labels[..., 1:]
    if predicted.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predicted.shape)} and labels {tuple(labels.shape)} do not match")
    keep = labels != IGNORE_INDEX
    return predicted[keep], labels[keep]


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
def evaluate_model(model: nn.Module, data, task: str | None = None, batch_size: int = 32, metric=None) -> dict[str, float]:
    """Run `model` over `data` and return {"accuracy"} (classification) or {"perplexity", "loss"}
    (causal_lm / masked_lm). The model's train/eval mode is restored afterwards.

    Causal LM without labels uses `input_ids` (padding masked out by `attention_mask`) and
    scores each token from the ones before it; masked LM needs `labels` (-100 = not scored).
    `metric` (see `load_metric`: a name, a path, an `evaluate` module) adds its results: it gets
    the predicted and true class ids, or next-token ids for a language model ("accuracy" there is
    next-token accuracy).
    """
    task = task or infer_task(model)
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    metric = load_metric(metric, task)
    if metric.module is None and metric.name == "perplexity" and task == "classification":
        raise ValueError("perplexity needs a language model: a classifier reports accuracy (or pass an evaluate metric)")
    count_correct = metric.module is None and metric.name == "accuracy"
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
            if task == "classification" and labels is None:
                raise ValueError("classification data needs a `labels` (or `label`) column")
            if task != "classification" and labels is None:
                if task == "masked_lm":
                    raise ValueError("masked-LM data needs `labels` (the masked tokens, -100 elsewhere)")
                labels = inputs["input_ids"].clone()
                if "attention_mask" in inputs:
                    labels[inputs["attention_mask"] == 0] = IGNORE_INDEX
            labels = labels.to(device)
            if count_correct or metric.module is not None:
                predicted, references = _predicted_pairs(logits.argmax(-1), labels, task)
                correct += int((predicted == references).sum())
                examples += references.numel()
                if metric.module is not None:
                    metric.add_batch(predicted, references)
            if task == "classification":
                continue
            if task == "causal_lm":  # token t is predicted from tokens < t
                logits, labels = logits[..., :-1, :], labels[..., 1:]
            nll_sum += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=IGNORE_INDEX, reduction="sum"))
            tokens += int((labels != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    results: dict[str, float] = {}
    if count_correct:
        if examples == 0:
            raise ValueError("no labelled examples to evaluate")
        results["accuracy"] = correct / examples
    if task != "classification":
        if tokens == 0:
            raise ValueError("no tokens to score: every label is -100 or the sequences are one token long")
        loss = nll_sum / tokens
        results.update(perplexity=perplexity(loss), loss=loss)
    if metric.module is not None:
        results.update(metric.compute())
    return results


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

    def embedded(module, inputs):  # on the module's own device; the two models may sit on different ones
        device = _model_device(module)
        inputs = {k: torch.as_tensor(v).to(device) for k, v in inputs.items()}
        return mean_pooled(module(**inputs).last_hidden_state, inputs.get("attention_mask")).float().cpu()

    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        cos = F.cosine_similarity(embedded(model, inputs), embedded(reference, inputs), dim=-1)
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


class PredictionMetrics:
    """The Trainer's `compute_metrics` for a `Metric` on predicted ids (logits are argmax-ed first):
    class ids, or next-token ids for a causal LM (`task="causal_lm"` shifts by one token)."""

    def __init__(self, metric: Metric, task: str | None):
        self.metric, self.task = metric, task

    def __call__(self, eval_pred) -> dict[str, float]:
        predicted, labels = torch.as_tensor(eval_pred.predictions), torch.as_tensor(eval_pred.label_ids)
        if predicted.is_floating_point() and predicted.dim() == labels.dim() + 1:
            predicted = predicted.argmax(-1)
        predicted, references = _predicted_pairs(predicted, labels, self.task)
        if self.metric.module is None:
            return {self.metric.name: accuracy(predicted, references)}
        return self.metric.compute(predictions=predicted.numpy(), references=references.numpy())


def as_trainer_metrics(metric, task: str | None) -> dict:
    """`compute_metrics` and `preprocess_logits_for_metrics` for a Trainer computing `metric` (an
    `evaluate` module, a `Metric`, a name or a path: see `load_metric`) on predicted ids, so the
    evaluation loop gathers ids, not logits. `KGeluTrainer` applies it to an `evaluate` module given
    as `compute_metrics`; pass it to a stock `Trainer` yourself."""
    metric = load_metric(metric, task)
    if metric.module is None and metric.name == "perplexity":
        raise ValueError("perplexity is not computed from predicted ids: use hf_kgelu.metrics.trainer_metrics('causal_lm')")
    return {"compute_metrics": PredictionMetrics(metric, task), "preprocess_logits_for_metrics": _argmax_logits}


def trainer_metrics(task: str, metric=None) -> tuple[dict, str, bool]:
    """(Trainer kwargs computing the metric, the metric name, whether higher is better): the task's
    exact built-in one by default (perplexity from summed token NLLs), else `metric` (`load_metric`)."""
    if task not in ("classification", "causal_lm"):
        raise ValueError(f"the pipeline handles classification and causal_lm, not {task!r}")
    metric = load_metric(metric, task)
    if metric.module is not None or metric.name != metric_of(task)[0]:
        return as_trainer_metrics(metric, task), metric.name, metric.higher_is_better
    if task == "classification":
        return {"compute_metrics": _accuracy_metrics, "preprocess_logits_for_metrics": _argmax_logits}, "accuracy", True
    return {"compute_metrics": _perplexity_metrics, "preprocess_logits_for_metrics": _token_nll}, "perplexity", False
