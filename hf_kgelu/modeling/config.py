"""The kgelu side of a transformers config: which keys name an activation, the kgelu_* settings,
and configs that build λ-GELU, GELU or ReLU sites."""

from __future__ import annotations

import copy
import json
import os

from transformers import activations as hf_activations

from ..hardness import (
    DEFAULT_LAMBDA_INIT,
    DEFAULT_LAMBDA_RANGE,
    DEFAULT_TAU,
    INIT_MODES,
    check_tau,
    init_lambdas,
    is_finite_number,
)

KGELU_NAME = "kgelu"
# Written into every config that builds λ-GELU sites, so that a reader of config.json who met
# transformers' bare `KeyError: 'kgelu'` finds the fix; `relu_ize` removes it with the other kgelu_* keys.
KGELU_REQUIRES = (
    "pip install hf-kgelu; import hf_kgelu before from_pretrained (or `hf-kgelu relu-ize` this checkpoint "
    "for a stock-transformers ReLU model)"
)

# Activation names whose modules `convert_to_kgelu` replaces. λ = 1 is the exact (erf) GELU;
# the tanh approximations differ from it by < 1e-3.
GELU_NAMES = ("gelu", "gelu_new", "gelu_python", "gelu_pytorch_tanh", "gelu_fast", "gelu_accurate")
RELU_NAME = "relu"
ACTIVATIONS = ("gelu", "relu", KGELU_NAME)


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


def setting(config, name, default):
    value = getattr(config, name, None)
    return default if value is None else value


def _is_lambda(value) -> bool:
    return is_finite_number(value) and value >= 1


def _is_lambda_range(value) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_is_lambda, value))
            and value[0] <= value[1])


# The kgelu_* config attributes: (is the value allowed, what is allowed, the default). None means unset.
KGELU_SETTINGS = {
    "kgelu_tau": (lambda v: is_finite_number(v) and v > 0,
                  "a finite number > 0 (the temperature τ of λ = 1 + softplus(θ/τ))", DEFAULT_TAU),
    "kgelu_init": (lambda v: v in INIT_MODES, f"one of {', '.join(map(repr, INIT_MODES))}", "uniform"),
    "kgelu_lambda_init": (_is_lambda, "a finite number ≥ 1 (λ = 1 is GELU)", DEFAULT_LAMBDA_INIT),
    "kgelu_lambda_range": (_is_lambda_range, "[low, high] with finite numbers 1 ≤ low ≤ high",
                           list(DEFAULT_LAMBDA_RANGE)),
    "kgelu_per_channel": (lambda v: isinstance(v, bool), "true or false (a boolean, not a string or number)", False),
}
KGELU_INFO_KEYS = ("kgelu_requires",)


def check_kgelu_settings(config) -> None:
    """Refuse a config whose kgelu_* attributes would build wrong sites (τ = NaN gives λ = NaN
    everywhere, a string "false" turns per-channel on) or that names an unknown one (a typo would
    be ignored): one-line ValueError naming the attribute, the value, what is allowed and the fix."""
    for name, (allowed, description, default) in KGELU_SETTINGS.items():
        value = getattr(config, name, None)
        if value is not None and not allowed(value):
            raise ValueError(
                f"config.{name} must be {description}, got {value!r}: fix it in the config (or the checkpoint's "
                f"config.json) or delete it for the default {json.dumps(default)}"
            )
    unknown = sorted(k for k in vars(config) if k.startswith("kgelu_") and k not in (*KGELU_SETTINGS, *KGELU_INFO_KEYS))
    if unknown:  # a misspelt setting would be ignored without a word
        raise ValueError(f"config.{unknown[0]} is not a kgelu setting (known: {', '.join(KGELU_SETTINGS)}): fix its name "
                         "in the config (or config.json) or delete it")


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
    config.kgelu_per_channel = per_channel  # checked below: a string "false" must not turn it on
    if tau is not None:
        config.kgelu_tau = check_tau(tau)
    check_kgelu_settings(config)  # also what the source config carried (e.g. a kgelu_tau edited into config.json)
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
            setattr(config, key, renamed_activation(getattr(config, key), "gelu"))
        return kgelu_config(config, **kgelu_settings)
    config = copy.deepcopy(config)
    for key in keys:
        setattr(config, key, renamed_activation(getattr(config, key), activation))
    for key in [k for k in vars(config) if k.startswith("kgelu_")]:
        delattr(config, key)
    return config
