"""Finding λ-GELU sites in a model and reading or setting their hardness: the model side of
`hf_kgelu.hardness` (which is pure math)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..hardness import (
    DEFAULT_LAMBDA_INIT,
    DEFAULT_LAMBDA_RANGE,
    check_tau,
    init_lambdas,
)
from .module import KGELU


def find_sites(model: nn.Module) -> list[tuple[str, KGELU]]:
    """Every λ-GELU site of `model` as (qualified name, module), in depth (registration) order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, KGELU)]


def site_lambda(site: KGELU) -> torch.Tensor:
    """λ of a site as float64 on the CPU (the float32 λ, exactly)."""
    return site.lam.detach().to(device="cpu", dtype=torch.float64)


def require_sites(model: nn.Module, trained: bool = False, purpose: str = "") -> list[tuple[str, KGELU]]:
    """`find_sites` (with `trained`: the sites training acts on, `trained_sites`); a clear error when
    there are none, saying what they were wanted for (`purpose`, e.g. ", so KGeluTrainer has no hardness to train")."""
    sites = trained_sites(model) if trained else find_sites(model)
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no λ-GELU (KGELU) activation sites{purpose}: build it from a config with "
            'hidden_act="kgelu" (GPT-2: activation_function="kgelu"), or convert a GELU model with '
            "hf_kgelu.convert_to_kgelu(model)"
        )
    return sites


def init_hardness(
    model: nn.Module,
    mode: str = "uniform",
    lambda_init: float = DEFAULT_LAMBDA_INIT,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
    tau: float | None = None,
) -> dict[str, float]:
    """Set every site's θ from an init profile (and optionally τ); returns the profile set."""
    sites = require_sites(model)
    if tau is not None:
        check_tau(tau)
    values = init_lambdas(len(sites), mode, lambda_init, lambda_range)
    for (_, module), lam in zip(sites, values):
        if tau is not None:
            module.tau = float(tau)
        module.set_lambda(lam)
    return hardness_profile(model)


def hardness_profile(model: nn.Module, per_channel: bool = False) -> dict[str, float | torch.Tensor]:
    """λ of every site in depth order, keyed by the site's module name.

    Per-channel sites report their mean λ, or the whole λ tensor with `per_channel=True`.
    """
    profile: dict[str, float | torch.Tensor] = {}
    for name, module in require_sites(model):
        lam = module.lam.detach().float().cpu()
        profile[name] = lam.clone() if per_channel and module.per_channel else lam.mean().item()
    return profile


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


def short_site_names(names: list[str]) -> list[str]:
    """Site names without the parts they all share: `transformer.h.0.mlp.act` → `h.0`."""
    if not names:
        return []
    parts = [name.split(".") for name in names]
    if len(parts) == 1:
        return [".".join(parts[0][-2:])]
    shortest = min(len(p) for p in parts)
    prefix = 0
    while prefix < shortest - 1 and len({p[prefix] for p in parts}) == 1:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix - 1 and len({p[-1 - suffix] for p in parts}) == 1:
        suffix += 1
    short = []
    for p in parts:
        # A bare layer index reads badly: keep the container name in front of it ("h.0").
        start = prefix - 1 if prefix > 0 and p[prefix].isdigit() else prefix
        short.append(".".join(p[start : len(p) - suffix]))
    return short if len(set(short)) == len(short) else list(names)


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
