"""Local evaluation metrics (no `evaluate`, no Hub): accuracy, perplexity, and `evaluate_model`.

`evaluate_model` runs a model over batches of dicts whose keys are the model's inputs
(`pixel_values`, `input_ids`, `attention_mask`, `token_type_ids`) plus `labels` (or `label`),
and returns {"accuracy": ...} for classification or {"perplexity": ..., "loss": ...} for
language models. The LM loss is the mean next-token negative log-likelihood over every
predicted token of the whole data set (not a mean of batch means).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("classification", "causal_lm", "masked_lm")
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "pixel_values")
IGNORE_INDEX = -100
_USED_KEYS = (*MODEL_INPUT_KEYS, "labels", "label")  # other columns (raw text, ids) are not collated
# Padding value per key when rows of a batch differ in length.
_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX, "label": IGNORE_INDEX}


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
            yield {key: _collate_column(key, column) for key, column in rows.items() if key in _USED_KEYS}
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


EVAL_SPLITS = ("validation", "test", "eval", "train")


def load_eval_data(path, *, split: str | None = None, tokenizer=None, block_size: int = 128, max_blocks: int | None = None):
    """Evaluation data from disk, in one of two forms:

    - a folder written by `datasets.Dataset.save_to_disk` (or a DatasetDict: `split`, else the
      first of validation/test/eval/train), with columns named like the model's inputs
      (`pixel_values` or `input_ids`, optional `attention_mask`) and `labels`/`label`;
    - a text file, for language models: tokenised with `tokenizer` and cut into consecutive
      `block_size`-token blocks (the tail shorter than a block is dropped).
    """
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            name = split or next((s for s in EVAL_SPLITS if s in data), None)
            if name not in data:
                raise ValueError(f"{path} has splits {sorted(data)}; choose one with split= (--eval-split)")
            data = data[name]
        columns = [c for c in data.column_names if c in _USED_KEYS]
        if not any(c in MODEL_INPUT_KEYS for c in columns):
            raise ValueError(f"{path}: no model input column ({', '.join(MODEL_INPUT_KEYS)}); its columns: {data.column_names}")
        return data.with_format("torch", columns=columns)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation data {path} is neither a datasets folder nor a text file")
    if tokenizer is None:
        raise ValueError(f"{path} is a text file: evaluating on text needs the checkpoint's tokenizer (none was found)")
    text = path.read_text(encoding="utf-8")
    ids: list[int] = []
    for start in range(0, len(text), 100_000):  # the fast tokenizer is slow on one huge string
        ids.extend(tokenizer(text[start : start + 100_000])["input_ids"])
    n_blocks = len(ids) // block_size if max_blocks is None else min(len(ids) // block_size, max_blocks)
    if n_blocks < 1:
        raise ValueError(f"{path} holds {len(ids)} tokens, fewer than one block of {block_size}: use a longer text or --block-size")
    blocks = torch.tensor(ids[: n_blocks * block_size]).reshape(n_blocks, block_size)
    return [{"input_ids": block} for block in blocks]
