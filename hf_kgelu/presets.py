"""Model and data settings of the demo and the paper's experiments, on the offline data here.

Each builder returns plain transformers objects, so the scripts, `hf-kgelu demo` and
`scripts/reproduce.py` share one definition of "DeiT on digits" or "the paper's MLP on Adult":

- `deit_config(...)`: a small DeiT for 1-channel images (digits 8×8, FashionMNIST 28×28);
- `mlp_config(...)`: the paper's 4×256 MLP (`hf_kgelu.models`);
- `gpt2_config(...)`: a reduced GPT-2 for the GPT-2 BPE vocabulary;
- `image_processor_for(...)`: the `ViTImageProcessor` that reproduces the pixel scaling that
  `hf_kgelu.data` applied, saved with image models so raw images map to what the model saw;
- `DEMO_PRESETS` / `demo_preset(...)`: every setting of `hf-kgelu demo`'s tasks, in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

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


@dataclass(frozen=True)
class DemoPreset:
    """Every setting of one `hf-kgelu demo` task (the command-line options override single fields).

    The model: `layers` × `width` with `heads` attention heads (GPT-2's MLP is 4 × width, the
    demo DeiT's 2 × width). Training, the same for every run: `epochs` of AdamW at peak
    `learning_rate` with linear decay after `warmup` (a fraction of the steps), `weight_decay`,
    `batch_size`; `evaluations` held-out evaluations per run (None: one per epoch). The λ-GELU run
    learns λ for the first `anneal_start` of its steps, then anneals it to λ* (ε = 0.005, gate-L1
    bound: λ* ≈ 159.6). `relu_run`: also train a ReLU model from scratch (context only).
    pydocs only: `block_size` tokens per block, `vocab_size` tokens kept of GPT-2's BPE
    (`hf_kgelu.data.compact_gpt2_tokenizer`), `eval_fraction` of the text held out
    (`hf_kgelu.data.embedded_text_splits`).
    """

    task: str
    layers: int
    width: int
    heads: int
    epochs: float
    batch_size: int
    learning_rate: float
    weight_decay: float
    warmup: float
    anneal_start: float
    relu_run: bool
    eval_batch_size: int = 64
    evaluations: int | None = None
    block_size: int | None = None
    vocab_size: int | None = None
    eval_fraction: float | None = None

    def describe(self) -> str:
        model = f"{self.layers} layers × {self.width} ({self.heads} heads)"
        if self.task == "pydocs":
            model += f", block {self.block_size}, {self.vocab_size:,}-token vocabulary, {self.eval_fraction:.0%} of the text held out"
        return (f"{model}; {self.epochs:g} epochs, batch {self.batch_size}, AdamW lr {self.learning_rate:g} "
                f"(linear decay, {self.warmup:.0%} warmup), weight decay {self.weight_decay:g}; λ learned for the first "
                f"{self.anneal_start:.0%} of the λ-GELU run's steps, then annealed; "
                f"{'with' if self.relu_run else 'no'} ReLU-from-scratch run")


DEMO_PRESETS = {
    # GPT-2 on the stdlib's pydoc topics: 129 856 training and 13 504 held-out tokens, 635 steps per
    # run; the whole demo takes about 3 CPU-minutes on one thread (165 s user time). Chosen by a
    # sweep of depth, width, epochs, learning rate, anneal start, block and vocabulary size: at
    # this budget 2 layers × 96 learn more than 4 × 64. Seeds 0, 1, 2: the direct swap costs
    # +99.8 %, +72.9 %, +59.5 % perplexity, the annealed swap −0.0002 %, +0.0004 %, +0.0004 %.
    "pydocs": DemoPreset(
        task="pydocs", layers=2, width=96, heads=4, epochs=5, batch_size=16, learning_rate=2e-3, weight_decay=0.01,
        warmup=0.05, anneal_start=0.25, relu_run=False, block_size=64, vocab_size=4096, eval_fraction=0.1,
    ),
    # The earlier demo: DeiT on sklearn's 8×8 digits (1438 / 359 images, split by the seed).
    "digits": DemoPreset(
        task="digits", layers=4, width=64, heads=4, epochs=20, batch_size=32, learning_rate=3e-3, weight_decay=0.05,
        warmup=0.1, anneal_start=0.5, relu_run=True, eval_batch_size=128,
    ),
}


def demo_preset(task: str, **overrides) -> DemoPreset:
    """The demo task's preset with the non-None `overrides` (field names of `DemoPreset`) applied."""
    if task not in DEMO_PRESETS:
        raise ValueError(f"unknown demo task {task!r}: choose one of {', '.join(DEMO_PRESETS)}")
    known = {f.name for f in fields(DemoPreset)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown demo setting(s) {sorted(unknown)}: {sorted(known)}")
    preset = replace(DEMO_PRESETS[task], **{k: v for k, v in overrides.items() if v is not None})
    if preset.epochs <= 0 or preset.batch_size < 1 or preset.layers < 1 or preset.width < 1:
        raise ValueError(f"the demo needs epochs > 0 and a batch size, layers and width ≥ 1: {preset}")
    if not 0.0 <= preset.anneal_start < 1.0:
        raise ValueError(f"anneal_start must be in [0, 1), got {preset.anneal_start}")
    return preset
