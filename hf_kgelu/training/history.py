"""The hardness history file: the λ trajectory of a run, written atomically beside its checkpoints.

`hardness_history.json` (in a run's `output_dir`, and a copy in every checkpoint folder) holds

    format, version       "hf-kgelu hardness history", 1
    sites                 {short name: full module name}, in depth order
    per_channel           {short name: bool}
    max_steps             S, optimizer steps of the run
    anneal_start_step     s₀ (null without annealing)
    target_lambda         λ* (null without annealing; with kgelu_bound="data" the largest site target)
    target_lambdas        {short name: data-aware λ* (mean over channels)} (null unless kgelu_bound="data")
    anneal_start_lambda   {short name: mean λ at the switch} (null before it)
    settings              the kgelu_* training arguments
    steps                 [{step, epoch, phase ("learn"|"anneal"), lambda {site: mean λ},
                            lambda_min/lambda_max (per-channel sites only), mean, drift}]
    epochs                [{epoch, step, lambda, drift}]  λ at each epoch end, drift D from the one before
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

HISTORY_FILENAME = "hardness_history.json"
HISTORY_FORMAT = "hf-kgelu hardness history"
HISTORY_VERSION = 1


def write_history(history: dict, path: str | os.PathLike) -> Path:
    """Write `history` as JSON through a temporary file and `os.replace`, so a reader (or a crash)
    never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(history, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_history(source: str | os.PathLike) -> dict:
    """Load a history from a run folder, a checkpoint folder or the JSON file itself."""
    path = Path(source)
    if path.is_dir():
        path = path / HISTORY_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no hardness history at {path}: train with hf_kgelu.KGeluTrainer, which writes {HISTORY_FILENAME} "
            "into output_dir"
        )
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:  # cut short by a crash (JSONDecodeError), or not text at all (UnicodeDecodeError)
        raise ValueError(f"{path} is not a readable hardness history ({' '.join(str(error).split())})") from None
    if not isinstance(history, dict) or history.get("format") != HISTORY_FORMAT:
        found = history.get("format") if isinstance(history, dict) else type(history).__name__
        raise ValueError(f"{path} is not an hf-kgelu hardness history (format {found!r})")
    entries = [*(history.get("steps") or []), *(history.get("epochs") or [])]
    if not all(isinstance(e, dict) and isinstance(e.get("step"), int) for e in entries):
        raise ValueError(f"{path} is damaged: a step or epoch entry has no step number")
    return history
