"""The architecture matrix: every transformers architecture whose config defaults an activation
key to a GELU-family name, built tiny with λ-GELU there, trained two steps, relu-ized, saved and
reloaded by stock transformers in a process that never imports hf_kgelu.

The architectures are found by introspecting the installed transformers (its config mapping and
activation table), never listed by hand; only the tiny sizes and inputs have per-family extras.

    python tests/architectures.py --write      # runs the matrix, writes benchmarks/results/architectures.csv
    python tests/architectures.py --only bert whisper     # some model types, one line each on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import importlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.activations import ACT2CLS
from transformers.models.auto import modeling_auto
from transformers.models.auto.configuration_auto import (
    CONFIG_MAPPING,
    CONFIG_MAPPING_NAMES,
)

import hf_kgelu

KGELU = "kgelu"
GATED = "gated-"
CSV_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "architectures.csv"
CSV_COLUMNS = ("model_type", "model_class", "modality", "sites", "status", "reason", "transformers", "date")
BATCH = 2


# ---------------------------------------------------------------- which architectures

def gelu_family() -> frozenset[str]:
    """The installed transformers' GELU-family activation names (gelu, gelu_new, quick_gelu, …)."""
    return frozenset(name for name in ACT2CLS if "gelu" in name and name != KGELU)


def gelu_keys(config: PreTrainedConfig) -> dict[str, str]:
    """Top-level config attributes naming a GELU-family activation, plain or gated ("gated-gelu")."""
    family = gelu_family()
    return {
        key: value
        for key, value in vars(config).items()
        if isinstance(value, str) and value.removeprefix(GATED) in family and not key.startswith("_")
    }


def to_kgelu(value: str) -> str:
    return GATED + KGELU if value.startswith(GATED) else KGELU


@dataclass
class Architecture:
    model_type: str
    config_class: type
    keys: dict[str, str]  # activation key → its GELU default


def architectures() -> list[Architecture]:
    """Every model type whose default config names a GELU-family activation at its top level."""
    found = []
    for model_type in CONFIG_MAPPING_NAMES:
        try:
            config_class = CONFIG_MAPPING[model_type]
        except Exception:  # noqa: BLE001, S112 - a config class that cannot even be imported here
            continue
        with _quiet():
            try:
                keys = gelu_keys(config_class())
            except Exception:  # noqa: BLE001, S112 - no default config: it cannot name a default activation
                continue
        if keys:
            found.append(Architecture(model_type, config_class, keys))
    return found


# Auto mappings from the richest head to the bare model: the first one naming the model type wins.
HEAD_MAPPINGS = (
    "MODEL_FOR_PRETRAINING_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
    "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_CTC_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES",
    "MODEL_FOR_MASKED_IMAGE_MODELING_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_VIDEO_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_UNIVERSAL_SEGMENTATION_MAPPING_NAMES",
    "MODEL_FOR_DEPTH_ESTIMATION_MAPPING_NAMES",
    "MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES",
    "MODEL_FOR_TIME_SERIES_PREDICTION_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_MAPPING_NAMES",
)


def model_class_name(model_type: str) -> str | None:
    for mapping in HEAD_MAPPINGS:
        name = getattr(modeling_auto, mapping, {}).get(model_type)
        if isinstance(name, (list, tuple)):
            name = name[0]
        if name:
            return name
    return None


# ---------------------------------------------------------------- tiny sizes

