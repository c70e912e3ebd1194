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
  is never overwritten;
- wraps `PreTrainedModel.from_pretrained` to warn, naming the sites, when a checkpoint's θ is NaN
  or infinite (a diverged run): λ is undefined there.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import activations as hf_activations
from transformers import initialization as hf_init

from ..hardness import (
    DEFAULT_LAMBDA_INIT,
    DEFAULT_LAMBDA_RANGE,
    init_lambdas,
    theta_from_lambda,
)
from .config import KGELU_NAME, KGELU_REQUIRES, check_kgelu_settings, setting
from .module import KGELU
from .sites import find_sites, infer_num_channels

logger = logging.getLogger(__name__)


def register_kgelu() -> None:
    """Register "kgelu" in `ACT2CLS` and `ACT2FN`, and install the init hooks. Idempotent."""
    hf_activations.ACT2CLS[KGELU_NAME] = KGELU
    hf_activations.ACT2FN[KGELU_NAME] = KGELU
    if not getattr(PreTrainedModel.post_init, "_hf_kgelu_hook", False):
        PreTrainedModel.post_init = _wrap_post_init(PreTrainedModel.post_init)
    if not getattr(PreTrainedModel._initialize_weights, "_hf_kgelu_hook", False):
        PreTrainedModel._initialize_weights = _wrap_initialize_weights(PreTrainedModel._initialize_weights)
    if not getattr(PreTrainedModel.from_pretrained, "_hf_kgelu_hook", False):
        PreTrainedModel.from_pretrained = _wrap_from_pretrained(PreTrainedModel.from_pretrained)


def configure_sites(model: nn.Module) -> None:
    """Apply the config's kgelu settings to every site of `model` and record each site's initial λ."""
    sites = find_sites(model)
    config = getattr(model, "config", None)
    if not sites or config is None:
        return
    check_kgelu_settings(config)  # at build and at from_pretrained: a bad value refuses, never builds NaN sites
    config.kgelu_requires = KGELU_REQUIRES  # config.json tells a reader without hf-kgelu what to do
    tau = setting(config, "kgelu_tau", None)
    per_channel = setting(config, "kgelu_per_channel", False)
    targets = init_lambdas(
        len(sites),
        setting(config, "kgelu_init", "uniform"),
        setting(config, "kgelu_lambda_init", DEFAULT_LAMBDA_INIT),
        tuple(setting(config, "kgelu_lambda_range", DEFAULT_LAMBDA_RANGE)),
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


def warn_non_finite_theta(model: nn.Module, source=None) -> list[str]:
    """Warn about (and return the names of) the sites whose θ is NaN or infinite: λ is undefined there."""
    bad = [name for name, site in find_sites(model) if not site.theta.is_meta and not bool(torch.isfinite(site.theta).all())]
    if bad:
        shown = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        logger.warning(
            "the hardness θ of λ-GELU site(s) %s%s is NaN or infinite, so λ there is undefined and the activation's output "
            "is NaN or meaningless (a diverged run?): load an earlier checkpoint, or set λ again "
            "(hf_kgelu.init_hardness(model) or site.set_lambda)",
            shown, f" loaded from {source}" if source is not None else "",
        )
    return bad


def _wrap_from_pretrained(from_pretrained):
    function = from_pretrained.__func__

    @functools.wraps(function)
    def wrapped(cls, *args, **kwargs):
        loaded = function(cls, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # output_loading_info=True: (model, info)
        warn_non_finite_theta(model, args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        return loaded

    wrapped._hf_kgelu_hook = True
    return classmethod(wrapped)


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
