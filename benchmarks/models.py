"""The models the benchmarks train, built from configs (no pretrained weights): one table, name → spec.

A new model is one entry of MODELS: its transformers class, its sizes (full and a tiny smoke-test
version), the config key of its MLP activation, its default batch and how to make a labelled batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


def _tokens(config, batch: int, seq: int, device: str) -> dict:
    ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
    return dict(input_ids=ids, labels=ids)  # every position a target: a causal LM shifts, a masked LM predicts all


def _images(config, batch: int, seq: int, device: str) -> dict:
    pixels = torch.randn(batch, config.num_channels, config.image_size, config.image_size, device=device)
    return dict(pixel_values=pixels, labels=torch.randint(0, config.num_labels, (batch,), device=device))


@dataclass(frozen=True)
class ModelSpec:
    label: str  # the `shape` column's model name
    model_class: str  # a transformers class
    config_class: str
    activation_key: str  # the config attribute naming the MLP activation
    full: dict  # config sizes
    tiny: dict  # a 2-layer, 32-wide version (smoke tests, CPU)
    batch: int  # default batch (sequences or images)
    seq: int  # tokens per sequence (text models); images: 0
    inputs: Callable = field(repr=False)  # (config, batch, seq, device) -> a labelled batch

    def samples_unit(self) -> str:
        return "tokens" if self.seq else "images"


MODELS = {
    "gpt2": ModelSpec(
        "gpt2-small", "GPT2LMHeadModel", "GPT2Config", "activation_function",
        full=dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257),
        tiny=dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=97),
        batch=8, seq=1024, inputs=_tokens),
    "bert": ModelSpec(
        "bert-base", "BertForMaskedLM", "BertConfig", "hidden_act",
        full=dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072,
                  max_position_embeddings=512, vocab_size=30522),
        tiny=dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                  max_position_embeddings=64, vocab_size=97),
        batch=32, seq=128, inputs=_tokens),
    "deit": ModelSpec(
        "deit-small", "DeiTForImageClassification", "DeiTConfig", "hidden_act",
        full=dict(num_hidden_layers=12, hidden_size=384, num_attention_heads=6, intermediate_size=1536,
                  image_size=224, patch_size=16, num_labels=1000),
        tiny=dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                  image_size=32, patch_size=8, num_labels=10),
        batch=64, seq=0, inputs=_images),
}


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose from {', '.join(MODELS)}")
    return MODELS[name]


def build(name: str, activation: str, tiny: bool = False, **overrides):
    """The model `name` with its MLP activation set to `activation` ("gelu" or "kgelu"), random weights."""
    import transformers

    import hf_kgelu  # noqa: F401  (registers "kgelu")

    s = spec(name)
    sizes = dict(s.tiny if tiny else s.full, **overrides)
    config = getattr(transformers, s.config_class)(**sizes, **{s.activation_key: activation})
    return getattr(transformers, s.model_class)(config)


def seq_len(name: str, tiny: bool = False, seq: int | None = None) -> int:
    """Tokens per sequence: `seq` if given, else the model's, capped by its positions when tiny."""
    s = spec(name)
    if not s.seq:
        return 0
    length = seq or s.seq
    return min(length, 64) if tiny else length


def make_batch(name: str, config, batch: int, seq: int, device: str) -> dict:
    return spec(name).inputs(config, batch, seq, device)


def shape(name: str, batch: int, seq: int, tiny: bool = False) -> str:
    """The `shape` column: "gpt2-small 8x1024", "deit-small 64x224x224", "gpt2-small (tiny) 8x64"."""
    s = spec(name)
    size = s.tiny if tiny else s.full
    dims = f"{batch}x{seq}" if s.seq else f"{batch}x{size['image_size']}x{size['image_size']}"
    return f"{s.label}{' (tiny)' if tiny else ''} {dims}"
