"""PEFT with λ-GELU: keep θ trainable and saved in the adapter.

`get_peft_model` freezes every base parameter, θ included. Listing the activation modules in
`modules_to_save` makes PEFT train (and save) a copy of each site instead: θ then lands in the
adapter file, and `merge_and_unload()` puts the trained copies back in place, so the merged
model is an ordinary λ-GELU model ready for `relu_ize`.
"""

from __future__ import annotations

import copy

from torch import nn

from .sites import trained_sites


def kgelu_modules_to_save(model: nn.Module) -> list[str]:
    """The module name of every λ-GELU site of an (unwrapped) model, for `modules_to_save`."""
    names = [name for name, _ in trained_sites(model)]
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no λ-GELU (KGELU) activation sites: build it with hidden_act=\"kgelu\" "
            "(GPT-2: activation_function=\"kgelu\") or convert it with hf_kgelu.convert_to_kgelu first"
        )
    return names


def prepare_peft_model(model: nn.Module, peft_config, adapter_name: str = "default", **kwargs):
    """`peft.get_peft_model` with every λ-GELU site added to `modules_to_save`, so θ stays
    trainable and is saved in the adapter. `peft_config` is not modified; extra keyword
    arguments go to `get_peft_model`."""
    from peft import get_peft_model

    sites = kgelu_modules_to_save(model)
    config = copy.deepcopy(peft_config)
    if not hasattr(config, "modules_to_save"):
        raise ValueError(
            f"{type(config).__name__} has no modules_to_save, so PEFT cannot keep the λ-GELU hardness θ trainable: "
            "use an adapter method that supports modules_to_save (e.g. LoRA)"
        )
    config.modules_to_save = list(dict.fromkeys([*(config.modules_to_save or []), *sites]))
    peft_model = get_peft_model(model, config, adapter_name=adapter_name, **kwargs)
    frozen = [name for name, site in trained_sites(peft_model) if not site.theta.requires_grad]
    if frozen or len(trained_sites(peft_model)) != len(sites):
        raise RuntimeError(
            f"PEFT did not make the θ of every λ-GELU site trainable (frozen: {frozen[:3]}); "
            "check that modules_to_save can wrap these modules in this PEFT version"
        )
    return peft_model
