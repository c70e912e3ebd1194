"""PEFT with λ-GELU: keep θ trainable and saved in the adapter.

`get_peft_model` freezes every base parameter, θ included. Listing the activation modules in
`modules_to_save` makes PEFT train (and save) a copy of each site instead: θ then lands in the
adapter file, and `merge_and_unload()` puts the trained copies back in place, so the merged
model is an ordinary λ-GELU model ready for `relu_ize`.
"""

from __future__ import annotations

import copy

from torch import nn

from .modules import KGELU, find_sites


def trained_sites(model: nn.Module) -> list[tuple[str, KGELU]]:
    """The λ-GELU sites whose θ training acts on, in depth order.

    Under PEFT `modules_to_save` that is the active adapter's copy of each activation: the
    frozen `original_module` (and other adapters' copies) are left out.
    """
    inactive: set[int] = set()
    for module in model.modules():
        copies = getattr(module, "modules_to_save", None)
        original = getattr(module, "original_module", None)
        if isinstance(copies, nn.ModuleDict) and isinstance(original, nn.Module):
            active = list(getattr(module, "active_adapters", None) or [])[:1]
            inactive.update(id(m) for m in original.modules())
            for name, copy_ in copies.items():
                if name not in active:
                    inactive.update(id(m) for m in copy_.modules())
    return [(name, site) for name, site in find_sites(model) if id(site) not in inactive]


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
