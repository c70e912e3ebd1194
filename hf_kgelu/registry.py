"""Makes "kgelu" a transformers activation and keeps θ right through construction and loading.

Importing `hf_kgelu` calls `register_kgelu()`, which
- adds "kgelu" to both `ACT2CLS` and `ACT2FN` (the latter is a copy, so both need it); every
  lookup builds a fresh `KGELU`, so every activation site owns its θ;
- wraps `PreTrainedModel.post_init` so that a model whose sites are KGELU reads its kgelu
  settings from the config (`kgelu_tau`, `kgelu_init`, `kgelu_lambda_init`,
  `kgelu_lambda_range`, `kgelu_per_channel`) and keeps θ in float32 when loaded in bf16/fp16;
- wraps `PreTrainedModel._initialize_weights` so that θ is initialised through the model's own
  init path with the guarded `transformers.initialization.copy_`: a GELU checkpoint loaded into
  a "kgelu" config gets θ at its intended value instead of uninitialised memory, and a loaded θ
  is never overwritten.
"""

from __future__ import annotations

import copy
import functools
import os

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import activations as hf_activations
from transformers import initialization as hf_init

from .functional import theta_from_lambda
from .hardness import DEFAULT_LAMBDA_RANGE, init_hardness, init_lambdas
from .modules import DEFAULT_LAMBDA_INIT, DEFAULT_TAU, KGELU, check_tau, find_sites

KGELU_NAME = "kgelu"