HIDDEN = 32
# Generic small sizes, applied to every config that has the attribute.
TINY = {
    "vocab_size": 99,
    "hidden_size": HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "embedding_size": HIDDEN,
    "d_model": HIDDEN,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "n_embd": HIDDEN,
    "n_layer": 2,
    "n_head": 2,
    "n_inner": 64,
    "n_positions": 64,
    "n_ctx": 64,
    "d_ff": 64,
    "d_kv": 16,
    "num_layers": 2,
    "num_heads": 2,
    "num_decoder_layers": 2,
    "dim": HIDDEN,
    "hidden_dim": 64,
    "n_layers": 2,
    "n_heads": 2,
    "ffn_dim": 64,
    "image_size": 32,
    "patch_size": 8,
    "num_channels": 3,
    "num_mel_bins": 16,
    "max_source_positions": 16,
    "max_target_positions": 64,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
    "mask_time_length": 2,
    "mask_feature_length": 2,
    "codevector_dim": 16,
    "proj_codevector_dim": 16,
    "num_codevectors_per_group": 8,
    "classifier_proj_size": 16,
    "num_labels": 3,
    "depth": 2,
    "out_hidden_size": HIDDEN,
    "text_hidden_size": HIDDEN,
    "projection_hidden_dim": HIDDEN,
    "num_frames": 2,
    "rotary_dim": 8,
    "decoder_hidden_size": HIDDEN,
    "decoder_intermediate_size": 64,
    "decoder_num_hidden_layers": 1,
    "decoder_num_attention_heads": 2,
    "d_inner": 64,
    "mlp_dim": 64,
    "moe_intermediate_size": 32,
    "kv_lora_rank": 16,
    "attention_window": 4,
    "max_encoder_position_embeddings": 64,
    "max_decoder_position_embeddings": 64,
    "attention_hidden_size": 2 * HIDDEN,
    "attention_head_dim": HIDDEN,
    "mamba_dt_rank": 8,
}
# Per-stage lists (hierarchical vision models, audio feature encoders): keep the length, shrink.
TINY_PER_STAGE = {
    "depths": 1,
    "hidden_sizes": 16,
    "num_heads": 1,
    "num_attention_heads": 1,
    "conv_dim": 16,
    "embed_dims": 16,
}
# Per-family extras where the generic sizes are not enough (a config that checks one size against
# another, an input the generic sizes make too small).
FAMILY = {
    "autoformer": {"prediction_length": 4, "context_length": 8, "lags_sequence": [1, 2], "num_time_features": 1,
                   "moving_average": 3, "label_length": 4},
    "informer": {"prediction_length": 4, "context_length": 8, "lags_sequence": [1, 2], "num_time_features": 1},
    "time_series_transformer": {"prediction_length": 4, "context_length": 8, "lags_sequence": [1, 2], "num_time_features": 1},
    "patchtst": {"context_length": 32, "patch_length": 8, "patch_stride": 8, "num_input_channels": 2, "prediction_length": 4},
    "convnext": {"image_size": 64},
    "convnextv2": {"image_size": 64},
    "swin": {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "encoder_stride": 8},
    "donut-swin": {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1]},
    "swinv2": {"patch_size": 4, "window_size": 2, "embed_dim": 16, "depths": [1, 1], "num_heads": [1, 1], "encoder_stride": 8},
    "layoutlmv3": {"coordinate_size": 4, "shape_size": 8},
    "lilt": {"hidden_size": 48},
    "vipllava": {"vision_feature_layers": [-1, -2]},
    "voxtral": {"audio_token_id": 98},
    "zamba": {"num_hidden_layers": 3, "layers_block_type": ["linear_attention", "hybrid", "hybrid"]},  # tied shared blocks
    "audio-spectrogram-transformer": {"max_length": 32, "frequency_stride": 4, "time_stride": 4},
    "dpt": {"num_hidden_layers": 4, "backbone_out_indices": [0, 1, 2, 3], "neck_hidden_sizes": [16, 16, 16, 32],
            "fusion_hidden_size": 16},
    "recurrent_gemma": {"block_types": ["recurrent", "attention"], "lru_width": HIDDEN},
    "perceiver": {"num_latents": 8, "d_latents": HIDDEN, "num_self_attends_per_block": 1, "num_self_attention_heads": 2,
                  "num_cross_attention_heads": 2},
    "lxmert": {"l_layers": 1, "x_layers": 1, "r_layers": 1, "visual_feat_dim": 16, "num_qa_labels": 5,
               "num_object_labels": 5, "num_attr_labels": 5},
    "blip_2_qformer": {"encoder_hidden_size": HIDDEN},
    "pix2struct_vision_model": {"patch_embed_hidden_size": HIDDEN, "seq_len": 16},
    "swin2sr": {"image_size": 16, "patch_size": 1, "window_size": 4, "embed_dim": 16, "upscale": 2},
    "gpt_neo": {"attention_types": [[["global", "local"], 1]], "window_size": 4},
    "xmod": {"default_language": "en_XX"},
}


def tiny_overrides(config: PreTrainedConfig) -> dict:
    attrs = config.to_dict()
    out = {}
    for key, value in TINY.items():
        if key in attrs and not isinstance(attrs[key], (list, tuple, dict)) and attrs[key] is not None:
            out[key] = value
    for key, value in TINY_PER_STAGE.items():
        if isinstance(attrs.get(key), (list, tuple)):
            out[key] = [value] * len(attrs[key])
    if isinstance(attrs.get("image_size"), (list, tuple)) and len(attrs["image_size"]) == 2:
        out["image_size"] = [32, 32]
    layers = attrs.get("num_hidden_layers")
    for key, value in attrs.items():  # one entry per layer (layer_types, kv_source_layers): two layers
        if isinstance(value, (list, tuple)) and (key == "layer_types" or (isinstance(layers, int) and layers > 2 and len(value) == layers)):
            # Layer kinds: the first and the first other kind (Zamba's linear_attention, then a hybrid layer).
            other = next((v for v in value if isinstance(v, str) and v != value[0]), None)
            out[key] = [value[0], other] if other is not None else list(value[:2])
    if isinstance(attrs.get("deepstack_visual_indexes"), (list, tuple)):  # layers whose features are tapped
        out["deepstack_visual_indexes"] = [1]
    for key, value in attrs.items():  # other vocabularies (LUKE's 500 k entities, Gemma's per-layer inputs)
        if "vocab" in key and isinstance(value, int) and not isinstance(value, bool) and value > 1000:
            out[key] = 99
    vocab = out.get("vocab_size", attrs.get("vocab_size"))
    if vocab is None and any(isinstance(v, dict) and "vocab_size" in v for v in attrs.values()):
        vocab = TINY["vocab_size"]  # a composite model: the vocabulary of its (tiny) text config
    if isinstance(vocab, int):  # special tokens past the tiny vocabulary: the top ids, above the text ones
        top = iter(range(vocab - 1, 0, -1))
        for key, value in attrs.items():
            if ("token_id" in key or "token_index" in key) and isinstance(value, int) and value >= vocab:
                out[key] = next(top)
    out.update(FAMILY.get(attrs.get("model_type"), {}))
    return out


def tiny_config(arch: Architecture, kgelu: bool) -> PreTrainedConfig:
    """The architecture's config at tiny sizes; with `kgelu`, every GELU-family key (sub-configs too) names λ-GELU."""
    with _quiet():
        return _tiny(arch.config_class(), kgelu, top=True)


