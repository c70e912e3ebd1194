"""The kgelu side of a transformers config: which keys name an activation, the kgelu_* settings,
and configs that build λ-GELU, GELU or ReLU sites."""

from __future__ import annotations

import copy
import os

from transformers import activations as hf_activations

from ..hardness import (
    DEFAULT_LAMBDA_INIT,
    DEFAULT_LAMBDA_RANGE,
    check_tau,
    init_lambdas,
)

KGELU_NAME = "kgelu"

# Activation names whose modules `convert_to_kgelu` replaces. λ = 1 is the exact (erf) GELU;
# the tanh approximations differ from it by < 1e-3.
GELU_NAMES = ("gelu", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")
RELU_NAME = "relu"
ACTIVATIONS = ("gelu", "relu", KGELU_NAME)


def activation_config_keys(config, names=None) -> list[str]:
    """Config attributes that name an activation (e.g. `hidden_act`, `activation_function`).

    With `names`, only those whose value is one of them.
    """
    known = set(hf_activations.ACT2CLS) | {KGELU_NAME}
    keys = []
    for key, value in config.to_dict().items():
        if isinstance(value, str) and "act" in key and value in known and (names is None or value in names):
            keys.append(key)
    return keys


def setting(config, name, default):
    value = getattr(config, name, None)
    return default if value is None else value


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
        setattr(config, key, KGELU_NAME)
    config.kgelu_init, config.kgelu_lambda_init = init, float(lambda_init)
    config.kgelu_lambda_range = [float(v) for v in lambda_range]
    config.kgelu_per_channel = bool(per_channel)
    if tau is not None:
        config.kgelu_tau = check_tau(tau)
    return config


def with_activation(config, activation: str, **kgelu_settings):
    """A copy of `config` whose activation keys build `activation` ("gelu", "relu" or "kgelu").

    Every key naming a GELU-family activation, "kgelu" or "relu" is rewritten; for "kgelu" the
    config also records `kgelu_settings` (init, lambda_init, lambda_range, tau, per_channel: see
    `kgelu_config`)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: choose one of {', '.join(ACTIVATIONS)}")
    names = (*GELU_NAMES, KGELU_NAME, "relu")
    keys = activation_config_keys(config, names)
    if not keys:
        raise ValueError(
            f"{type(config).__name__} has no activation key naming GELU, λ-GELU or ReLU (e.g. hidden_act, "
            "activation_function): cannot switch its activation"
        )
    if activation == KGELU_NAME:
        config = copy.deepcopy(config)
        for key in keys:  # kgelu_config converts GELU-family keys only
            setattr(config, key, "gelu")
        return kgelu_config(config, **kgelu_settings)
    config = copy.deepcopy(config)
    for key in keys:
        setattr(config, key, activation)
    for key in [k for k in vars(config) if k.startswith("kgelu_")]:
        delattr(config, key)
    return config
