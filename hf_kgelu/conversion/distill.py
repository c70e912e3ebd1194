"""Distillation from the original GELU model during a conversion fine-tune.

The training loss adds the frozen teacher (the model as it was before the conversion): KL
divergence between the teacher's and the student's token/class distributions (mixed with the
task loss by `distill_alpha`), or, for an encoder without a task head (a sentence-embedding
`BertModel`), 1 − cosine between mean-pooled embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from ..metrics import IGNORE_INDEX, MODEL_INPUT_KEYS, mean_pooled
from ..training import KGeluTrainer
from .config import EMBEDDING_TASK


def distillation_loss(student_out, teacher_out, inputs: dict, task: str, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher ‖ student) per predicted token/example (×T²), or 1 − cos of mean-pooled embeddings."""
    if task == EMBEDDING_TASK:
        mask = inputs.get("attention_mask")
        student = mean_pooled(student_out.last_hidden_state, mask)
        teacher = mean_pooled(teacher_out.last_hidden_state, mask)
        return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    s_logits, t_logits = student_out.logits.float(), teacher_out.logits.float()
    keep = None
    if task == "causal_lm":
        s_logits, t_logits = s_logits[..., :-1, :], t_logits[..., :-1, :]
        labels = inputs.get("labels")
        if labels is not None:
            keep = labels[..., 1:] != IGNORE_INDEX
        elif inputs.get("attention_mask") is not None:
            keep = inputs["attention_mask"][..., 1:] != 0
    s_log = F.log_softmax(s_logits / temperature, dim=-1)
    t_log = F.log_softmax(t_logits / temperature, dim=-1)
    kl = (t_log.exp() * (t_log - s_log)).sum(-1)
    if keep is not None:
        kl = kl[keep]
    return kl.mean() * temperature**2


def without_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability of `model` to 0 (in place; the config is left as it was)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = 0.0
    return model


class _DistillationMixin:
    """compute_loss = α·distillation + (1 − α)·task loss (the distillation alone for embeddings)."""

    def __init__(self, *args, teacher: nn.Module | None = None, distill_alpha: float = 0.5, distill_temperature: float = 1.0,
                 distill_task: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = teacher
        self.distill_alpha = distill_alpha
        self.distill_temperature = distill_temperature
        self.distill_task = distill_task
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        model_inputs = {k: v for k, v in inputs.items() if k in MODEL_INPUT_KEYS or k == "labels"}
        if self.distill_task == EMBEDDING_TASK:
            model_inputs.pop("labels", None)
        outputs = model(**model_inputs)
        with torch.no_grad():
            teacher_outputs = self.teacher(**{k: v for k, v in model_inputs.items() if k != "labels"})
        loss = distillation_loss(outputs, teacher_outputs, inputs, self.distill_task, self.distill_temperature)
        task_loss = getattr(outputs, "loss", None)
        if self.distill_task != EMBEDDING_TASK and task_loss is not None and self.distill_alpha < 1:
            loss = self.distill_alpha * loss + (1 - self.distill_alpha) * task_loss
        return (loss, outputs) if return_outputs else loss


class DistillationTrainer(_DistillationMixin, Trainer):
    """`Trainer` with an optional frozen teacher (see `distillation_loss`)."""


class DistillationKGeluTrainer(_DistillationMixin, KGeluTrainer):
    """`KGeluTrainer` (annealing) with an optional frozen teacher."""
