"""hf-kgelu: λ-GELU (learnable gating hardness) for Hugging Face models, and ReLU-ization.

Importing this package registers the "kgelu" activation in transformers.
"""

from .functional import kgelu, lambda_from_theta, theta_from_lambda
from .hardness import (
    hardness_drift,
    hardness_profile,
    init_hardness,
    init_lambdas,
    spearman_rho,
    target_lambda,
    tolerance_at,
)
from .modules import KGELU, find_sites
from .registry import convert_to_kgelu, kgelu_config, register_kgelu

register_kgelu()

__version__ = "0.1.0"

__all__ = [
    "KGELU",
    "convert_to_kgelu",
    "find_sites",
    "hardness_drift",
    "hardness_profile",
    "init_hardness",
    "init_lambdas",
    "kgelu",
    "kgelu_config",
    "lambda_from_theta",
    "register_kgelu",
    "spearman_rho",
    "target_lambda",
    "theta_from_lambda",
    "tolerance_at",
]