def _tiny(default: PreTrainedConfig, kgelu: bool, top: bool = False) -> PreTrainedConfig:
    # A sub-config keeps what its composite sets (Mistral Large 4's vision tower: silu, not Pixtral's gelu).
    kwargs = {} if top else {k: v for k, v in default.to_dict().items() if not isinstance(v, dict)}
    kwargs.update(tiny_overrides(default))
    if kgelu:
        kwargs.update({key: to_kgelu(value) for key, value in gelu_keys(default).items()})
    for key, value in vars(default).items():
        if isinstance(value, PreTrainedConfig):
            kwargs[key] = _tiny(value, kgelu)
    return type(default)(**kwargs)


# ---------------------------------------------------------------- inputs

SEQ = 8


def _image_size(config) -> tuple[int, int]:
    size = getattr(config, "image_size", 32)
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def _frames(config) -> int:
    """Spectrogram frames: what the encoder's positions hold before its stride-2 conv (Whisper-style)."""
    return 2 * getattr(config, "max_source_positions", 16)


def _flat_patch_dim(model: nn.Module) -> int:
    """Features per flattened patch: what the first patch-embedding layer takes in."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            return module.in_channels * int(torch.tensor(module.kernel_size).prod())
        if isinstance(module, nn.Linear):
            return module.in_features
    raise NotImplementedError("no patch embedding to size flattened patches by")


def _input(name: str, model: PreTrainedModel, g: torch.Generator, params) -> torch.Tensor:
    config = model.config
    vocab = getattr(config, "vocab_size", None) or 99
    if name in ("input_ids", "decoder_input_ids"):  # text ids below the special ones moved to the top
        return torch.randint(3, min(vocab, 99) - 20, (BATCH, SEQ), generator=g)
    if name in ("pixel_values", "pixel_values_videos") and ("grid_thw" in params or "image_grid_thw" in params):
        return torch.randn(16, _flat_patch_dim(model), generator=g)  # one image of 4 × 4 patches, flattened
    if name == "hidden_states" and "grid_thw" in params:
        return torch.randn(16, _flat_patch_dim(model), generator=g)
    if name in ("grid_thw", "image_grid_thw"):
        return torch.tensor([[1, 4, 4]])
    if name in ("pixel_values", "pixel_values_videos"):
        frames = getattr(config, "num_frames", None)
        shape = (BATCH, frames) if frames and (name.endswith("videos") or "video" in type(model).__name__.lower()
                                              or model.config.model_type in VIDEO_PIXELS) else (BATCH,)
        return torch.randn(*shape, getattr(config, "num_channels", 3), *_image_size(config), generator=g)
    if name == "input_values":
        return torch.randn(BATCH, 1600, generator=g)
    if name == "input_features":
        return torch.randn(BATCH, getattr(config, "num_mel_bins", 16), _frames(config), generator=g)
    if name == "input_features_mask":
        return torch.ones(BATCH, _frames(config), dtype=torch.long)
    if name == "past_values":  # time series: the context window plus the largest lag
        if hasattr(config, "num_input_channels"):
            return torch.randn(BATCH, config.context_length, config.num_input_channels, generator=g)
        return torch.randn(BATCH, config.context_length + max(config.lags_sequence), generator=g)
    if name in ("past_time_features", "future_time_features"):
        length = config.context_length + max(config.lags_sequence) if name.startswith("past") else config.prediction_length
        return torch.randn(BATCH, length, config.num_time_features, generator=g)
    if name == "past_observed_mask":
        return torch.ones(BATCH, config.context_length + max(config.lags_sequence))
    if name == "future_values":
        return torch.randn(BATCH, config.prediction_length, generator=g)
    if name == "bbox":  # boxes with x0 ≤ x1, y0 ≤ y1 on a 0..1000 page
        corners = torch.randint(0, 500, (BATCH, SEQ, 2), generator=g)
        return torch.cat([corners, corners + torch.randint(0, 500, (BATCH, SEQ, 2), generator=g)], -1)
    raise NotImplementedError(f"no tiny input for {name!r}")


# Model types whose `pixel_values` are videos (batch, frames, channels, height, width).
VIDEO_PIXELS = {"timesformer", "vivit", "videomae"}


def tiny_inputs(model: PreTrainedModel, seed: int = 1) -> dict[str, torch.Tensor]:
    """The main input and every required one, by name; encoder-decoders also get decoder_input_ids."""
    config = model.config
    g = torch.Generator().manual_seed(seed)
    params = inspect.signature(model.forward).parameters
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in ("self", "kwargs")]
    wanted = list(dict.fromkeys([getattr(model, "main_input_name", "input_ids"), *required]))
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        wanted.append("decoder_input_ids")
    if "past_time_features" in params:  # time series: the decoder needs the future window too
        wanted += ["past_time_features", "past_observed_mask", "future_values", "future_time_features"]
    wanted += [name for name in ("bbox", "input_features_mask") if name in params]
    family = FAMILY_INPUTS.get(config.model_type)
    if family is None and "pixel_values" in params and hasattr(config, "vision_config") and _media_token(config, "image") is not None:
        family = _with_image_tokens
    if family is None and "input_features" in params and _media_token(config, "audio") is not None:
        family = _with_audio_tokens
    inputs = {}
    for name in dict.fromkeys(wanted):
        try:
            inputs[name] = _input(name, model, g, params)
        except NotImplementedError:
            if family is None:
                raise
    if family is not None:
        inputs.update(family(model, inputs, g))
    missing = [name for name in wanted if name not in inputs]
    if missing:
        raise NotImplementedError(f"no tiny input for {missing}")
    return inputs


def _question_tokens(model, inputs, g):
    ids = inputs["input_ids"].clone()
    ids[:, 1] = model.config.question_token_id
    return {"input_ids": ids}


def _media_token(config, kind: str) -> int | None:
    for key in (f"{kind}_token_id", f"{kind}_token_index"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


def _features(output) -> list[torch.Tensor]:
    """The media features a get_image_features/get_audio_features call returns, whatever its form."""
    output = getattr(output, "pooler_output", output)
    if isinstance(output, torch.Tensor):
        return [output]
    return [t for item in output for t in _features(item)]


def _with_image_tokens(model, inputs, g):
    """Vision-language models: an image per sample and, in the text, one image token per image feature."""
    config, vision = model.config, model.config.vision_config
    height, width = _image_size(vision)
    needs_sizes = inspect.signature(model.get_image_features).parameters.get("image_sizes")
    needs_sizes = needs_sizes is not None and needs_sizes.default is inspect.Parameter.empty
    extra = {"image_sizes": torch.tensor([[height, width]] * BATCH)} if needs_sizes else {}
    pixel_values = torch.randn(BATCH, getattr(vision, "num_channels", 3), height, width, generator=g)
    with torch.no_grad():
        features = _features(model.get_image_features(pixel_values=pixel_values, **extra))
    per_image = sum(f.numel() for f in features) // features[0].shape[-1] // BATCH
    tokens = torch.full((BATCH, per_image), _media_token(config, "image"))
    return {"pixel_values": pixel_values, "input_ids": torch.cat([tokens, inputs["input_ids"]], 1), **extra}


def _with_audio_tokens(model, inputs, g):
    """Audio-language models: a spectrogram per sample and, in the text, one audio token per audio feature."""
    audio = model.config.audio_config
    features = {"input_features": torch.randn(BATCH, audio.num_mel_bins, _frames(audio), generator=g)}
    if "input_features_mask" in inspect.signature(model.forward).parameters:
        features["input_features_mask"] = torch.ones(BATCH, _frames(audio), dtype=torch.long)
    with torch.no_grad():
        found = _features(model.get_audio_features(**features))
    per_clip = sum(f.numel() for f in found) // found[0].shape[-1] // BATCH
    tokens = torch.full((BATCH, per_clip), _media_token(model.config, "audio"))
    return {**features, "input_ids": torch.cat([tokens, inputs["input_ids"]], 1)}


def _half_the_patches_masked(model, inputs, g):
    patches = inputs["pixel_values"].shape[1] // model.config.tubelet_size * (model.config.image_size // model.config.patch_size) ** 2
    mask = torch.zeros(BATCH, patches, dtype=torch.bool)
    mask[:, : patches // 2] = True
    return {"bool_masked_pos": mask}


# Per-family inputs on top of the generic ones.
FAMILY_INPUTS = {
    "audio-spectrogram-transformer": lambda model, inputs, g: {
        "input_values": torch.randn(BATCH, model.config.max_length, model.config.num_mel_bins, generator=g)},
    "vilt": lambda model, inputs, g: {"pixel_values": torch.randn(BATCH, 3, 32, 32, generator=g)},
    "perceiver": lambda model, inputs, g: {"inputs": torch.randint(3, 80, (BATCH, model.config.max_position_embeddings), generator=g)},
    "lxmert": lambda model, inputs, g: {"visual_feats": torch.randn(BATCH, 4, model.config.visual_feat_dim, generator=g),
                                        "visual_pos": torch.rand(BATCH, 4, 4, generator=g)},
    "blip_2_qformer": lambda model, inputs, g: {"query_embeds": torch.randn(BATCH, 4, HIDDEN, generator=g),
                                                "encoder_hidden_states": torch.randn(BATCH, 5, HIDDEN, generator=g)},
    "pix2struct_vision_model": lambda model, inputs, g: {"flattened_patches": torch.cat(
        [torch.randint(1, 5, (BATCH, 16, 2), generator=g).float(), torch.randn(BATCH, 16, _flat_patch_dim(model) - 2, generator=g)], -1)},
    "siglip2_vision_model": lambda model, inputs, g: {
        "pixel_values": torch.randn(BATCH, 16, _flat_patch_dim(model), generator=g),
        "pixel_attention_mask": torch.ones(BATCH, 16, dtype=torch.long), "spatial_shapes": torch.tensor([[4, 4]] * BATCH)},
    "omniasr_audio": lambda model, inputs, g: {"input_values": torch.randn(BATCH, 1, 1600, generator=g)},
    "vibevoice_acoustic_tokenizer": lambda model, inputs, g: {"input_values": torch.randn(BATCH, 1, 1600, generator=g)},
    "videomae": _half_the_patches_masked,
    "video_llama_3_vision": lambda model, inputs, g: {"merge_sizes": torch.tensor([1])},
    "kimi_k25_vision": lambda model, inputs, g: {
        "pixel_values": torch.randn(16, 3, model.config.patch_size, model.config.patch_size, generator=g)},
    "splinter": _question_tokens,
    "musicgen_decoder": lambda model, inputs, g: {"input_ids": inputs["input_ids"].repeat(model.config.num_codebooks, 1)},
    "musicgen_melody_decoder": lambda model, inputs, g: {"input_ids": inputs["input_ids"].repeat(model.config.num_codebooks, 1)},
}


# ---------------------------------------------------------------- helpers

@contextlib.contextmanager
def _quiet():
    """No warnings, logs, progress bars or printed training logs: the matrix prints one line per architecture."""
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            yield
        finally:
            transformers.logging.set_verbosity(level)


def modality(model: PreTrainedModel) -> str:
    name = getattr(model, "main_input_name", "input_ids")
    return {
        "input_ids": "text",
        "pixel_values": "vision",
        "input_values": "audio",
        "input_features": "audio",
        "past_values": "time series",
        "pixel_values_videos": "video",
        "inputs": "text",  # Perceiver's generic inputs: bytes, for its masked LM
    }.get(name, name)


# ---------------------------------------------------------------- one architecture

@dataclass
class Row:
    model_type: str
    model_class: str = ""
    modality: str = ""
    sites: int = 0
    status: str = ""  # passed / refused / skipped / failed
    reason: str = ""
    folder: str = ""  # the saved ReLU checkpoint, checked by `reload_all`
    seconds: float = 0.0

    def csv_row(self, version: str, date: str) -> dict:
        return {
            "model_type": self.model_type, "model_class": self.model_class, "modality": self.modality,
            "sites": self.sites, "status": self.status, "reason": self.reason, "transformers": version, "date": date,
        }


def flat_outputs(outputs, prefix: str = "out") -> dict[str, torch.Tensor]:
    """Every tensor of a model output (ModelOutput, tuple, nested), by a stable key."""
    if isinstance(outputs, torch.Tensor):
        return {prefix: outputs}
    if hasattr(outputs, "items") and not isinstance(outputs, torch.Tensor):
        items = list(outputs.items())
    elif isinstance(outputs, (list, tuple)):
        items = list(enumerate(outputs))
    else:  # caches and other objects: not outputs to compare
        return {}
    flat = {}
    for key, value in items:
        flat.update(flat_outputs(value, f"{prefix}.{key}"))
    return flat


def surrogate_loss(outputs) -> torch.Tensor:
    """A scalar that depends on every differentiable output: no head needs its own labels."""
    tensors = [t for t in flat_outputs(outputs).values() if t.is_floating_point() and t.requires_grad]
    if not tensors:
        raise RuntimeError("the model returns no differentiable tensor")
    return sum(t.float().square().mean() for t in tensors)


def gelu_classes() -> tuple[type, ...]:
    """Module classes of the GELU family: what the installed ACT2CLS builds for a GELU name, and nn.GELU."""
    classes = {nn.GELU}
    for name in gelu_family():
        entry = ACT2CLS[name]
        classes.add(entry[0] if isinstance(entry, tuple) else entry)
    return tuple(classes)


def gelu_module_names(model: nn.Module) -> set[str]:
    return {name for name, module in model.named_modules() if isinstance(module, gelu_classes())}


def resolve_class(arch: Architecture) -> type | None:
    """The model class with the richest head in the auto mappings; else the one model class of the
    config's own modeling module (configs of sub-models such as `clip_text_model`)."""
    name = model_class_name(arch.model_type)
    if name:
        return getattr(transformers, name, None)
    module_name = arch.config_class.__module__.replace(".configuration_", ".modeling_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    own = [
        obj for obj in (getattr(module, n) for n in getattr(module, "__all__", ()))
        if isinstance(obj, type) and issubclass(obj, PreTrainedModel) and obj.config_class is arch.config_class
        and not obj.__name__.endswith("PreTrainedModel") and hasattr(transformers, obj.__name__)
    ]
    return own[0] if own else None


