"""`KGeluHardnessCallback`: learn θ until the switch, then freeze it and drive λ along the schedule.

One concern: the λ schedule (`hf_kgelu.training.schedule`). Its state — the step of the switch,
the λ learned by then, and data-aware targets — is an `ExportableState` saved in every
checkpoint's `trainer_state.json`, and read back whenever training resumes (with or without
`restore_callback_states_from_checkpoint`), so a resumed run follows the same schedule.
The trajectory file and the logs are `hf_kgelu.training.tracking`'s.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..modeling.module import KGELU
from ..modeling.sites import short_site_names, site_lambda
from .preparation import require_trained_sites
from .schedule import AnnealingSchedule

logger = logging.getLogger(__name__)


def mean_of(value: float | list[float]) -> float:
    return sum(value) / len(value) if isinstance(value, list) else float(value)


class KGeluHardnessCallback(TrainerCallback, ExportableState):
    """Freezes θ at the switch and drives λ along the annealing schedule.

    It reads its settings from the `KGeluTrainingArguments` the Trainer passes to every event,
    so it needs no constructor arguments. `KGeluTrainer` adds it for you. A stock `Trainer` given
    `KGeluTrainingArguments` and this callback runs the same schedule, but puts θ under weight
    decay at the base learning rate.

    Multi-GPU: freezing θ mid-run needs DDP's `find_unused_parameters=True`, the Trainer's default
    for transformers models except under activation checkpointing; `KGeluTrainer` then sets
    `ddp_find_unused_parameters=True` unless you chose a value.
    """

    def __init__(self):
        self.start_lambda: dict[str, list[float]] | None = None  # site name -> λ at the switch
        self.start_step: int | None = None
        self.site_targets: dict[str, float | list[float]] | None = None  # site name -> data-aware λ*
        self.data_forward = None  # set by KGeluTrainer: runs a few training batches through a model
        self._reset_run()

    def _reset_run(self) -> None:
        self.schedule: AnnealingSchedule | None = None
        self.sites: list[tuple[str, KGELU]] = []
        self.short_names: list[str] = []
        self.frozen_by_us: list[KGELU] = []

    # ---- ExportableState
    def state(self) -> dict:
        return {
            "args": {},
            "attributes": {"start_lambda": self.start_lambda, "start_step": self.start_step, "site_targets": self.site_targets},
        }

    # ---- what the other callbacks read
    def annealing_at(self, step: int) -> bool:
        """Whether optimizer step `step` trains with a scheduled (frozen) λ."""
        return self.schedule is not None and self.start_lambda is not None and step > self.schedule.start_step

    def summary(self) -> dict:
        """The schedule as the history file records it (short site names)."""
        names = list(zip(self.short_names, (name for name, _ in self.sites)))
        return {
            "anneal_start_step": self.schedule.start_step if self.schedule is not None else None,
            "target_lambda": self.schedule.target_lambda if self.schedule is not None else None,
            "target_lambdas": (
                {short: mean_of(self.site_targets[name]) for short, name in names} if self.site_targets is not None else None
            ),
            "anneal_start_lambda": (
                {short: mean_of(self.start_lambda[name]) for short, name in names} if self.start_lambda is not None else None
            ),
        }

    # ---- the schedule
    def _freeze(self) -> None:
        for _, site in self.sites:
            if not site.frozen:
                site.freeze()
                self.frozen_by_us.append(site)
            site.theta.grad = None

    def site_target(self, name: str) -> float | torch.Tensor:
        """λ* of one site: its data-aware target when there are some, else the run's λ*."""
        if self.site_targets is None:
            return self.schedule.target_lambda
        value = self.site_targets[name]
        return torch.tensor(value, dtype=torch.float64) if isinstance(value, list) else float(value)

    def _choose_data_targets(self, args, model) -> None:
        """kgelu_bound="data": per-site targets from the pre-activations of a few training batches."""
        from .data_aware import data_aware_targets

        if self.data_forward is None:
            raise ValueError(
                "kgelu_bound='data' chooses the targets from training batches at the switch, which needs KGeluTrainer "
                "(a stock Trainer does not hand the callback its data): train with hf_kgelu.KGeluTrainer, or use a "
                "closed-form bound"
            )
        self.site_targets = data_aware_targets(
            model, lambda: self.data_forward(model), args.kgelu_tolerance, relative=args.kgelu_data_relative,
            per_channel=args.kgelu_data_per_channel, seed=args.seed, sites=self.sites,
        )
        self._use_site_targets()
        logger.info("data-aware annealing targets: %s", {s: mean_of(self.site_targets[n]) for s, (n, _) in zip(self.short_names, self.sites)})

    def _use_site_targets(self) -> None:
        # The schedule's λ* becomes the largest site target (what the history and the model card report).
        largest = max(max(v) if isinstance(v, list) else v for v in self.site_targets.values())
        self.schedule = dataclasses.replace(self.schedule, target_lambda=float(largest))

    def _record_switch(self, step: int, args, model) -> None:
        self.start_step = step
        self.start_lambda = {name: site_lambda(site).tolist() for name, site in self.sites}
        if getattr(args, "kgelu_data_targets", False) and self.site_targets is None:
            self._choose_data_targets(args, model)
        above = [
            short for short, (name, _) in zip(self.short_names, self.sites)
            if (torch.tensor(self.start_lambda[name], dtype=torch.float64) > self.site_target(name)).any()
        ]
        if above:
            logger.warning(
                "λ-GELU site(s) %s learned a hardness above the annealing target λ* = %.6g by the switch (step %d): "
                "annealing moves them down to λ*.",
                ", ".join(above),
                self.schedule.target_lambda,
                step,
            )
        self._freeze()

    def _apply(self, step: int) -> None:
        """Set every site to the λ that optimizer step `step` trains with."""
        step = min(step, self.schedule.max_steps)
        for name, site in self.sites:
            start, target = self.start_lambda[name], self.site_target(name)
            if len(start) == 1 and not isinstance(target, torch.Tensor):
                # one λ: float arithmetic, no tensor ops (this runs for every site before every step,
                # and a dozen small CPU ops per site cost ~0.1 ms of host time each)
                site.set_lambda(self.schedule.lambda_at(step, start[0], target))
                continue
            lam = self.schedule.lambda_at(step, torch.tensor(start, dtype=torch.float64), target)
            site.set_lambda(lam.reshape(site.theta.shape))

    def _restore(self, state) -> None:
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(stored, list):
            stored = stored[-1] if stored else None
        attributes = stored.get("attributes") if isinstance(stored, dict) else None
        attributes = attributes if isinstance(attributes, dict) else {}
        start_lambda = attributes.get("start_lambda")
        sizes = {name: site.theta.numel() for name, site in self.sites}
        if start_lambda is not None and not (
            isinstance(start_lambda, dict) and set(start_lambda) == set(sizes) and isinstance(attributes.get("start_step"), int)
            and all(isinstance(v, list) and len(v) == sizes[name] for name, v in start_lambda.items())
        ):
            logger.warning("the checkpoint's anneal-start λ does not fit the model's λ-GELU sites (other sites, or per "
                           "channel where the model is not); ignoring it")
            start_lambda = None
        names = set(sizes)
        self.start_lambda = start_lambda
        self.start_step = attributes.get("start_step") if start_lambda is not None else None
        site_targets = attributes.get("site_targets") if start_lambda is not None else None
        if site_targets is not None and set(site_targets) != names:
            logger.warning("the checkpoint's data-aware targets name other λ-GELU sites than the model has; ignoring them")
            site_targets = None
        self.site_targets = site_targets

    # ---- events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._reset_run()
        self.sites = require_trained_sites(model)
        self.short_names = short_site_names([name for name, _ in self.sites])
        anneal = getattr(args, "kgelu_anneal_start", None)
        if anneal is not None and state.max_steps >= 1:
            target = args.kgelu_resolved_target_lambda
            # Data-aware targets are chosen at the switch; until then λ* is only a placeholder.
            self.schedule = AnnealingSchedule.from_fraction(
                anneal, state.max_steps, 1.0 if target is None else target, getattr(args, "kgelu_anneal_shape", "linear")
            )
        step = state.global_step
        if step == 0:
            self.start_lambda = self.start_step = self.site_targets = None
        else:
            self._restore(state)
        if self.schedule is None:
            return
        if self.start_lambda is not None:
            # The switch happened before the checkpoint: continue the schedule it started.
            self.schedule = dataclasses.replace(self.schedule, start_step=self.start_step, max_steps=state.max_steps)
            if self.site_targets is not None:
                self._use_site_targets()
            elif getattr(args, "kgelu_data_targets", False):
                logger.warning("the checkpoint holds no data-aware targets: choosing them again from the current model")
                self._choose_data_targets(args, model)
            self._freeze()
        elif step >= self.schedule.start_step:
            if step > 0:
                logger.warning(
                    "resuming at step %d, past the anneal start %d, without the λ learned at the switch in the "
                    "checkpoint's trainer_state.json: annealing restarts from the current λ",
                    step,
                    self.schedule.start_step,
                )
                self.schedule = dataclasses.replace(self.schedule, start_step=step, max_steps=state.max_steps)
            self._record_switch(step, args, model)

    def on_step_begin(self, args, state, control, **kwargs):
        # Set the λ this optimizer step trains with; between steps the model holds λ(global_step).
        if self.schedule is not None and self.start_lambda is not None:
            self._apply(state.global_step + 1)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.schedule is not None and self.start_lambda is None and state.global_step >= self.schedule.start_step:
            self._record_switch(state.global_step, args, model)

    def on_train_end(self, args, state, control, **kwargs):
        if self.schedule is not None:
            off = [
                not torch.allclose(
                    site_lambda(site), torch.as_tensor(self.site_target(name), dtype=torch.float64).expand(site.theta.shape),
                    rtol=1e-5, atol=0,
                )
                for name, site in self.sites
            ]
            if self.start_lambda is None or any(off):  # stopped before the switch, or before the end
                logger.warning(
                    "training ended at step %d of %d with λ not at the annealing target λ* = %.6g (stopped early, or "
                    "load_best_model_at_end loaded an earlier checkpoint): the model is not yet as close to ReLU as "
                    "planned.",
                    state.global_step,
                    state.max_steps,
                    self.schedule.target_lambda,
                )
        for site in self.frozen_by_us:  # θ was frozen for the schedule only
            site.unfreeze()
        self.frozen_by_us = []
