"""Turning the GELU modules of an already-built model into λ-GELU sites (`convert_to_kgelu`)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import activations as hf_activations

from ..hardness import DEFAULT_LAMBDA_INIT, DEFAULT_LAMBDA_RANGE, DEFAULT_TAU
from .config import GELU_NAMES, KGELU_NAME, kgelu_config
from .module import KGELU
from .registration import configure_sites, register_kgelu
from .sites import find_sites, infer_num_channels, init_hardness


def convert_to_kgelu(
    model: nn.Module,
    *,
    init: str = "uniform",
    lambda_init: float = DEFAULT_LAMBDA_INIT,
    lambda_range=DEFAULT_LAMBDA_RANGE,
    tau: float | None = None,
    per_channel: bool = False,
) -> nn.Module:
    """Replace every GELU-family activation module of `model` with a λ-GELU, in place.

    With a transformers model, the config is rewritten as `kgelu_config` does, so
    `save_pretrained` → `from_pretrained` rebuilds the same model.
    """
    register_kgelu()
    gelu_classes = gelu_module_classes()
    device = _model_device(model)
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, gelu_classes):
                setattr(parent, child_name, KGELU(tau=tau if tau is not None else DEFAULT_TAU).to(device))
                replaced += 1
    if not replaced:
        raise ValueError(f"{type(model).__name__} has no GELU activation module to convert to λ-GELU")
    if getattr(model, "config", None) is not None:
        model.config = kgelu_config(
            model.config, init=init, lambda_init=lambda_init, lambda_range=lambda_range, tau=tau, per_channel=per_channel
        )
    if per_channel:
        for name, site in find_sites(model):
            site.resize_channels(infer_num_channels(model, name))
    init_hardness(model, init, lambda_init, lambda_range, tau)
    if isinstance(model, PreTrainedModel):
        configure_sites(model)
    return model


def gelu_module_classes() -> tuple[type, ...]:
    """The module classes of the GELU family (transformers' GELU names and `nn.GELU`)."""
    classes = {nn.GELU}
    for name in GELU_NAMES:
        entry = hf_activations.ACT2CLS.get(name)
        if entry is not None:
            classes.add(entry[0] if isinstance(entry, tuple) else entry)
    return tuple(classes)


def activation_of(model: nn.Module) -> str:
    """"kgelu" when the model has λ-GELU sites, else "gelu" when it has GELU modules, else "relu"."""
    if find_sites(model):
        return KGELU_NAME
    if any(isinstance(m, gelu_module_classes()) for m in model.modules()):
        return "gelu"
    return "relu"


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
