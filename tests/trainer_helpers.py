"""Tiny real models, real data, watching callbacks and a local `evaluate` metric script shared by
the KGeluTrainer tests."""

from __future__ import annotations

import functools

import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainerCallback,
)

from hf_kgelu.data import byte_tokenizer, causal_lm_blocks, digits_splits, embedded_text
from hf_kgelu.modeling import trained_sites
from hf_kgelu.training import KGeluTrainingArguments

BYTE_VOCAB = 256
BLOCK = 32


@functools.lru_cache(maxsize=None)
def text_blocks():
    return causal_lm_blocks(embedded_text()[:20000], byte_tokenizer, block_size=BLOCK, max_tokens=6400)


@functools.lru_cache(maxsize=None)
def digits(train_rows: int = 320):
    splits = digits_splits()
    return splits["train"].select(range(train_rows)), splits["validation"].select(range(96))


def tiny_gpt2(seed: int = 0, activation: str = "kgelu", **extra) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=BYTE_VOCAB, n_positions=BLOCK,
                        activation_function=activation, bos_token_id=0, eos_token_id=0, **extra)
    return GPT2LMHeadModel(config)


def tiny_deit(seed: int = 0, **extra) -> DeiTForImageClassification:
    torch.manual_seed(seed)
    config = DeiTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=10, hidden_act="kgelu", **extra)
    return DeiTForImageClassification(config)


def make_args(output_dir, **overrides) -> KGeluTrainingArguments:
    settings = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, per_device_eval_batch_size=32, learning_rate=3e-3,
        logging_steps=4, save_strategy="no", report_to="none", disable_tqdm=True, seed=0, use_cpu=True,
        dataloader_pin_memory=False,
    )
    settings.update(overrides)
    return KGeluTrainingArguments(**settings)


def lambdas(model) -> dict[str, torch.Tensor]:
    return {name: site.lam.detach().clone() for name, site in trained_sites(model)}


class ThetaWatch(TrainerCallback):
    """Records, per optimizer step, θ just before and just after `optimizer.step()`, whether θ
    was trainable then, and λ at the end of the step."""

    def __init__(self):
        self.before, self.after, self.trainable, self.lam = {}, {}, {}, {}

    def _thetas(self, model):
        return {name: site.theta.detach().clone() for name, site in trained_sites(model)}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        step = state.global_step + 1
        self.before[step] = self._thetas(model)
        self.trainable[step] = {name: site.theta.requires_grad for name, site in trained_sites(model)}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step + 1] = self._thetas(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.lam[state.global_step] = lambdas(model)

    def moved(self, step: int) -> bool:
        """Whether the optimizer changed any bit of θ in this step."""
        return any(not torch.equal(self.before[step][n], self.after[step][n]) for n in self.before[step])


class StopAt(TrainerCallback):
    """Ends training after optimizer step `step` (after that step's checkpoint is written)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


# An evaluate metric script as users write them: exact fraction of equal ids, under its own name.
METRIC_SCRIPT = '''
import datasets
import evaluate


class {cls}(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="fraction of predicted ids equal to the reference ids", citation="", inputs_description="",
            features=datasets.Features({{"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}}),
        )

    def _compute(self, predictions, references):
        return {{"{name}": sum(int(p == r) for p, r in zip(predictions, references)) / len(references)}}
'''


def write_metric(folder, name="id_match", cls="IdMatch"):
    """folder/<name>/<name>.py, the layout evaluate.load(path) takes; returns the folder."""
    path = folder / name
    path.mkdir(parents=True)
    (path / f"{name}.py").write_text(METRIC_SCRIPT.format(name=name, cls=cls), encoding="utf-8")
    return path
