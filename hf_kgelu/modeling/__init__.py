"""The transformers integration: the `KGELU` module, "kgelu" in transformers' activation tables,
the kgelu_* config settings, and converting GELU sites. Importing it registers "kgelu"."""

from .config import (
    ACTIVATIONS,
    GELU_NAMES,
    KGELU_NAME,
    RELU_NAME,
    activation_config_keys,
    kgelu_config,
    with_activation,
)
from .convert import activation_of, convert_to_kgelu, gelu_module_classes
from .mlp import (  # registers the "kgelu_mlp" model type
    MLPConfig,
    MLPForSequenceClassification,
)
from .module import KGELU
from .registration import register_kgelu
from .sites import (
    find_sites,
    hardness_profile,
    init_hardness,
    require_sites,
    short_site_names,
    trained_sites,
)

register_kgelu()

__all__ = [
    "ACTIVATIONS",
    "GELU_NAMES",
    "KGELU",
    "KGELU_NAME",
    "MLPConfig",
    "MLPForSequenceClassification",
    "RELU_NAME",
    "activation_config_keys",
    "activation_of",
    "convert_to_kgelu",
    "find_sites",
    "gelu_module_classes",
    "hardness_profile",
    "init_hardness",
    "kgelu_config",
    "register_kgelu",
    "require_sites",
    "short_site_names",
    "trained_sites",
    "with_activation",
]
