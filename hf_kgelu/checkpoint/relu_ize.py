"""The relu-ize verb: a λ-GELU checkpoint in, a published stock-transformers ReLU model out."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..data import LocalData
from ..metrics import infer_task
from ..publishing.card import CardDetails, training_from_history
from ..publishing.folder import check_output_dir, recover_interrupted_save
from ..relu import relu_ize
from ..substitution import substitution_report
from ..training.history import HISTORY_FILENAME
from .publish import HubTarget, Published, publish
from .source import check_source, load_checkpoint


def max_positions(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def _find_in_run(checkpoint: Path, match) -> Path | None:
    """A file of the checkpoint folder, or of its run folder (the parent of `checkpoint-N`)."""
    for folder in (checkpoint, checkpoint.parent):
        found = sorted(p for p in folder.glob("*") if p.is_file() and match(p.name)) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def relu_ize_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    evaluation: LocalData | None = None,
    gelu_baseline: str | os.PathLike | None = None,
    include_gelu: bool = False,
    task: str | None = None,
    batch_size: int = 32,
    details: CardDetails | None = None,
    plot_file: str | os.PathLike | None = None,
    hub: HubTarget | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: None,
    metric=None,
) -> Published:
    """Load a λ-GELU checkpoint (its own architecture class, its tokenizer or processor), swap every
    site for ReLU (`relu_ize`), measure the metric before and after on `evaluation` (with the GELU
    baseline's direct swap beside it; `metric`: see `hf_kgelu.metrics.load_metric`), then write and
    push the folder (`publish`). The card reads the
    run's `hardness_history.json` and λ plot beside the checkpoint when they exist."""
    output_dir = check_output_dir(output_dir, overwrite, checkpoint)  # fail before the slow part
    if plot_file is not None and not Path(plot_file).is_file():
        raise FileNotFoundError(f"no such plot file: {plot_file} (leave --plot out to use the run's own λ plot)")
    if gelu_baseline is not None:
        if evaluation is None:
            raise ValueError("a GELU baseline is measured on the evaluation data: give --eval-data (evaluation=) "
                             "with --gelu-baseline, or leave the baseline out")
        try:
            check_source(gelu_baseline)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"the GELU baseline: {error}") from None
    recover_interrupted_save(output_dir)
    source = load_checkpoint(checkpoint)
    relu_model, report = relu_ize(source.model, include_gelu=include_gelu)
    log(f"swapped {len(report.sites)} site(s) for ReLU; smallest λ {report.min_lambda:.4g}, "
        f"ε gate L1 ≤ {report.tolerance('gate_l1'):.3g}, act sup ≤ {report.tolerance('act_sup'):.3g}")
    comparison = None
    if evaluation is not None:
        task = task or infer_task(source.model)
        data, _ = evaluation.rows(source.tokenizer, task, max_positions(source.model))
        baseline = load_checkpoint(gelu_baseline).model if gelu_baseline is not None else None
        comparison = substitution_report(source.model, data, gelu_baseline=baseline, task=task, batch_size=batch_size,
                                         include_gelu=include_gelu, metric=metric)
        log(comparison.as_markdown())
    details = details or CardDetails()
    run_folder = source.folder if source.folder is not None else Path(os.fspath(checkpoint))
    history = _find_in_run(run_folder, lambda name: name == HISTORY_FILENAME)
    if history is not None and not details.training:
        details = replace(details, training=training_from_history(json.loads(history.read_text(encoding="utf-8"))))
    if evaluation is not None and details.eval_dataset is None:
        details = replace(details, eval_dataset=Path(evaluation.path).name)
    if plot_file is None:
        plot_file = _find_in_run(run_folder, lambda name: name.endswith(".png") and ("lambda" in name or "hardness" in name))
    return publish(relu_model, report, output_dir, comparison=comparison, details=details, source=source,
                   plot_file=plot_file, overwrite=overwrite, hub=hub)
