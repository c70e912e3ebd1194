"""Summaries over `PipelineResult`s: the paper's Table I / Table II rows, mean ± std over seeds,
Spearman ρ between init modes, and Markdown tables. Used by `hf-kgelu demo` and
`scripts/reproduce.py`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence

from .hardness import spearman_rho
from .pipeline import PipelineResult


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    """A Markdown table; `align` is one character per column ("l" or "r"), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def mean_std(values: Iterable[float | None], digits: int = 4) -> str:
    """"m ± s" over the non-missing values (sample std; "m" alone for one value, "–" for none)."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def profile_rho(a: PipelineResult, b: PipelineResult) -> float | None:
    """Spearman ρ between the learned layerwise λ of two runs (None without two comparable profiles)."""
    if not a.lambda_learned or not b.lambda_learned or list(a.lambda_learned) != list(b.lambda_learned):
        return None
    if len(a.lambda_learned) < 2:
        return None
    rho = spearman_rho(a.lambda_learned, b.lambda_learned)
    return None if math.isnan(rho) else rho


ACTIVATION_LABELS = {"gelu": "GELU", "relu": "ReLU", "kgelu": "λ-GELU"}


def table_one(results: Sequence[tuple[str, PipelineResult]]) -> str:
    """Table I for single runs: label, best val score, its epoch, mean learned λ, drift D."""
    metric = results[0][1].metric if results else "score"
    rows = [
        (label, fmt(r.best_score), fmt(r.best_epoch, 0), fmt(r.mean_lambda, 3), fmt(r.drift, 4))
        for label, r in results
    ]
    return markdown_table(["run", f"best val {metric}", "epoch", "mean λ (learned)", "drift D"], rows)


def table_two(rows: Sequence[Sequence], metric: str) -> str:
    """Table II: label, score with the original activation, after swapping it for ReLU, change —
    and, when rows carry two more values, the validation loss before and after."""
    with_loss = any(len(row) > 3 and row[3] is not None for row in rows)
    out = []
    for label, before, after, *loss in rows:
        change = f"{after - before:+.4f}" if before is not None and after is not None else "–"
        line = [label, fmt(before), fmt(after), change]
        if with_loss:
            lb, la = (loss + [None, None])[:2]
            line += [fmt(lb), fmt(la), f"{la - lb:+.4f}" if lb is not None and la is not None else "–"]
        out.append(line)
    headers = ["model", f"original {metric}", f"substituted (ReLU) {metric}", "change"]
    if with_loss:
        headers += ["original val loss", "substituted val loss", "change"]
    return markdown_table(headers, out)
