"""`KGeluTrainer`: learned-then-annealed hardness with the stock Trainer loop.

Swap `Trainer`/`TrainingArguments` for `KGeluTrainer`/`KGeluTrainingArguments` and train a model
whose activations are λ-GELU (`hidden_act="kgelu"`, or a GELU model passed through
`convert_to_kgelu`). The trainer

- applies the arguments' hardness settings to the model (`hf_kgelu.training.preparation`);
- puts every θ in its own optimizer group: learning rate × `kgelu_lr_multiplier`, weight decay 0;
  every other parameter is grouped exactly as the stock Trainer groups it, so the LambdaLR
  schedulers keep the θ/weight ratio;
- adds the callbacks: the λ schedule (`KGeluHardnessCallback`: learn θ until the switch, then
  freeze it and anneal λ to λ*), the trajectory file (`KGeluHistoryCallback`), θ under several
  processes (`KGeluDistributedCallback`: θ kept out of DDP/FSDP2, the sync check) and under
  DeepSpeed (`KGeluZeroCallback`); the `kgelu/*` values join every training log, so every
  `report_to` tracker receives them (as `train/kgelu/...`);
- with θ outside DDP/FSDP2, averages all θ gradients over the ranks in one all-reduce per optimizer
  step (`training_step`), and under DeepSpeed saves the float32 θ (`_save`) (docs/multi_gpu.md);
- takes an `evaluate` module as `compute_metrics` (fed with predicted ids, see
  `hf_kgelu.metrics.as_trainer_metrics`);
- resumes exactly: the schedule's state lives in every checkpoint's `trainer_state.json` (a damaged
  one is refused in one line naming it);
- writes a README.md beside a saved model saying what to install and import to load it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_callback import ExportableState, TrainerState
from transformers.trainer_utils import get_last_checkpoint

from ..metrics import Metric, as_trainer_metrics, infer_task, is_evaluate_module
from ..modeling.sites import find_sites, trained_sites
from .annealing import KGeluHardnessCallback
from .arguments import KGeluTrainingArguments
from .card import CARD_TAGS, add_loading_section, write_checkpoint_card
from .distributed import KGeluDistributedCallback
from .zero import KGeluZeroCallback, float32_theta_state
from .preparation import prepare_hardness, require_trained_sites
from .tracking import HardnessLog, KGeluHistoryCallback

logger = logging.getLogger(__name__)


def _keep_ddp_working_when_theta_freezes(model, args: KGeluTrainingArguments) -> None:
    """With θ inside DDP (`kgelu_theta_sync="engine"`) θ stops receiving gradients at the switch; DDP
    without unused-parameter detection then fails with "Expected to have finished reduction in the prior
    iteration". The Trainer turns detection off under activation checkpointing, so turn it back on there
    (unless the user decided). θ outside DDP (the default) needs nothing."""
    if args.kgelu_theta_sync != "engine" or args.kgelu_anneal_start is None or args.ddp_find_unused_parameters is not None:
        return
    checkpointing = any(getattr(args, name, False) for name in ("activation_checkpointing", "gradient_checkpointing"))
    checkpointing = checkpointing or any(
        getattr(model, name, False) for name in ("is_activation_checkpointing", "is_gradient_checkpointing")
    )
    if checkpointing:
        args.ddp_find_unused_parameters = True
        logger.info("ddp_find_unused_parameters=True: θ freezes at the anneal start and DDP must not wait for its gradient")


def _check_trainer_state(checkpoint) -> None:
    """Refuse, in one line naming the file, a checkpoint whose trainer_state.json cannot be read (a save cut
    short, an edit): the stock Trainer fails deep inside with a bare JSONDecodeError or TypeError."""
    path = os.path.join(os.fspath(checkpoint), "trainer_state.json")
    if not os.path.isfile(path):
        return  # the stock Trainer's own message (no such checkpoint), or a weights-only resume
    try:
        TrainerState.load_from_json(path)
    except (ValueError, TypeError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = " ".join(str(error).split())[:200]
        raise ValueError(
            f"cannot resume from {checkpoint}: {path} is damaged ({type(error).__name__}: {reason}); the save was cut "
            "short, the file edited, or another transformers version wrote it. Resume from an earlier checkpoint-N "
            "folder, or move this one away so that resume_from_checkpoint=True picks the newest complete one"
        ) from error


def _adapt_compute_metrics(model, kwargs: dict) -> None:
    """An `evaluate` module (or `Metric`) given as `compute_metrics` becomes the Trainer's callable."""
    metric = kwargs.get("compute_metrics")
    if not (is_evaluate_module(metric) or isinstance(metric, Metric)):
        return
    try:
        task = infer_task(model) if model is not None else None
    except ValueError:
        task = None  # unknown head: ids compared position by position, no shift
    adapted = as_trainer_metrics(metric, task)
    kwargs["compute_metrics"] = adapted["compute_metrics"]
    if kwargs.get("preprocess_logits_for_metrics") is None:
        kwargs["preprocess_logits_for_metrics"] = adapted["preprocess_logits_for_metrics"]


