"""Watching the hardness while a model trains: the trajectory file, the logged values, progress lines.

- `KGeluHistoryCallback` keeps `hardness_history.json` in `output_dir` (and a copy in every
  checkpoint folder) for `hf_kgelu.plotting.plot_hardness` and the run reports;
- `HardnessLog` gives the `kgelu/*` values `KGeluTrainer.log` adds to every training log, so every
  `report_to` integration receives them (the Trainer's TensorBoard, trackio, W&B… callbacks name them
  `train/kgelu/...`): λ per site (mean/min/max for per-channel sites), the mean λ, the drift D since
  the last log (the first one: since the start of training, as the history file has it), the phase
  (`kgelu/annealing` 0 or 1) and the anneal progress (0 → 1 over the annealing phase);
- `EpochProgress` prints one line per evaluation (epoch, metric, mean λ, time).
The schedule itself is `hf_kgelu.training.annealing.KGeluHardnessCallback`'s: both read it there.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..hardness import hardness_drift
from ..modeling.module import KGELU
from ..modeling.sites import find_sites, hardness_profile, short_site_names, site_lambda
from .annealing import KGeluHardnessCallback
from .history import (
    HISTORY_FILENAME,
    HISTORY_FORMAT,
    HISTORY_VERSION,
    read_history,
    write_history,
)
from .preparation import require_trained_sites

logger = logging.getLogger(__name__)

LOG_PREFIX = "kgelu/"


def site_stats(sites: list[tuple[str, KGELU]], short_names: list[str]) -> dict[str, dict[str, float]]:
    """{short name: {mean, min, max}} of λ over each site's channels (one value for scalar sites)."""
    stats = {}
    for short, (_, site) in zip(short_names, sites):
        lam = site_lambda(site)
        stats[short] = {"mean": lam.mean().item(), "min": lam.min().item(), "max": lam.max().item()}
    return stats


class HardnessLog(TrainerCallback):
    """The `kgelu/*` entries of a training log (see the module docstring). `KGeluTrainer.log` adds
    them before the Trainer hands the log to the trackers' `on_log` (a callback's own `on_log` would
    come too late); as a callback this only notes λ at the start of training, the first drift's reference."""

    def __init__(self):
        self.last_profile: dict[str, float] | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        sites = require_trained_sites(model)
        stats = site_stats(sites, short_site_names([name for name, _ in sites]))
        self.last_profile = {short: s["mean"] for short, s in stats.items()}

    def values(self, annealing: KGeluHardnessCallback, step: int) -> dict[str, float]:
        if not annealing.sites:
            return {}
        stats = site_stats(annealing.sites, annealing.short_names)
        values: dict[str, float] = {}
        for short, (_, site) in zip(annealing.short_names, annealing.sites):
            if site.per_channel:  # thousands of channels: summaries, not one scalar each
                for key in ("mean", "min", "max"):
                    values[f"{LOG_PREFIX}lambda/{short}/{key}"] = stats[short][key]
            else:
                values[f"{LOG_PREFIX}lambda/{short}"] = stats[short]["mean"]
        profile = {short: s["mean"] for short, s in stats.items()}
        values[f"{LOG_PREFIX}lambda_mean"] = sum(profile.values()) / len(profile)
        if self.last_profile is not None:
            values[f"{LOG_PREFIX}drift"] = hardness_drift(self.last_profile, profile)
        self.last_profile = profile
        values[f"{LOG_PREFIX}annealing"] = 1.0 if annealing.annealing_at(step) else 0.0
        if annealing.schedule is not None:
            values[f"{LOG_PREFIX}anneal_progress"] = annealing.schedule.progress(step)
        return values


