"""Never return a model worse than the no-training fit: after a conversion fine-tune, the readout
fit alone and the fine-tuned model are measured on held-out data, and the better one is kept.

The held-out data is the caller's evaluation data when there is some; otherwise
`ConversionConfig.held_out_fraction` (10 %) of the training rows, at most HELD_OUT_MAX_ROWS, in a
fixed random draw: those rows then neither calibrate nor train."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..metrics import embedding_cosine, evaluate_model, metric_of
from .config import EMBEDDING_TASK

logger = logging.getLogger(__name__)

HELD_OUT_MAX_ROWS = 512
FINE_TUNED, NO_TRAINING = "fine-tuned", "no training"
READOUT_FIT, DIRECT_SWAP = "the readout fit alone", "the direct swap"  # the no-training model compared with


@dataclass
class Selection:
    """The held-out comparison that decided which model a conversion returns."""

    metric: str
    higher_is_better: bool
    no_training: float  # the readout fit alone (the direct swap where no readout can be fitted)
    fine_tuned: float
    kept: str  # FINE_TUNED or NO_TRAINING
    held_out: str  # what the held-out data was
    baseline: str = READOUT_FIT

    @property
    def numbers(self) -> str:
        return (f"{self.metric} {self.fine_tuned:.4f} fine-tuned vs {self.no_training:.4f} for {self.baseline}, "
                f"on {self.held_out}")

    def describe(self) -> str:
        """One line: what was kept and the numbers that decided it."""
        if self.kept == FINE_TUNED:
            return f"kept the fine-tuned model ({self.numbers})"
        return f"kept {self.baseline}: the fine-tune made it worse ({self.numbers})"


def _subset(dataset, indices: list[int]):
    if hasattr(dataset, "select"):  # a datasets.Dataset stays one
        return dataset.select(indices)
    if isinstance(dataset, (list, tuple)):
        return [dataset[i] for i in indices]
    return torch.utils.data.Subset(dataset, indices)


def split_held_out(dataset, fraction: float, seed: int):
    """(training rows, held-out rows or None, what was held out): `fraction` of the rows (at most
    HELD_OUT_MAX_ROWS) drawn with a private generator. Data without a length (a stream), or too
    small to spare a row, holds nothing out."""
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        return dataset, None, "the training data is a stream, so none was held out"
    total = len(dataset)
    size = min(HELD_OUT_MAX_ROWS, round(fraction * total))
    if size < 1 or size >= total:
        return dataset, None, f"the training data has too few rows ({total}) to hold {fraction:.0%} out"
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    held_out, kept = sorted(order[:size]), sorted(order[size:])
    note = f"{size} rows held out of the {total} training rows ({size / total:.0%}; they neither calibrated nor trained)"
    return _subset(dataset, kept), _subset(dataset, held_out), note


def held_out_batches(rows, collate, batch_size: int) -> list[dict]:
    return [collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
            for start in range(0, len(rows), batch_size)]


@torch.no_grad()
def held_out_score(model: nn.Module, batches: list[dict], task: str, reference: nn.Module | None = None) -> float:
    """The task's metric on the batches, or for an encoder the mean cosine to `reference`'s embeddings."""
    if task == EMBEDDING_TASK:
        return embedding_cosine(model, reference, batches)
    return evaluate_model(model, iter(batches), task)[metric_of(task)[0]]


def keep_better(no_training: nn.Module, fine_tuned: nn.Module, batches: list[dict], task: str, held_out: str,
                reference: nn.Module | None = None, baseline: str = READOUT_FIT) -> tuple[nn.Module, Selection]:
    """The better of the two models on the held-out batches (the fine-tuned one on a tie), and the record."""
    metric, higher = metric_of(task)
    scores = [held_out_score(model, batches, task, reference) for model in (no_training, fine_tuned)]
    better_or_equal = scores[1] >= scores[0] if higher else scores[1] <= scores[0]
    worse = not better_or_equal and not math.isnan(scores[0])  # a NaN (diverged) fine-tune is worse
    selection = Selection(metric, higher, scores[0], scores[1], NO_TRAINING if worse else FINE_TUNED, held_out, baseline)
    (logger.warning if worse else logger.info)("conversion: %s", selection.describe())
    return (no_training if worse else fine_tuned), selection
