"""Model and data settings of the demo and the paper's experiments, on the offline data here.

Each builder returns plain transformers objects, so the scripts, `hf-kgelu demo` and
`scripts/reproduce.py` share one definition of "DeiT on digits" or "the paper's MLP on Adult":

- `deit_config(...)`: a small DeiT for 1-channel images (digits 8×8, FashionMNIST 28×28);
- `mlp_config(...)`: the paper's 4×256 MLP (`hf_kgelu.models`);
- `gpt2_config(...)`: a reduced GPT-2 for the GPT-2 BPE vocabulary;
- `image_processor_for(...)`: the `ViTImageProcessor` that reproduces the pixel scaling that
  `hf_kgelu.data` applied, saved with image models so raw images map to what the model saw.
"""

from __future__ import annotations

from transformers import DeiTConfig, GPT2Config

from .modeling.mlp import MLPConfig

# Raw pixel maximum of each built-in image set: digits are 0..16, FashionMNIST 0..255.
RAW_PIXEL_MAX = {"digits": 16.0, "fashion_mnist": 255.0}
IMAGE_SIZE = {"digits": 8, "fashion_mnist": 28}
DIGITS_LABELS = [str(i) for i in range(10)]


def deit_config(
    image_size: int = 8,
    patch_size: int = 4,
    hidden_size: int = 64,
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    num_labels: int = 10,
    hidden_act: str = "gelu",
    **extra,
) -> DeiTConfig:
    """A DeiT for 1-channel images; the default is the demo's (4 layers × 64, patch 4 on 8×8 digits)."""
    return DeiTConfig(
        image_size=image_size, patch_size=patch_size, num_channels=1, hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size or 2 * hidden_size, num_labels=num_labels, hidden_act=hidden_act,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra,
    )


def mlp_config(num_features: int, num_labels: int, hidden_act: str = "gelu", hidden_size: int = 256, num_hidden_layers: int = 4, **extra) -> MLPConfig:
    """The paper's tabular MLP: 4 hidden layers of 256 units."""
    return MLPConfig(num_features=num_features, num_labels=num_labels, hidden_act=hidden_act, hidden_size=hidden_size,
                     num_hidden_layers=num_hidden_layers, **extra)


def gpt2_config(vocab_size: int = 50257, n_positions: int = 128, n_layer: int = 4, n_embd: int = 128, n_head: int = 4,
                activation_function: str = "gelu", **extra) -> GPT2Config:
    """A reduced GPT-2 (GPT-2 small is n_layer 12, n_embd 768, n_head 12, n_positions 1024)."""
    end_of_text = min(50256, vocab_size - 1)  # GPT-2's <|endoftext|>, or the last id of a compacted vocabulary
    return GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                      activation_function=activation_function, bos_token_id=end_of_text, eos_token_id=end_of_text, **extra)


def image_processor_for(image_size: int, raw_pixel_max: float = 255.0, num_channels: int = 1):
    """A `ViTImageProcessor` mapping raw pixels in [0, raw_pixel_max] to [-1, 1] at `image_size`²
    — the scaling `hf_kgelu.data` applies to the built-in image sets."""
    from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, do_rescale=True,
        rescale_factor=1.0 / raw_pixel_max, do_normalize=True, image_mean=[0.5] * num_channels, image_std=[0.5] * num_channels,
    )


def label_maps(labels: list[str]) -> dict:
    """`id2label` / `label2id` config kwargs for class names."""
    return {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