def _train_two_steps(model: PreTrainedModel, inputs: dict, folder: Path) -> None:
    from hf_kgelu import KGeluTrainer, KGeluTrainingArguments

    class SurrogateLossTrainer(KGeluTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            outputs = model(**inputs)
            loss = surrogate_loss(outputs)
            return (loss, outputs) if return_outputs else loss

    args = KGeluTrainingArguments(
        output_dir=str(folder / "trainer"), max_steps=2, per_device_train_batch_size=1, learning_rate=1e-3,
        kgelu_anneal_start=0.5, report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True,
        use_cpu=True, dataloader_pin_memory=False, remove_unused_columns=False, seed=0,
    )
    # The whole tiny batch is one dataset item, passed as it is: some models' inputs have no batch
    # dimension to split (the Qwen-VL vision towers take all patches of all images as one sequence).
    trainer = SurrogateLossTrainer(model=model, args=args, train_dataset=[inputs], data_collator=lambda items: items[0])
    trainer.train()
    if trainer.state.global_step != 2:
        raise AssertionError(f"the trainer ran {trainer.state.global_step} steps, not 2")
    target = args.kgelu_resolved_target_lambda
    for name, site in hf_kgelu.modeling.find_sites(model):
        lam = site.lam.detach()
        if not torch.allclose(lam, torch.full_like(lam, target), rtol=1e-5):
            raise AssertionError(f"after annealing, λ at {name} is {lam.tolist()}, not λ* = {target}")


def _check_sites(model: PreTrainedModel, gelu_build: set[str]) -> list[str]:
    """The λ-GELU sites sit where the GELU build has its GELUs; GELUs the config does not reach stay GELU."""
    sites = [name for name, _ in hf_kgelu.modeling.find_sites(model)]
    misplaced = sorted(set(sites) - gelu_build)
    if misplaced:
        raise AssertionError(f"λ-GELU sites where the GELU build has no GELU: {misplaced[:5]}")
    remaining = gelu_module_names(model)
    if remaining != gelu_build - set(sites):
        raise AssertionError(f"GELUs neither converted nor left in place: {sorted((gelu_build - set(sites)) ^ remaining)[:5]}")
    return sites


def _forward_backward(model: PreTrainedModel, inputs: dict) -> tuple[int, int]:
    """θ gets a finite gradient through every site whose output reaches the outputs (a site may run
    for a branch the head does not use: CANINE's final character encoder under a pooled classifier).
    Returns how many sites ran (a config may build sites its forward never calls) and how many
    λ-GELUs ran that are no site (built at call time from the config: Funnel's discriminator head)."""
    sites = hf_kgelu.modeling.find_sites(model)
    site_ids = {id(site): name for name, site in sites}
    ran, call_time = set(), []

    def record(module, args, output):
        if isinstance(module, hf_kgelu.KGELU) and id(module) in site_ids:
            ran.add(site_ids[id(module)])
        elif isinstance(module, hf_kgelu.KGELU):
            call_time.append(module)

    hook = torch.nn.modules.module.register_module_forward_hook(record)
    try:
        model.zero_grad(set_to_none=True)
        surrogate_loss(model(**inputs)).backward()
    finally:
        hook.remove()
    grads = {name: site.theta.grad for name, site in sites if site.theta.grad is not None}
    if ran and not grads:
        raise AssertionError("no θ got a gradient: no λ-GELU site that ran reaches the outputs")
    for name, grad in grads.items():
        if not torch.isfinite(grad).all():
            raise AssertionError(f"θ at {name} got a non-finite gradient")
    return len(ran), len(call_time)


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def _build_refusal(arch: Architecture, error: Exception) -> str | None:
    """transformers' own refusal of λ-GELU at build time (I-BERT checks `hidden_act == "gelu"`; OpenAI GPT
    looks `afn` up in a table of its own), told apart from a broken tiny build by naming the key or kgelu."""
    message = f"{type(error).__name__}: {_first_line(error)}"
    if KGELU in message or any(key in message for key in arch.keys):
        frame = traceback.extract_tb(error.__traceback__)[-1]
        return f"transformers refuses λ-GELU at build: {message} ({Path(frame.filename).name}:{frame.lineno} `{frame.line}`)"
    return None


def run_one(arch: Architecture, workdir: Path) -> Row:
    """Build, train, relu-ize and save one architecture; the reload is checked later by `reload_all`."""
    from safetensors.torch import save_file

    from hf_kgelu import relu_ize

    row = Row(arch.model_type)
    start = time.perf_counter()
    cls = resolve_class(arch)
    if cls is None:
        row.status, row.reason = "skipped", "transformers has no model class for this config alone"
        return row
    row.model_class = cls.__name__
    with _quiet():
        with torch.device("meta"):
            gelu_build = gelu_module_names(cls(tiny_config(arch, kgelu=False)))
        torch.manual_seed(0)
        try:
            model = cls(tiny_config(arch, kgelu=True))
        except Exception as error:
            if (reason := _build_refusal(arch, error)) is None:
                raise
            row.status, row.reason = "refused", reason
            return row
    row.modality = modality(model)
    sites = _check_sites(model, gelu_build)
    row.sites = len(sites)
    folder = workdir / arch.model_type
    with _quiet():
        model.eval()
        call_time = 0
        if sites:
            inputs = tiny_inputs(model)
            ran, call_time = _forward_backward(model, inputs)
            if not ran:  # Voxtral Realtime builds an activation_fn it never calls
                row.reason = f"its {len(sites)} λ-GELU site(s) did not run on the matrix's inputs (θ untrained, swapped all the same)"
            _train_two_steps(model, inputs, folder)
            model.eval()
        try:
            relu_model, report = relu_ize(model)
        except ValueError as error:
            row.status, row.reason = "refused", "relu_ize: " + _first_line(error)
            return row
    if not sites:
        raise AssertionError("relu_ize accepted a model without λ-GELU sites")
    if len(report.sites) != len(sites) or hf_kgelu.modeling.find_sites(relu_model):
        raise AssertionError(f"relu_ize swapped {len(report.sites)} of {len(sites)} sites")
    if KGELU in relu_model.config.to_json_string():
        raise AssertionError("the ReLU model's config still names kgelu")
    unreported = [n for n in gelu_build - set(sites) if not any(e.startswith(f"{n} (") for e in report.remaining_gelu)]
    if unreported:
        raise AssertionError(f"GELUs left in the ReLU model but not in report.remaining_gelu: {unreported[:3]}")
    if call_time and not report.call_time_kgelu:
        raise AssertionError(f"{call_time} λ-GELU(s) built at call time ran, but report.call_time_kgelu is empty")
    if report.call_time_kgelu:
        row.reason += "; " if row.reason else ""
        row.reason += "λ-GELU built at every call, untrained, swapped outside the bound: " + "; ".join(report.call_time_kgelu[:2])
    if report.remaining_gelu:
        row.reason += "; " if row.reason else ""
        row.reason += f"keeps {len(report.remaining_gelu)} GELU(s) no config key reaches: " + "; ".join(report.remaining_gelu[:3])
    with _quiet(), torch.no_grad():
        torch.manual_seed(0)  # stochastic forwards (ViT-MAE's random masking) draw the same in the reload
        expected = flat_outputs(relu_model(**inputs))
        relu_model.save_pretrained(folder / "relu")
    tensors = {**{f"input.{k}": v for k, v in inputs.items()}, **expected}
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(folder / "expected.safetensors"))
    row.folder = str(folder)
    row.status = "saved"
    row.seconds = time.perf_counter() - start
    return row