class KGeluHistoryCallback(TrainerCallback):
    """Records λ per site at every logged step, at the switch, at the end and at every epoch end
    into `hardness_history.json` (format: `hf_kgelu.training.history`), written atomically.

    `annealing` (the run's `KGeluHardnessCallback`, set by `KGeluTrainer`) supplies the schedule
    for the file's header and the phase of each entry; `resume_dir` the checkpoint a resumed run
    continues the trajectory from."""

    def __init__(self, annealing: KGeluHardnessCallback | None = None):
        self.annealing = annealing
        self.resume_dir: str | None = None
        self.history: dict | None = None
        self.sites: list[tuple[str, KGELU]] = []
        self.short_names: list[str] = []

    def _new_history(self, args, state) -> dict:
        return {
            "format": HISTORY_FORMAT,
            "version": HISTORY_VERSION,
            "sites": dict(zip(self.short_names, (name for name, _ in self.sites))),
            "per_channel": {short: site.per_channel for short, (_, site) in zip(self.short_names, self.sites)},
            "max_steps": state.max_steps,
            "anneal_start_step": None,
            "target_lambda": None,
            "target_lambdas": None,
            "anneal_start_lambda": None,
            "settings": args.kgelu_settings(),
            "steps": [],
            "epochs": [],
        }

    def _load_history(self, args, state) -> dict:
        for folder in (self.resume_dir, args.output_dir):
            if not folder or not os.path.isfile(os.path.join(folder, HISTORY_FILENAME)):
                continue
            try:
                history = read_history(folder)
            except (ValueError, OSError) as error:
                logger.warning("ignoring the hardness history in %s: %s", folder, error)
                continue
            history["steps"] = [e for e in history.get("steps", []) if e["step"] <= state.global_step]
            history["epochs"] = [e for e in history.get("epochs", []) if e["step"] <= state.global_step]
            return history
        return self._new_history(args, state)

    def _update_header(self, args, state) -> None:
        self.history["max_steps"], self.history["settings"] = state.max_steps, args.kgelu_settings()
        if self.annealing is not None:
            self.history.update({key: value for key, value in self.annealing.summary().items() if value is not None})

    def _record(self, state) -> None:
        steps = self.history["steps"]
        if steps and steps[-1]["step"] == state.global_step:
            return
        stats = site_stats(self.sites, self.short_names)
        profile = {short: s["mean"] for short, s in stats.items()}
        annealing = self.annealing is not None and self.annealing.annealing_at(state.global_step)
        entry = {
            "step": state.global_step,
            "epoch": state.epoch,
            "phase": "anneal" if annealing else "learn",
            "lambda": profile,
            "mean": sum(profile.values()) / len(profile),
        }
        if any(site.per_channel for _, site in self.sites):
            entry["lambda_min"] = {short: s["min"] for short, s in stats.items()}
            entry["lambda_max"] = {short: s["max"] for short, s in stats.items()}
        if steps and set(steps[-1]["lambda"]) == set(profile):
            entry["drift"] = hardness_drift(steps[-1]["lambda"], profile)
        steps.append(entry)

    def write(self, folder: str | os.PathLike) -> None:
        if self.history is not None:
            write_history(self.history, os.path.join(folder, HISTORY_FILENAME))

    def _save(self, args, state) -> None:
        if state.is_world_process_zero and args.output_dir:
            self.write(args.output_dir)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.sites = require_trained_sites(model)
        self.short_names = short_site_names([name for name, _ in self.sites])
        self.history = self._new_history(args, state) if state.global_step == 0 else self._load_history(args, state)
        self._update_header(args, state)
        if state.global_step == 0:
            self._record(state)
        self._save(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if args.kgelu_log_every and step % args.kgelu_log_every == 0:
            control.should_log = True
        every = args.kgelu_log_every or max(1, int(state.logging_steps or 1))
        switch = self.annealing is not None and self.annealing.start_step == step
        if switch:
            self._update_header(args, state)
        if step % every == 0 or step >= state.max_steps or switch:
            self._record(state)
            self._save(args, state)
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.history is None:
            return
        profile = {short: s["mean"] for short, s in site_stats(self.sites, self.short_names).items()}
        epochs = self.history["epochs"]
        entry = {"epoch": state.epoch, "step": state.global_step, "lambda": profile}
        if epochs and set(epochs[-1]["lambda"]) == set(profile):
            entry["drift"] = hardness_drift(epochs[-1]["lambda"], profile)
        epochs.append(entry)
        self._save(args, state)

    def on_save(self, args, state, control, **kwargs):
        # The Trainer has just written checkpoint-<step>: keep the trajectory beside it.
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(folder):
            self.write(folder)

    def on_train_end(self, args, state, control, **kwargs):
        if self.history is not None:
            self._save(args, state)


class EpochProgress(TrainerCallback):
    """One line per evaluation: epoch, eval metric, mean λ, elapsed time (the demo and the
    reproduction print these instead of the Trainer's per-log dicts)."""

    def __init__(self, label: str, metric: str, stream=None):
        self.label, self.metric, self.stream = label, metric, stream
        self.started = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        value = (metrics or {}).get(f"eval_{self.metric}")
        lam = ""
        if model is not None and find_sites(model):
            profile = hardness_profile(model)
            lam = f"  mean λ {sum(profile.values()) / len(profile):8.3f}"
        total = int(state.num_train_epochs) if state.num_train_epochs else "?"
        elapsed = time.perf_counter() - (self.started or time.perf_counter())
        shown = f"{value:.4f}" if value is not None else "–"
        print(f"  [{self.label}] epoch {state.epoch:5.2f}/{total}  val {self.metric} {shown}{lam}  ({elapsed:.0f} s)",
              file=self.stream or sys.stdout, flush=True)
