"""What a training run reports: its result record (`TrainResult`, also results.json), report.md,
the summary lines a script ends with, and the paper's Table I / Table II as Markdown."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..hardness import spearman_rho
from ..modeling.config import KGELU_NAME

REPORT_FILENAME = "report.md"
RESULTS_FILENAME = "results.json"


@dataclass
class TrainResult:
    """What one run produced. Scores are on the evaluation set; λ profiles are {site: mean λ}."""

    name: str
    activation: str
    task: str
    metric: str
    higher_is_better: bool
    output_dir: str
    eval_history: list[tuple[float, float]] = field(default_factory=list)  # (epoch, score) per evaluation
    best_score: float | None = None
    best_epoch: float | None = None
    final_score: float | None = None
    lambda_learned: dict[str, float] | None = None  # at the anneal switch, or the end without annealing
    lambda_final: dict[str, float] | None = None
    annealed: bool = False
    target_lambda: float | None = None
    drift: float | None = None  # mean epoch-to-epoch D over the learning phase
    drift_per_epoch: list[float] = field(default_factory=list)
    substitution: dict[str, float | None] | None = None  # before/after (and gelu_before/gelu_after)
    relu_dir: str | None = None
    hub_url: str | None = None
    report_path: str | None = None
    plot_path: str | None = None
    train_seconds: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def mean_lambda(self) -> float | None:
        if not self.lambda_learned:
            return None
        return sum(self.lambda_learned.values()) / len(self.lambda_learned)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mean_lambda"] = self.mean_lambda
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainResult:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values["eval_history"] = [tuple(x) for x in values.get("eval_history", [])]
        return cls(**values)


def render_report(result: TrainResult, *, title: str | None = None, command: str | None = None) -> str:
    """report.md of one run: the Table I row, the substitution (Table II) row, the λ profile."""
    lines = [f"# {title or result.name}", ""]
    if command:
        lines += ["Produced by:", "", "```", command, "```", ""]
    lines += [
        f"Activation **{result.activation}**, task {result.task}, metric {result.metric} "
        f"({'higher' if result.higher_is_better else 'lower'} is better), output `{result.output_dir}`.",
        "",
        "## Training (Table I row)",
        "",
        f"| activation | best val {result.metric} | epoch | final {result.metric} | mean λ (learned) | drift D |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {result.activation} | {fmt(result.best_score)} | {fmt(result.best_epoch, 1)} | {fmt(result.final_score)} "
        f"| {fmt(result.mean_lambda, 3)} | {fmt(result.drift, 4)} |",
        "",
    ]
    if result.annealed:
        lines += [f"λ was learned, then annealed to λ* = {fmt(result.target_lambda, 2)} (the learned λ is the one at the switch).", ""]
    if result.substitution:
        s = result.substitution
        lines += ["## ReLU substitution (Table II row)", "", f"| model | {result.metric} before | after ReLU swap | change |", "|---|---:|---:|---:|"]
        has_loss = s.get("loss_before") is not None
        if has_loss:
            lines[-2] += " val loss before | after | change |"
            lines[-1] += "---:|---:|---:|"

        def row(label, before, after, loss_before=None, loss_after=None):
            text = f"| {label} | {fmt(before)} | {fmt(after)} | {after - before:+.4f} |"
            if has_loss:
                text += (f" {fmt(loss_before)} | {fmt(loss_after)} | {loss_after - loss_before:+.4f} |"
                         if loss_before is not None else " – | – | – |")
            return text

        if s.get("before") is not None:
            label = "λ-GELU (annealed) → ReLU" if result.activation == KGELU_NAME else "GELU → ReLU (direct swap)"
            lines.append(row(label, s["before"], s["after"], s.get("loss_before"), s.get("loss_after")))
        if s.get("gelu_before") is not None and result.activation == KGELU_NAME:
            lines.append(row("GELU baseline → ReLU (direct swap)", s["gelu_before"], s["gelu_after"],
                             s.get("gelu_loss_before"), s.get("gelu_loss_after")))
        lines.append("")
    if result.lambda_learned:
        lines += ["## Learned λ per layer", "", "| site | λ learned | λ final |", "|---|---:|---:|"]
        final = result.lambda_final or {}
        lines += [f"| `{k}` | {v:.4f} | {fmt(final.get(k), 4)} |" for k, v in result.lambda_learned.items()]
        lines.append("")
    if result.plot_path:
        lines += [f"![λ per layer over training]({os.path.relpath(result.plot_path, result.output_dir)})", ""]
    if result.relu_dir:
        lines += [f"ReLU model: `{result.relu_dir}`" + (f" (pushed: {result.hub_url})" if result.hub_url else ""), ""]
    if result.eval_history:
        lines += ["## Evaluations", "", f"| epoch | {result.metric} |", "|---:|---:|"]
        lines += [f"| {epoch:.2f} | {score:.4f} |" for epoch, score in result.eval_history]
        lines.append("")
    return "\n".join(lines)


def print_summary(result: TrainResult) -> None:
    """The few lines a script ends with: where the report is, the scores, the ReLU model."""
    lines = [f"best val {result.metric}: {fmt(result.best_score)} (epoch {fmt(result.best_epoch, 2)}), final {fmt(result.final_score)}"]
    if result.mean_lambda is not None:
        lines.append(f"mean learned λ: {result.mean_lambda:.4f}" + (f", annealed to λ* = {result.target_lambda:.4g}" if result.annealed else ""))
    if result.substitution:
        s = result.substitution
        lines.append(f"{result.metric} before → after the ReLU swap: {fmt(s['before'])} → {fmt(s['after'])}")
    if result.relu_dir:
        lines.append(f"ReLU model: {result.relu_dir}" + (f" (pushed to {result.hub_url})" if result.hub_url else ""))
    if result.report_path:
        lines.append(f"report: {result.report_path}")
    print("\n".join(lines), flush=True)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> str:
    """A Markdown table; `align` is one character per column ("l" or "r"), default: first left, rest right."""
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, digits: int = 4) -> str:
    """A number for a table: `digits` decimals (4 significant figures from 10⁴ up), "–" when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:.{digits}f}" if abs(value) < 1e4 else f"{value:.4g}"
    return str(value)


def mean_std(values: Iterable[float | None], digits: int = 4) -> str:
    """"m ± s" over the non-missing values (sample std; "m" alone for one value, "–" for none)."""
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def profile_rho(a: TrainResult, b: TrainResult) -> float | None:
    """Spearman ρ between the learned layerwise λ of two runs (None without two comparable profiles)."""
    if not a.lambda_learned or not b.lambda_learned or list(a.lambda_learned) != list(b.lambda_learned):
        return None
    if len(a.lambda_learned) < 2:
        return None
    rho = spearman_rho(a.lambda_learned, b.lambda_learned)
    return None if math.isnan(rho) else rho


ACTIVATION_LABELS = {"gelu": "GELU", "relu": "ReLU", "kgelu": "λ-GELU"}


def table_one(results: Sequence[tuple[str, TrainResult]]) -> str:
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
