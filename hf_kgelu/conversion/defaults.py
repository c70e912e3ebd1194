"""What a conversion chooses when its caller leaves a setting at None: the fine-tune's learning
rate (from the checkpoint's own training record) and the readout fit's calibration size (from the
data). Every choice comes with its reason, which the result and the model card repeat.

The rules and the measurements behind them (CHANGELOG.md, "conversion defaults", has the commands):
- learning rate = RECORDED_LR_SHARE × the peak rate the checkpoint was trained with, read from its
  training_args.bin (the float stored under "learning_rate", found by reading the pickle's opcodes:
  nothing is unpickled) or else the largest rate its trainer_state.json logged. On two small
  byte-level GPT-2s pretrained here, 0.3× beat 0.1× at every budget tried (3 %, 10 %, 25 % of their
  steps); 1× did better still on these under-trained models except at the shortest budget (3 %),
  where it was worse than 0.3×: 0.3 is the middle a converged model, with more to lose, can afford.
- with no training record (what a published pretrained model usually is) it is PRETRAINED_LR,
  the rate pretrained transformers are fine-tuned at (BERT's 2e-5–5e-5; all-MiniLM-L6-v2's own
  card: 2e-5). On all-MiniLM-L6-v2 (10 steps after the readout fit): 5e-6 to 2e-5 leave the
  embeddings where the fit put them, 5e-5 costs 0.001 of cosine, 2e-4 (the old default) 0.018.
- calibration: batches of the (training) data until every readout has ROWS_PER_UNKNOWN rows per
  unknown of its least-squares fit (its input width + 1, the bias), at most the fit's row cap.
  MiniLM's cosine after the fit alone: 0.969 / 0.978 / 0.982 / 0.983 at 1.7 / 3.5 / 6.9 / 13.8
  rows per unknown; the fit's time grows with the rows.
"""

from __future__ import annotations

import json
import math
import os
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

RECORDED_LR_SHARE = 0.3
PRETRAINED_LR = 2e-5
ROWS_PER_UNKNOWN = 8
_MEMO_OPCODES = {"MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"}


@dataclass(frozen=True)
class Choice:
    """A setting the conversion chose, and why."""

    value: Any
    reason: str

    def __str__(self) -> str:
        value = f"{self.value:g}" if isinstance(self.value, float) else str(self.value)
        return f"{value} (chosen: {self.reason})"


def _positive(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0 else None


def _training_args_learning_rate(path: Path) -> float | None:
    """The `learning_rate` a Trainer's training_args.bin holds, without unpickling it: the pickle's
    opcodes are only listed (`pickletools.genops` runs nothing), and the float stored right after
    the key "learning_rate" is read. None when the file holds no such float."""
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is <name>/data.pkl
            with zipfile.ZipFile(path) as archive:
                name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                if name is None:
                    return None
                raw = archive.read(name)
        else:
            raw = path.read_bytes()
        after_key = False
        for opcode, argument, _ in pickletools.genops(raw):
            if after_key and opcode.name not in _MEMO_OPCODES:
                return _positive(argument) if opcode.name in ("BINFLOAT", "FLOAT") else None
            after_key = after_key or argument == "learning_rate"
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):  # unreadable: as if there were no record
        return None
    return None


def _trainer_state_learning_rate(path: Path) -> float | None:
    """The largest learning rate a trainer_state.json logged (its peak, or just below it)."""
    try:
        history = json.loads(path.read_text()).get("log_history") or []
    except (OSError, ValueError, AttributeError):
        return None
    rates = [_positive(entry.get("learning_rate")) for entry in history if isinstance(entry, dict)]
    rates = [rate for rate in rates if rate is not None]
    return max(rates) if rates else None


def recorded_learning_rate(checkpoint: str | os.PathLike | None) -> tuple[float, str] | None:
    """(peak learning rate, the file it came from) of the training that made the checkpoint folder
    `checkpoint`, or None when the folder records none (or is not a local folder)."""
    if not checkpoint or not Path(checkpoint).is_dir():
        return None
    folder = Path(checkpoint)
    for name, read in (("training_args.bin", _training_args_learning_rate), ("trainer_state.json", _trainer_state_learning_rate)):
        if (folder / name).is_file():
            rate = read(folder / name)
            if rate is not None:
                return rate, name
    return None


def choose_learning_rate(checkpoint: str | os.PathLike | None) -> Choice:
    """The fine-tune's peak learning rate for a checkpoint folder (see the module's rules)."""
    recorded = recorded_learning_rate(checkpoint)
    if recorded is not None:
        rate, source = recorded
        return Choice(float(f"{RECORDED_LR_SHARE * rate:.3g}"),
                      f"{RECORDED_LR_SHARE:g} × the peak rate {rate:.3g} of the checkpoint's own training ({source})")
    return Choice(PRETRAINED_LR, "the checkpoint records no training rate (no training_args.bin or trainer_state.json "
                                 "with one): the rate pretrained transformers are fine-tuned at")


def rows_wanted(width: int, max_rows: int) -> int:
    """Rows a readout of input width `width` needs: ROWS_PER_UNKNOWN per unknown (width + 1 with
    the bias) of its least-squares fit, at most the fit's cap `max_rows`."""
    return min(ROWS_PER_UNKNOWN * (width + 1), max_rows)


def choose_calibration(dataset, collate, batch_size: int, seed: int, count_rows, max_rows: int) -> tuple[list[dict], Choice]:
    """Calibration batches for the readout fit, drawn in a fixed random order (a private
    generator) until every site has the rows it needs (`rows_wanted`), or the data ends.
    `count_rows(batch)` gives {site: (rows, width)} for one batch."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        rows_in_order = iter(dataset)
    else:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
        rows_in_order = (dataset[i] for i in order)
    batches, have, widths, used = [], {}, {}, 0
    while True:
        chunk = [row for _, row in zip(range(batch_size), rows_in_order)]
        if not chunk:
            break
        used += len(chunk)
        batches.append(collate(chunk))
        for site, (rows, width) in count_rows(batches[-1]).items():
            have[site] = have.get(site, 0) + rows
            widths[site] = width
        if not have or all(have[site] >= rows_wanted(widths[site], max_rows) for site in have):
            break  # (no site saw the batch: no readout to fit, more data would not change that)
    if not batches:
        raise ValueError("the readout fit needs data, but the training data is empty")
    if not widths:
        return batches, Choice(len(batches), "no activation site saw the data: no readout to fit")
    site = max(widths, key=lambda s: rows_wanted(widths[s], max_rows))  # the most demanding readout
    wanted, got = rows_wanted(widths[site], max_rows), have[site]
    enough = all(have[s] >= rows_wanted(widths[s], max_rows) for s in have)
    target = (f"the fit's cap of {max_rows} rows" if wanted == max_rows else
              f"{ROWS_PER_UNKNOWN} rows per unknown of each readout's least-squares fit ({widths[site]} inputs + bias)")
    if enough:
        reason = f"{got} rows per readout ≥ {wanted} = {target}"
    else:
        reason = (f"all {used} rows of the training data: {got} rows per readout, fewer than the "
                  f"{wanted} wanted ({target}); more data would make the fit better posed")
    return batches, Choice(len(batches), reason)