# Activation names whose modules `convert_to_kgelu` replaces. λ = 1 is the exact (erf) GELU;
# the tanh approximations differ from it by < 1e-3.
GELU_NAMES = ("gelu", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")


def register_kgelu() -> None:
    """Register "kgelu" in `ACT2CLS` and `ACT2FN`, and install the init hooks. Idempotent."""
    hf_activations.ACT2CLS[KGELU_NAME] = KGELU
    hf_activations.ACT2FN[KGELU_NAME] = KGELU
    if not getattr(PreTrainedModel.post_init, "_hf_kgelu_hook", False):
        PreTrainedModel.post_init = _wrap_post_init(PreTrainedModel.post_init)
    if not getattr(PreTrainedModel._initialize_weights, "_hf_kgelu_hook", False):
        PreTrainedModel._initialize_weights = _wrap_initialize_weights(PreTrainedModel._initialize_weights)


GATED_PREFIX = "gated-"  # T5-style `feed_forward_proj="gated-gelu"`: a gated MLP with that activation


def activation_config_keys(config, names=None) -> list[str]:
    """Config attributes that name an activation (e.g. `hidden_act`, `activation_function`).

    With `names`, every string attribute whose value is one of them, plain or gated (T5's
    `feed_forward_proj="gated-gelu"`), whatever the key is called: OpenAI GPT's `afn` and T5's
    `feed_forward_proj` have no "act" in their names. Without `names`, only keys containing "act"
    whose value is a registered activation (an unknown key holding e.g. "linear" is no activation).
    """
    known = set(hf_activations.ACT2CLS) | {KGELU_NAME}
    keys = []
    for key, value in config.to_dict().items():
        if not isinstance(value, str):
            continue
        if names is not None:
            if value in names or (value.startswith(GATED_PREFIX) and value[len(GATED_PREFIX):] in names):
                keys.append(key)
        elif "act" in key and value in known:
            keys.append(key)
    return keys


def renamed_activation(value: str, name: str) -> str:
    """`value` (an activation key's value) naming `name` instead, keeping a "gated-" prefix."""
    return GATED_PREFIX + name if value.startswith(GATED_PREFIX) else name


def _setting(config, name, default):
    value = getattr(config, name, None)
    return default if value is None else value


def infer_num_channels(model: nn.Module, site_name: str) -> int:
    """Features of the last dimension entering a site: the output size of the first linear
    layer beside it (GPT-2 `c_fc`, BERT/ViT `dense`/`fc1`)."""
    parent = model.get_submodule(site_name.rpartition(".")[0]) if "." in site_name else model
    for child in parent.children():
        if isinstance(child, nn.Linear):
            return child.out_features
        if type(child).__name__ == "Conv1D" and hasattr(child, "nf"):
            return child.nf
    raise ValueError(
        f"cannot tell how many channels feed the λ-GELU site {site_name!r}: no linear layer beside it. "
        "Call site.resize_channels(num_channels) on it yourself."
    )


def configure_sites(model: nn.Module) -> None:
    """Apply the config's kgelu settings to every site of `model` and record each site's initial λ."""
    sites = find_sites(model)
    config = getattr(model, "config", None)
    if not sites or config is None:
        return
    tau = _setting(config, "kgelu_tau", None)
    per_channel = bool(_setting(config, "kgelu_per_channel", False))
    targets = init_lambdas(
        len(sites),
        _setting(config, "kgelu_init", "uniform"),
        _setting(config, "kgelu_lambda_init", DEFAULT_LAMBDA_INIT),
        tuple(_setting(config, "kgelu_lambda_range", DEFAULT_LAMBDA_RANGE)),
    )
    for (name, site), target in zip(sites, targets):
        if tau is not None:
            site.tau = float(tau)
        if per_channel and not site.per_channel:
            site.resize_channels(infer_num_channels(model, name))
        site.initial_lambda = target
        # A submodel's post_init ran first with its own depth order: let the outermost one decide.
        site._is_hf_initialized = False
    if isinstance(model, PreTrainedModel):
        keep = set(model._keep_in_fp32_modules_strict or [])
        model._keep_in_fp32_modules_strict = keep | {f"{name}.theta" for name, _ in sites}


def _wrap_post_init(post_init):
    @functools.wraps(post_init)
    def wrapped(self):
        configure_sites(self)
        return post_init(self)

    wrapped._hf_kgelu_hook = True
    return wrapped


def _wrap_initialize_weights(initialize_weights):
    @functools.wraps(initialize_weights)
    def wrapped(self, module, is_custom_code: bool = False):
        if not isinstance(module, KGELU):
            return initialize_weights(self, module, is_custom_code)
        if getattr(module, "_is_hf_initialized", False) or module.theta.is_meta:
            return None
        lam = max(getattr(module, "initial_lambda", DEFAULT_LAMBDA_INIT), 1.0 + 1e-6)
        value = torch.full_like(module.theta, theta_from_lambda(lam, module.tau))
        hf_init.copy_(module.theta, value)  # guarded: a θ loaded from the checkpoint is kept
        module._is_hf_initialized = True
        return None

    wrapped._hf_kgelu_hook = True
    return wrapped


def kgelu_config(
    config,
    *,
    init: str = "uniform",
    lambda_init: float = DEFAULT_LAMBDA_INIT,
    lambda_range=DEFAULT_LAMBDA_RANGE,
    tau: float | None = None,
    per_channel: bool = False,
):
    """A copy of a GELU model's config (object or checkpoint path) that builds λ-GELU sites.

    Every activation key naming a GELU becomes "kgelu", and the kgelu settings are written as
    config attributes, so `Model.from_pretrained(gelu_checkpoint, config=kgelu_config(...))`
    loads the GELU weights with θ initialised to the chosen profile.
    """
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config)
    else:
        config = copy.deepcopy(config)
    keys = activation_config_keys(config, GELU_NAMES + (KGELU_NAME,))
    if not keys:
        raise ValueError(f"{type(config).__name__} names no GELU activation to turn into λ-GELU")
    init_lambdas(2, init, lambda_init, lambda_range)  # validates the settings now, not at build time
    for key in keys:
        setattr(config, key, renamed_activation(getattr(config, key), KGELU_NAME))
    config.kgelu_init, config.kgelu_lambda_init = init, float(lambda_init)
    config.kgelu_lambda_range = [float(v) for v in lambda_range]
    config.kgelu_per_channel = bool(per_channel)
    if tau is not None:
        config.kgelu_tau = check_tau(tau)
    return config


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


def _model_device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
