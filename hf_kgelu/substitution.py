"""`substitution_report`: the eval metric before and after the ReLU swap, on the same data (the
paper's Table II row), for a λ-GELU model and, beside it, a GELU baseline's direct swap."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .metrics import evaluate_model, infer_task, load_metric
from .modeling.config import KGELU_NAME
from .relu import ReluReport, relu_ize_quietly, copy_model


@dataclass
class SubstitutionReport:
    """The eval metric before and after the ReLU swap on the same data: λ-GELU model, and the
    GELU baseline's direct swap when one was given (the paper's Table II row)."""

    task: str
    metric: str
    higher_is_better: bool
    kgelu_before: float
    kgelu_after: float
    gelu_before: float | None = None
    gelu_after: float | None = None
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    relu_report: ReluReport | None = None

    @property
    def kgelu_change(self) -> float:
        return self.kgelu_after - self.kgelu_before

    @property
    def gelu_change(self) -> float | None:
        return None if self.gelu_before is None else self.gelu_after - self.gelu_before

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kgelu_change"], out["gelu_change"] = self.kgelu_change, self.gelu_change
        return out

    @property
    def swapped(self) -> str:
        """What the swap replaced: "λ-GELU", or "GELU" for a direct swap of a GELU model."""
        sites = self.relu_report.sites if self.relu_report is not None else []
        return "λ-GELU" if any(site.activation == KGELU_NAME for site in sites) or not sites else "GELU"

    def card_results(self) -> list[tuple[str, float]]:
        """(name, value) pairs for the model card's Hub eval results."""
        return [(f"{self.metric} (ReLU, this model)", self.kgelu_after),
                (f"{self.metric} ({self.swapped}, before the swap)", self.kgelu_before)]

    def as_markdown(self) -> str:
        """A Markdown table: one row per model, the metric before and after the ReLU swap."""
        rows = [(f"{self.swapped} → ReLU", self.kgelu_before, self.kgelu_after, self.kgelu_change)]
        if self.gelu_before is not None:
            rows.append(("GELU → ReLU (direct swap)", self.gelu_before, self.gelu_after, self.gelu_change))
        lines = [f"| model | {self.metric} before | {self.metric} after | change |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {before:.4f} | {after:.4f} | {change:+.4f} |" for name, before, after, change in rows]
        return "\n".join(lines)


def substitution_report(
    model: nn.Module,
    eval_data,
    *,
    gelu_baseline: nn.Module | None = None,
    task: str | None = None,
    batch_size: int = 32,
    include_gelu: bool = False,
    metric=None,
) -> SubstitutionReport:
    """Evaluate `model` (λ-GELU) before and after `relu_ize` (with `include_gelu` passed on), and
    `gelu_baseline` before and after its direct GELU → ReLU swap, on the same data. Works on
    copies: the passed models are never changed (not even their train/eval mode).

    `metric`: None for the task's exact built-in accuracy / perplexity, or a name ("accuracy",
    "perplexity", an `evaluate` metric), a path to a local metric script or folder, an `evaluate`
    module or a `hf_kgelu.metrics.Metric` (see `hf_kgelu.metrics.load_metric`, offline first)."""
    task = task or infer_task(model)
    chosen = load_metric(metric, task)
    metric, higher_is_better = chosen.name, chosen.higher_is_better

    def measure(candidate: nn.Module) -> dict[str, float]:
        return evaluate_model(candidate, eval_data, task, batch_size, metric=chosen)

    details = {"kgelu_before": measure(copy_model(model))}
    relu_model, relu_report = relu_ize_quietly(model, inplace=False, include_gelu=include_gelu)
    details["kgelu_after"] = measure(relu_model)
    del relu_model
    if gelu_baseline is not None:
        details["gelu_before"] = measure(copy_model(gelu_baseline))
        gelu_relu, _ = relu_ize_quietly(gelu_baseline, inplace=False, include_gelu=True)
        details["gelu_after"] = measure(gelu_relu)
        del gelu_relu
    value = {key: result[metric] for key, result in details.items()}
    return SubstitutionReport(
        task=task,
        metric=metric,
        higher_is_better=higher_is_better,
        kgelu_before=value["kgelu_before"],
        kgelu_after=value["kgelu_after"],
        gelu_before=value.get("gelu_before"),
        gelu_after=value.get("gelu_after"),
        details=details,
        relu_report=relu_report,
    )