# ---------------------------------------------------------------- the reload, in a process without hf_kgelu

_RELOAD_IMPORTS = """
import json, sys
import torch, transformers
from safetensors.torch import load_file
from transformers.activations import ACT2CLS
"""
_RELOAD = """
torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
try:
    import hf_kgelu  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
results = {"blocked": blocked, "kgelu_registered": "kgelu" in ACT2CLS, "rows": {}}
for model_type, folder in json.loads(sys.stdin.read()):
    try:
        text = open(f"{folder}/relu/config.json").read()
        if "kgelu" in text.lower():
            raise AssertionError("config.json names kgelu")
        architecture = json.loads(text)["architectures"][0]
        model, info = getattr(transformers, architecture).from_pretrained(f"{folder}/relu", output_loading_info=True)
        model.eval()
        if info["missing_keys"] or info["unexpected_keys"]:
            raise AssertionError(f"missing {sorted(info['missing_keys'])[:3]}, unexpected {sorted(info['unexpected_keys'])[:3]}")
        expected = load_file(f"{folder}/expected.safetensors")
        inputs = {k[len("input."):]: v for k, v in expected.items() if k.startswith("input.")}
        with torch.no_grad():
            torch.manual_seed(0)
            got = flat_outputs(model(**inputs))
        wanted = {k: v for k, v in expected.items() if not k.startswith("input.")}
        if got.keys() != wanted.keys():
            raise AssertionError(f"outputs differ in keys: {sorted(got.keys() ^ wanted.keys())[:4]}")
        worst = max(((got[k].float() - wanted[k].float()).abs().max().item() for k in wanted if wanted[k].numel()), default=0.0)
        if worst > 1e-5:
            raise AssertionError(f"outputs differ from the in-memory ReLU model by {worst:.3g}")
        results["rows"][model_type] = {"ok": True, "architecture": architecture}
    except Exception as error:
        results["rows"][model_type] = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
print(json.dumps(results))
"""


