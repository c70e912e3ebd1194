"""hf-kgelu: λ-GELU (learnable gating hardness) for Hugging Face models, and ReLU-ization.

Importing this package registers the "kgelu" activation in transformers.
"""

from .functional import kgelu, kgelu_theta, lambda_from_theta, theta_from_lambda
from .hardness import (
    hardness_drift,
    hardness_profile,
    init_hardness,
    init_lambdas,
    spearman_rho,
    target_lambda,
    tolerance_at,
)
from .models import MLPConfig, MLPForSequenceClassification  # registers the "kgelu_mlp" model type
from .modules import KGELU, find_sites
from .registry import convert_to_kgelu, kgelu_config, register_kgelu

register_kgelu()

__version__ = "0.1.0"

# The Trainer stack, PEFT and matplotlib load on first use, so `import hf_kgelu` stays light.
_LAZY = {
    "KGeluTrainer": "trainer",
    "KGeluTrainingArguments": "trainer",
    "KGeluHardnessCallback": "trainer",
    "KGeluDistributedCallback": "distributed",
    "check_theta_sync": "distributed",
    "gather_full_model": "distributed",
    "ThetaSyncError": "distributed",
    "AnnealingSchedule": "annealing",
    "prepare_peft_model": "peft_utils",
    "kgelu_modules_to_save": "peft_utils",
    "plot_hardness": "plotting",
    "relu_ize": "relu",
    "ReluReport": "relu",
    "SwappedSite": "relu",
    "substitution_report": "relu",
    "SubstitutionReport": "relu",
    "evaluate_model": "metrics",
    "data_aware_targets": "data_aware",
    "PreActivationSampler": "data_aware",
    "convert_gelu_to_relu": "convert",
    "swap_with_readout_correction": "convert",
    "activation_sparsity": "analysis",
    "export_onnx": "analysis",
    "render_model_card": "hub",
    "save_relu_model": "hub",
    "push_relu_model": "hub",
    "relu_ize_checkpoint": "hub",
    "HubPushError": "hub",
    "run_pipeline": "pipeline",
    "PipelineResult": "pipeline",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "AnnealingSchedule",
    "HubPushError",
    "KGELU",
    "KGeluDistributedCallback",
    "KGeluHardnessCallback",
    "KGeluTrainer",
    "KGeluTrainingArguments",
    "MLPConfig",
    "MLPForSequenceClassification",
    "PipelineResult",
    "PreActivationSampler",
    "ReluReport",
    "SubstitutionReport",
    "SwappedSite",
    "ThetaSyncError",
    "check_theta_sync",
    "activation_sparsity",
    "convert_gelu_to_relu",
    "convert_to_kgelu",
    "data_aware_targets",
    "export_onnx",
    "evaluate_model",
    "find_sites",
    "gather_full_model",
    "hardness_drift",
    "hardness_profile",
    "init_hardness",
    "init_lambdas",
    "kgelu",
    "kgelu_theta",
    "kgelu_config",
    "kgelu_modules_to_save",
    "lambda_from_theta",
    "plot_hardness",
    "prepare_peft_model",
    "push_relu_model",
    "register_kgelu",
    "relu_ize",
    "relu_ize_checkpoint",
    "render_model_card",
    "run_pipeline",
    "save_relu_model",
    "spearman_rho",
    "substitution_report",
    "swap_with_readout_correction",
    "target_lambda",
    "theta_from_lambda",
    "tolerance_at",
]