class KGeluTrainer(Trainer):
    """`Trainer` for λ-GELU models: θ optimizer group, annealing, hardness logging, exact resume.

    Takes the same arguments as `Trainer`; `args` must be `KGeluTrainingArguments`. The model
    (or the one `model_init` builds) must have λ-GELU sites. `compute_metrics` may also be an
    `evaluate` module (or a `hf_kgelu.metrics.Metric`): it gets predicted and true class ids, or
    next-token ids for a causal LM, label -100 left out.
    """

    def __init__(self, model=None, args: KGeluTrainingArguments | None = None, *positional, callbacks=None, **kwargs):
        if args is None:
            args = KGeluTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, KGeluTrainingArguments):
            raise TypeError(
                f"KGeluTrainer needs KGeluTrainingArguments (the kgelu_* settings), got {type(args).__name__}: "
                "build them as hf_kgelu.KGeluTrainingArguments(output_dir=..., ...), which accepts every TrainingArguments field"
            )
        if model is not None:
            prepare_hardness(model, args)
        _keep_ddp_working_when_theta_freezes(model, args)
        callbacks = list(callbacks or [])
        # the schedule first: the history callback records what it has just done
        for kind in (KGeluHardnessCallback, KGeluHistoryCallback, KGeluDistributedCallback):
            if not any(isinstance(cb, kind) or cb is kind for cb in callbacks):
                callbacks.append(kind())
        callbacks = [cb() if isinstance(cb, type) else cb for cb in callbacks]
        for cb in callbacks:
            if isinstance(cb, KGeluDistributedCallback):
                cb.reduces_theta = True  # training_step all-reduces θ when it is kept outside DDP/FSDP2
        # DeepSpeed: the float32 θ must exist before any other callback reads λ at train begin
        callbacks = [KGeluZeroCallback(), *(cb for cb in callbacks if not isinstance(cb, KGeluZeroCallback))]
        self._hardness_log = HardnessLog()
        callbacks.append(self._hardness_log)
        self._kgelu_resume_dir: str | None = None
        _adapt_compute_metrics(model, kwargs)
        super().__init__(model, args, *positional, callbacks=callbacks, **kwargs)

    def call_model_init(self, trial=None):
        model = super().call_model_init(trial)
        prepare_hardness(model, self.args)
        if hasattr(self, "callback_handler"):  # train() rebuilds the model; callbacks must see the new one
            self.callback_handler.model = model
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, (KGeluDistributedCallback, KGeluZeroCallback)):
                    callback.prepare(model, self.args)
        return model

    @property
    def distributed_callback(self) -> KGeluDistributedCallback | None:
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, KGeluDistributedCallback)), None)

    def training_step(self, model, inputs, *args, **kwargs):
        """The stock step; then, with θ kept outside DDP/FSDP2, after the last backward of an accumulation
        window, one all-reduce averages every θ gradient over the ranks (before clipping and the step)."""
        loss = super().training_step(model, inputs, *args, **kwargs)
        distributed = self.distributed_callback
        if distributed is not None and distributed.gradient_sync is not None and self.accelerator.sync_gradients:
            distributed.gradient_sync()
        return loss

    @property
    def hardness_callback(self) -> KGeluHardnessCallback | None:
        """The callback that runs the schedule (looked up each time: resuming may replace it)."""
        return next((cb for cb in self.callback_handler.callbacks if isinstance(cb, KGeluHardnessCallback)), None)

    # ---- optimizer
    def _theta_ids(self, model: nn.Module, trained_only: bool) -> set[int]:
        sites = trained_sites(model) if trained_only else find_sites(model)
        return {id(site.theta) for _, site in sites}

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        """The stock list without any θ: hardness is never weight-decayed."""
        theta_ids = self._theta_ids(model, trained_only=False)
        theta_names = {name for name, p in model.named_parameters() if id(p) in theta_ids}
        return [name for name in super().get_decay_parameter_names(model) if name not in theta_names]

    def create_optimizer(self, model=None):
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh:
            self._split_theta_group(optimizer, self.model if model is None else model)
        return optimizer

    def _split_theta_group(self, optimizer, model: nn.Module) -> None:
        """Move every θ out of the stock groups into one group with lr × η and weight decay 0."""
        param_groups = getattr(optimizer, "param_groups", None)
        theta_ids = self._theta_ids(model, trained_only=True)
        if not param_groups:
            return
        thetas, source = [], None
        for group in param_groups:
            moved = [p for p in group["params"] if id(p) in theta_ids]
            if moved:
                thetas += moved
                source = source or group
                group["params"] = [p for p in group["params"] if id(p) not in theta_ids]
        if not thetas:
            if any(site.theta.requires_grad for _, site in trained_sites(model)):
                logger.warning(
                    "%s does not expose θ in its parameter groups: θ trains with the optimizer's own settings "
                    "(no kgelu_lr_multiplier, possibly weight decay)",
                    type(optimizer).__name__,
                )
            return
        param_groups[:] = [g for g in param_groups if g["params"]]
        group = {key: value for key, value in source.items() if key != "params"}
        lr = source.get("lr")
        if lr is None:
            logger.warning("the optimizer's learning rate is not set per group: kgelu_lr_multiplier cannot apply")
        else:
            group["lr"] = lr * self.args.kgelu_lr_multiplier
        group["weight_decay"] = 0.0
        group["params"] = thetas
        optimizer.add_param_group(group)

    # ---- logging, checkpoints, resume
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        callback = self.hardness_callback
        if "loss" in logs and callback is not None:  # training logs only, not evaluation results
            logs.update(self._hardness_log.values(callback, self.state.global_step))
        super().log(logs, *args, **kwargs)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resume_from_checkpoint
        if isinstance(path, bool):
            path = get_last_checkpoint(self.args.output_dir) if path else None
        self._kgelu_resume_dir = os.fspath(path) if path is not None else None
        if path is not None:
            _check_trainer_state(path)
        self._wire_callbacks()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _save_checkpoint(self, *args, **kwargs):
        # The stock method indexes `state.stateful_callbacks[name]` for every ExportableState callback, but a
        # resumed state holds only the names its trainer_state.json stored: a callback missing there (a file
        # written without it, a callback added on resume) would end the run with KeyError at the first save.
        stored = self.state.stateful_callbacks
        for callback in self.callback_handler.callbacks + [self.control]:
            if isinstance(callback, ExportableState):
                stored.setdefault(type(callback).__name__, callback.state())
        return super()._save_checkpoint(*args, **kwargs)

    def _load_callback_state(self) -> None:
        super()._load_callback_state()
        self._wire_callbacks()  # restore_callback_states_from_checkpoint=True makes new callback instances

    def _wire_callbacks(self) -> None:
        """Hand the hardness callbacks what only the trainer knows: the training data (data-aware
        targets), the schedule (the history callback reads it) and the checkpoint being resumed."""
        annealing = self.hardness_callback
        if annealing is not None:
            annealing.data_forward = self._kgelu_data_forward
        callbacks = self.callback_handler.callbacks
        for index, callback in enumerate(callbacks):
            if isinstance(callback, KGeluHistoryCallback):
                callback.annealing, callback.resume_dir = annealing, self._kgelu_resume_dir
                if annealing is not None and callbacks.index(annealing) > index:  # a restored instance went last:
                    callbacks.remove(annealing)  # the schedule must act before the history records it
                    callbacks.insert(index, annealing)
                break

    # ---- saving: a λ-GELU folder says how to load it
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The stock save, plus a README.md saying what to install and import (unless the folder has one)."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            write_checkpoint_card(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict:  # DeepSpeed's gathered state dict holds θ in its training dtype: the float32 θ instead
            state_dict = float32_theta_state(self.accelerator.unwrap_model(self.model), state_dict)
        super()._save(output_dir, state_dict)

    def create_model_card(self, *args, **kwargs) -> None:
        """The stock draft card (push_to_hub writes it over README.md), tagged kgelu, with the loading section."""
        if len(args) < 3:  # tags is the third parameter
            tags = kwargs.get("tags") or []
            tags = [tags] if isinstance(tags, str) else list(tags)
            kwargs["tags"] = tags + [tag for tag in CARD_TAGS if tag not in tags]
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            card = os.path.join(self.args.output_dir, "README.md")
            add_loading_section(self.accelerator.unwrap_model(self.model), card, self.args.hub_model_id or self.args.output_dir)

    # ---- data-aware targets
    def _kgelu_data_forward(self, model: nn.Module) -> None:
        """Run `kgelu_data_batches` training batches through `model` (for `kgelu_bound="data"`).

        The examples are a fixed random subset (seeded by `args.seed`, drawn from a private generator so
        the training order is untouched), batched by the trainer's collator, and the same on every
        process (not sharded), so every rank chooses the same targets."""
        args = self.args
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("kgelu_bound='data' needs a train_dataset: the targets come from a few of its batches")
        batch_size = args.per_device_train_batch_size
        wanted = args.kgelu_data_batches * batch_size
        if isinstance(dataset, torch.utils.data.IterableDataset):
            examples = list(itertools.islice(iter(dataset), wanted))
        else:
            order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(args.seed))[:wanted]
            examples = [dataset[int(i)] for i in order]
        if not examples:
            raise ValueError("kgelu_bound='data': the train_dataset is empty")
        collator = self._get_collator_with_removed_columns(self.data_collator, "kgelu data-aware targets")
        for start in range(0, len(examples), batch_size):
            inputs = self._prepare_inputs(collator(examples[start : start + batch_size]))
            with self.accelerator.autocast():
                model(**inputs)

    # ---- substitution
    def evaluate_substitution(self, eval_dataset=None, task: str | None = None, gelu_baseline: nn.Module | None = None,
                              metric=None):
        """The eval metric of the current model (after `train()` with `load_best_model_at_end`: the best
        one) with its λ-GELU activations and after swapping every λ-GELU for ReLU, on copies: the trained
        model is not touched. A PEFT model is merged on a copy first.

        Returns `hf_kgelu.substitution.SubstitutionReport` (accuracy for classification, perplexity for language
        models, computed offline, or `metric`: see `hf_kgelu.metrics.load_metric`; `.as_markdown()`,
        `.to_dict()`). `eval_dataset` defaults to the trainer's; it is batched by the trainer's own
        collator, as `evaluate()` sees it.
        """
        from ..substitution import substitution_report

        data = eval_dataset if eval_dataset is not None else self.eval_dataset
        if data is None:
            raise ValueError("evaluate_substitution needs an eval_dataset (pass one, or give the trainer eval_dataset=...)")
        if isinstance(data, dict) and not any(key in data for key in ("input_ids", "pixel_values")):
            raise ValueError("evaluate_substitution takes one evaluation dataset, not a dict of several: pick one")
        model = self.model
        require_trained_sites(model)
        if hasattr(model, "merge_and_unload"):  # PEFT: relu_ize needs the adapters merged
            model = copy.deepcopy(model).merge_and_unload()
        if not isinstance(data, dict):
            data = self.get_eval_dataloader(data)
        return substitution_report(model, data, gelu_baseline=gelu_baseline, task=task, metric=metric)