def reload_all(rows: list[Row], workdir: Path) -> None:
    """Load every saved ReLU checkpoint with its own `architectures` class in ONE fresh process in which
    `import hf_kgelu` fails, and compare its outputs with the in-memory ReLU model's."""
    jobs = [(row.model_type, row.folder) for row in rows if row.status == "saved"]
    if not jobs:
        return
    shim = workdir / "no_hf_kgelu"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['hf_kgelu'] = None  # `import hf_kgelu` fails\n")
    env = {**os.environ, "PYTHONPATH": str(shim), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
    script = _RELOAD_IMPORTS + inspect.getsource(flat_outputs) + _RELOAD
    child = subprocess.run([sys.executable, "-c", script], input=json.dumps(jobs), env=env, capture_output=True, text=True,
                           timeout=600, cwd=workdir, check=False)
    if child.returncode != 0:
        raise RuntimeError(f"the reload process failed:\n{child.stderr[-3000:]}")
    results = json.loads(child.stdout.strip().splitlines()[-1])
    if not results["blocked"] or results["kgelu_registered"]:
        raise RuntimeError("the reload process could import hf_kgelu: it does not check stock transformers")
    by_type = {row.model_type: row for row in rows}
    for model_type, result in results["rows"].items():
        row = by_type[model_type]
        if result["ok"]:
            row.status = "passed"
        else:
            row.status, row.reason = "failed", "reload: " + result["error"]


# ---------------------------------------------------------------- the matrix

# Architectures this matrix cannot build tiny yet, and why: reviewed by hand, each one a gap of the
# test's tiny sizes or inputs, not of hf_kgelu. Their rows say "skipped" with this reason; one that
# passes (another transformers version) is a passed row, and `stale_not_built` names it.
_DETECTOR = "detector whose backbone and encoder channel sizes the generic tiny sizes do not match"
_TRACKER = "video tracker driven by an inference session, not a forward on tensors"
_CODEC = "audio codec whose grouped convolutions need sizes the generic ones break"
_LAYERS = "hybrid stack whose per-layer types need a tiny layout of their own"
_ANYRES = "any-resolution image tiling (pixel values per tile and image sizes)"
NOT_BUILT: dict[str, str] = {
    **dict.fromkeys(["d_fine", "deimv2", "pp_doclayout_v2", "pp_doclayout_v3", "pp_doclayout_v4", "rt_detr", "rt_detr_v2",
                     "rf_detr", "lw_detr_vit", "eomt", "eomt_dinov3", "zoedepth", "tipsv2_dpt"], _DETECTOR),
    **dict.fromkeys(["edgetam_video", "sam2_video", "sam3_tracker_video"], _TRACKER),
    **dict.fromkeys(["mimi", "mimi_decoder", "mimi_encoder", "pocket_tts", "pocket_tts_audio_tokenizer",
                     "pocket_tts_audio_tokenizer_decoder", "pocket_tts_audio_tokenizer_encoder", "vibevoice_acoustic_tokenizer",
                     "vibevoice_acoustic_tokenizer_decoder", "vibevoice_acoustic_tokenizer_encoder", "gradium_phonon_tts"], _CODEC),
    **dict.fromkeys(["gemma3n_text", "lfm3_vl", "diffusion_gemma_text"], _LAYERS),
    **dict.fromkeys(["llava_next", "llava_next_video", "llava_onevision"], _ANYRES),
    "sam2_hiera_det_model": "Hiera backbone: per-stage widths tied to its fixed embed_dim",
    "sam2_vision_model": "Hiera backbone: per-stage widths tied to its fixed embed_dim",
    "hiera": "per-stage query strides and mask unit sizes tied to the default image size",
    "bridgetower": "cross-modal layers sized from sub-configs the generic sizes leave inconsistent",
    "bros": "bounding boxes of 8 coordinates per token and their projection",
    "clap_audio_model": "fused mel spectrogram input of a shape of its own",
    "clipseg": "image-text pair with conditional masks",
    "xclip": "video-text pair with prompt generator inputs",
    "clvp_encoder": "speech encoder with rotary sizes tied to the default head size",
    "flava_multimodal_model": "takes the image and text encoders' hidden states, not raw inputs",
    "florence_vision": "DaViT stages fed with hidden states of a shape of their own",
    "gemma4_vision": "needs pixel position ids for variable-resolution patches",
    "inkling2_vision": "patch grid merged in blocks the flattened patches do not match",
    "lfm2_vl": "SigLIP2 spatial shapes and pixel attention masks per image",
    "muse_glimmer": "image grid inputs of its own vision tower",
    "musicflamingo": "audio features computed from the text ids (rotary time embedding)",
    "lightglue": "keypoint matcher: pairs of images with a keypoint detector",
    "minicpm_ocr_vision": "needs the target sizes of image slices",
    "minicpmv4_7_vision": "needs the target sizes of image slices",
    "mllama_vision_model": "tiled images with aspect-ratio ids and masks",
    "molmo2_vision": "patch pooling sizes tied to the default image size",
    "muse_spark": "config validation ties sub-config sizes together",
    "muse_spark_audio": "config validation ties layer and head sizes together",
    "nemotron3_5_transcribe_asr_audio": "subsampling conv sized for 128 mel bins",
    "nemotron3_diarization_audio": "subsampling conv sized for 128 mel bins",
    "nemotron3_5_transcribe_word_timestamp": "takes embeddings from the ASR model, not raw inputs",
    "paddleocr_vl_vision": "needs image grid positions of its own",
    "pix2struct_text_model": "its text config lacks initializer_range, which its own init reads",
    "pix2struct_vision_model": "flattened patches with row and column ids sized by its patch embedding",
    "pp_formulanet_text": "decoder that takes encoder embeddings as well as ids",
    "qwen3_asr_encoder": "audio windows of 100 frames at least",
    "sam3_lite_text_text_model": "text encoder called with embeddings inside SAM 3",
    "seggpt": "in-context segmentation: prompt images and masks",
    "tvp": "video-text model with a visual prompter of its own sizes",
    "videomt": "video segmentation with queries per frame",
    "vjepa2": "video clips with tubelets and a predictor",
    "voxtral_realtime": "streaming encoder inputs",
}

_OPTIONAL_PACKAGE = re.compile(r"requires the (\S+) library")


def _failure_row(arch: Architecture, error: Exception) -> Row:
    row = Row(arch.model_type, status="failed", reason=f"{type(error).__name__}: {_first_line(error)}"[:300])
    with contextlib.suppress(Exception):
        row.model_class = resolve_class(arch).__name__
    package = _OPTIONAL_PACKAGE.search(str(error)) if isinstance(error, ImportError) else None
    if package:
        row.status, row.reason = "skipped", f"needs the optional package {package.group(1)}, which is not installed"
    elif arch.model_type in NOT_BUILT:
        row.status, row.reason = "skipped", f"no tiny build in this matrix yet: {NOT_BUILT[arch.model_type]} ({row.reason})"
    return row


def run_matrix(workdir: Path, only: set[str] | None = None, log=None) -> list[Row]:
    """One row per architecture: passed, refused (with the reason), skipped (with the reason) or failed."""
    rows = []
    for arch in architectures():
        if only and arch.model_type not in only:
            continue
        # The Trainer's end-of-training gc.collect() would walk every object of the ~300 modeling
        # modules imported so far (0.6 s a call); frozen objects are skipped.
        gc.freeze()
        try:
            row = run_one(arch, workdir)
        except Exception as error:  # noqa: BLE001 - every failure becomes a row of the matrix
            row = _failure_row(arch, error)
            if log and row.status == "failed":
                traceback.print_exc(file=log)
        if log:
            print(f"{row.model_type:32} {row.status:8} {row.seconds:5.2f}s {row.reason[:120]}", file=log, flush=True)
        rows.append(row)
    reload_all(rows, workdir)
    return rows


def stale_not_built(rows: list[Row]) -> list[str]:
    """Model types listed in NOT_BUILT that passed or were refused all the same: to take off the list."""
    return [row.model_type for row in rows if row.model_type in NOT_BUILT and row.status in ("passed", "refused")]


def write_csv(rows: list[Row], path: Path = CSV_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r.model_type):
            writer.writerow(row.csv_row(transformers.__version__, date))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"write {CSV_PATH.relative_to(CSV_PATH.parents[2])}")
    parser.add_argument("--only", nargs="*", help="model types to run (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_matrix(Path(tmp), set(args.only or ()), log=sys.stderr)
    counts = {status: sum(r.status == status for r in rows) for status in ("passed", "refused", "skipped", "failed")}
    print(" ".join(f"{k} {v}" for k, v in counts.items()))
    for row in rows:
        if row.status != "passed":
            print(f"{row.model_type}: {row.status}: {row.reason}")
    if stale_not_built(rows):
        print(f"listed in NOT_BUILT, yet built: {', '.join(stale_not_built(rows))}")
    if args.write:
        write_csv(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
