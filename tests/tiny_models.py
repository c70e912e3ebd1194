"""Tiny configs of the four architectures the package targets, shared by the tests."""

import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    DeiTConfig,
    DeiTForImageClassification,
    GPT2Config,
    GPT2LMHeadModel,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 97


def tiny_config(arch: str, activation: str = "kgelu", **extra):
    if arch == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=16,
                          activation_function=activation, bos_token_id=0, eos_token_id=0, **extra)
    vision = dict(image_size=8, patch_size=4, num_channels=1, num_labels=10)
    common = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, hidden_act=activation)
    if arch == "vit":
        return ViTConfig(**common, **vision, **extra)
    if arch == "deit":
        return DeiTConfig(**common, **vision, **extra)
    if arch == "bert":
        return BertConfig(**common, vocab_size=VOCAB, max_position_embeddings=16, **extra)
    raise ValueError(arch)


MODEL_CLASSES = {
    "gpt2": GPT2LMHeadModel,
    "vit": ViTForImageClassification,
    "deit": DeiTForImageClassification,
    "bert": BertForMaskedLM,
}
ARCHS = tuple(MODEL_CLASSES)


def tiny_model(arch: str, activation: str = "kgelu", seed: int = 0, **extra):
    torch.manual_seed(seed)
    return MODEL_CLASSES[arch](tiny_config(arch, activation, **extra)).eval()


def tiny_inputs(arch: str, batch: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if arch in ("gpt2", "bert"):
        return {"input_ids": torch.randint(0, VOCAB, (batch, 12), generator=g)}
    return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}


def model_output(model, inputs) -> torch.Tensor:
    return model(**inputs).logits
