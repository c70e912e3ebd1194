"""hf-kgelu: λ-GELU (learnable gating hardness, arXiv 2603.21991) for Hugging Face models, and
ReLU-ization. Importing this package registers the "kgelu" activation in transformers.

The public names, by what a user does (everything else is importable from its module):

- the activation: `KGELU` (the module), `kgelu` (the op), `kgelu_config` (a GELU config or
  checkpoint → a λ-GELU config), `convert_to_kgelu` (a built GELU model → λ-GELU sites);
- hardness: `hardness_profile`, `init_hardness`, `target_lambda` (λ* from a tolerance ε);
- training: `KGeluTrainer`, `KGeluTrainingArguments`;
- ReLU: `relu_ize` (swap every site for ReLU), `substitution_report` (the metric before/after);
- conversion of pretrained GELU models: `convert_gelu_to_relu`, `ConversionConfig`;
- checkpoints (load → transform → measure → save → push): `relu_ize_checkpoint`,
  `convert_checkpoint`, `train_and_relu_ize`.
"""

import importlib.util as _importlib_util
import sys as _sys
from pathlib import Path as _Path

from .hardness import target_lambda
from .modeling import (  # registers "kgelu"
    KGELU,
    convert_to_kgelu,
    hardness_profile,
    init_hardness,
    kgelu_config,
)
from .ops import kgelu


def _source_checkout_cards() -> None:
    """Run from a source checkout without installing (PYTHONPATH=., e.g. on a machine with no
    package index), the top-level model_cards/ is `hf_kgelu.model_cards`, as the wheel ships it."""
    cards = _Path(__file__).resolve().parent.parent / "model_cards"
    if _importlib_util.find_spec(f"{__name__}.model_cards") is not None or not (cards / "__init__.py").is_file():
        return
    spec = _importlib_util.spec_from_file_location(f"{__name__}.model_cards", cards / "__init__.py",
                                                   submodule_search_locations=[str(cards)])
    module = _importlib_util.module_from_spec(spec)
    _sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_source_checkout_cards()

__version__ = "0.2.0"

# The Trainer stack, PEFT and the Hub client load on first use, so `import hf_kgelu` stays light.
_LAZY = {
    "KGeluTrainer": "training",
    "KGeluTrainingArguments": "training",
    "relu_ize": "relu",
    "substitution_report": "substitution",
    "convert_gelu_to_relu": "conversion",
    "ConversionConfig": "conversion",
    "relu_ize_checkpoint": "checkpoint",
    "convert_checkpoint": "checkpoint",
    "train_and_relu_ize": "checkpoint",
}

__all__ = [
    "KGELU",
    "kgelu",
    "kgelu_config",
    "convert_to_kgelu",
    "hardness_profile",
    "init_hardness",
    "target_lambda",
    *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
