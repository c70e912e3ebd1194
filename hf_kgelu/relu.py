"""`relu_ize`: swap every λ-GELU site (and, on request, every GELU) for `nn.ReLU`, rewrite the
config so that stock transformers rebuilds exactly that network, and report what was swapped
(the metric before and after the swap is `hf_kgelu.substitution`'s).

Why a rebuild check: the saved artefact is a config plus weights. If the model holds
activations that one config key cannot describe (mixed activations, a site no key controls),
`from_pretrained` would silently build a different network. `relu_ize` builds the class from
the rewritten config on the meta device (no memory, no weights) and compares the module class
at every module name with the swapped model; any difference is refused before anything is
changed.
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers import PreTrainedConfig, PreTrainedModel

from .hardness import BOUNDS, target_lambda, tolerance_at
from .modeling.config import (
    GELU_NAMES,
    KGELU_INFO_KEYS,
    KGELU_NAME,
    RELU_NAME,
    activation_config_keys,
    renamed_activation,
)
from .modeling.convert import gelu_module_classes
from .modeling.model_code import CALL_TIME_ACTIVATION, GELU_CALL, code_findings, is_gelu_name
from .modeling.module import KGELU

logger = logging.getLogger(__name__)

KGELU_CONFIG_PREFIX = "kgelu_"
# relu_ize warns when a λ-GELU site guarantees a looser gate-L1 tolerance than this: λ < √(2/π)/0.05 ≈ 16
# (annealing targets λ* ≈ 160 for ε = 0.005).
FAR_FROM_RELU_TOLERANCE = 0.05


@dataclass(frozen=True)
class SwappedSite:
    """One activation module replaced by `nn.ReLU`.

    `lam` is λ before the swap (the mean over channels for a per-channel site; 1 for a plain
    GELU, which is λ-GELU at λ = 1). `tolerance` maps each bound to the ε that the site's
    smallest λ guarantees (per channel: every channel meets it).
    """

    name: str
    activation: str
    lam: float
    lam_min: float
    lam_max: float
    num_channels: int | None
    tau: float | None
    tolerance: dict[str, float]


@dataclass
class ReluReport:
    """What `relu_ize` did: the sites (in depth order), the config keys it rewrote (key → value
    before), the kgelu settings it removed from the config (for the model card), the GELUs
    the ReLU model still computes (`remaining_gelu`: GELU modules no swap reached, and GELU
    functions called in its modules' code; empty for a pure ReLU network), and the λ-GELUs the
    model built at every call from a config key (`call_time_kgelu`): never trained nor annealed,
    they are not among `sites`, and the rewritten key turns them into ReLU without the bound's
    guarantee."""

    model_class: str
    sites: list[SwappedSite]
    config_changes: dict[str, str] = field(default_factory=dict)
    kgelu_settings: dict[str, Any] = field(default_factory=dict)
    include_gelu: bool = False
    merged_peft: bool = False
    remaining_gelu: list[str] = field(default_factory=list)
    call_time_kgelu: list[str] = field(default_factory=list)

    @property
    def lambdas(self) -> dict[str, float]:
        """λ per site before the swap (the mean for a per-channel site)."""
        return {site.name: site.lam for site in self.sites}

    @property
    def min_lambda(self) -> float:
        return min(site.lam_min for site in self.sites)

    def tolerance(self, bound: str = "gate_l1") -> float:
        """The worst (largest) ε over all sites under `bound`: what the whole swap guarantees per site."""
        return max(site.tolerance[bound] for site in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _peft_modules(model: nn.Module) -> list[str]:
    return [name or "<model>" for name, module in model.named_modules() if type(module).__module__.startswith("peft.")]


def _is_peft_wrapper(model: nn.Module) -> bool:
    return any(cls.__name__ == "PeftModel" and cls.__module__.startswith("peft") for cls in type(model).__mro__)


def copy_model(model: nn.Module) -> nn.Module:
    """`copy.deepcopy(model)`, also when a module holds a tensor computed with autograd (RecurrentGemma
    keeps its recurrent and conv states as attributes after a training forward), which deepcopy refuses:
    such a tensor is copied detached."""
    memo: dict[int, Any] = {}
    for module in model.modules():
        for value in vars(module).values():
            values = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
            for item in values:
                if isinstance(item, torch.Tensor) and not item.is_leaf:
                    memo[id(item)] = item.detach().clone()
    return copy.deepcopy(model, memo)


def _swap_targets(model: nn.Module, include_gelu: bool) -> list[tuple[str, nn.Module]]:
    """Every (name, module) to replace, in depth order; a module reachable under two names appears twice."""
    kinds = (KGELU, *gelu_module_classes()) if include_gelu else (KGELU,)
    targets = [(name, module) for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, kinds)]
    if any(name == "" for name, _ in targets):
        raise ValueError("the model itself is an activation module: there is nothing to relu-ize around it")
    return targets


def remaining_gelus(model: nn.Module) -> list[str]:
    """The GELUs `model` still computes: GELU-family modules (including model-specific classes such as
    BLOOM's `BloomGelu`), as "<module name> (<Class>)", and GELU functions its modules' code calls
    (RoBERTa's LM head, Whisper's conv stem), as "functional gelu in <Class>.<method> (<module name>)"."""
    remaining, seen_classes = [], set()
    for name, module in model.named_modules():
        cls = _module_class(module)
        if isinstance(module, (KGELU, nn.ReLU)):
            continue
        if isinstance(module, gelu_module_classes()) or is_gelu_name(cls.__name__):
            remaining.append(f"{name or '<model>'} ({cls.__name__})")
        elif cls not in seen_classes:
            seen_classes.add(cls)
            remaining += [
                f"functional {f.expression} in {f.where} ({name or '<model>'})" for f in code_findings(cls) if f.kind == GELU_CALL
            ]
    return remaining


def call_time_kgelus(model: nn.Module) -> list[str]:
    """λ-GELUs that `model` builds afresh at every call from a config key naming kgelu (Funnel's
    discriminator head: `ACT2FN[self.config.hidden_act](x)` in forward), as
    "<callee> in <Class>.<method> (<module name>)". Their θ is never trained nor annealed."""
    config = getattr(model, "config", None)
    if not isinstance(config, PreTrainedConfig):
        return []
    kgelu_keys = {key for _, sub in _configs(config) for key in activation_config_keys(sub, (KGELU_NAME,))}
    found, seen_classes = [], set()
    for name, module in model.named_modules():
        cls = _module_class(module)
        if cls in seen_classes:
            continue
        seen_classes.add(cls)
        found += [
            f"{f.expression} in {f.where} ({name or '<model>'})"
            for f in code_findings(cls)
            if f.kind == CALL_TIME_ACTIVATION and f.config_key in kgelu_keys
        ]
    return found


def _describe(name: str, module: nn.Module) -> SwappedSite:
    if isinstance(module, KGELU):
        lam = module.lam.detach().float().cpu()
        lam_mean, lam_min, lam_max = lam.mean().item(), lam.min().item(), lam.max().item()
        activation, channels, tau = KGELU_NAME, module.num_channels, module.tau
    else:  # the erf GELU is λ-GELU at λ = 1; the tanh approximations differ from it by < 1e-3
        lam_mean = lam_min = lam_max = 1.0
        activation, channels, tau = type(module).__name__, None, None
    tolerance = {bound: tolerance_at(max(lam_min, 1.0), bound) for bound in BOUNDS}
    return SwappedSite(name, activation, lam_mean, lam_min, lam_max, channels, tau, tolerance)


def _configs(config: PreTrainedConfig, prefix: str = ""):
    """The config and its sub-configs (e.g. `text_config`), with their dotted prefixes."""
    yield prefix, config
    for key, value in list(vars(config).items()):
        if isinstance(value, PreTrainedConfig):
            yield from _configs(value, f"{prefix}{key}.")


def _rewrite_config(config: PreTrainedConfig, names: tuple[str, ...]) -> tuple[dict[str, str], dict[str, Any]]:
    """Point every activation key naming one of `names` at "relu" and drop the kgelu settings, in place."""
    changes: dict[str, str] = {}
    removed: dict[str, Any] = {}
    for prefix, sub in _configs(config):
        for key in activation_config_keys(sub, names):
            changes[prefix + key] = getattr(sub, key)
            setattr(sub, key, renamed_activation(getattr(sub, key), RELU_NAME))
        for key in [k for k in vars(sub) if k.startswith(KGELU_CONFIG_PREFIX)]:
            if key not in KGELU_INFO_KEYS:  # settings, for the card; not the loading note
                removed[prefix + key] = getattr(sub, key)
            delattr(sub, key)
    return changes, removed


def _module_class(module: nn.Module) -> type:
    """The class a module was built as. torch gives every parametrized instance (weight norm:
    Wav2Vec2's positional conv) a class of its own, `Parametrized<Class>`, so two builds of the same
    network never share it: compare the class underneath."""
    cls = type(module)
    if parametrize.is_parametrized(module):
        cls = cls.__bases__[0]
    return cls


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "")


def _meta_build(model: PreTrainedModel, config: PreTrainedConfig, which: str) -> dict[str, type]:
    """The module class at every name of `type(model)(config)`, built on the meta device."""
    try:
        with torch.device("meta"):
            built = type(model)(config)
    except Exception as error:
        raise ValueError(
            f"cannot check that the rewritten config rebuilds the ReLU network: building {type(model).__name__} "
            f"from {which} failed ({type(error).__name__}: {_first_line(error)}); refusing to produce a config that may not load"
        ) from error
    return {n: _module_class(m) for n, m in built.named_modules(remove_duplicate=False)}


def _check_rebuild(model: PreTrainedModel, swapped_names: set[str], config: PreTrainedConfig) -> None:
    """Refuse unless `type(model)(config)` has, at every module name, the class the swap leaves there.

    A module where the model already differs from a build of its own (unrewritten) config, and
    the rewrite changes nothing, is no concern of the swap: the model switched it at run time
    (BigBird replaces its block-sparse attention on short inputs) and switches it again after
    loading."""
    expected = {n: (nn.ReLU if n in swapped_names else _module_class(m)) for n, m in model.named_modules(remove_duplicate=False)}
    built = _meta_build(model, config, "the rewritten config")
    differing = sorted(n for n in expected.keys() | built.keys() if expected.get(n) is not built.get(n))
    if differing:
        own = _meta_build(model, model.config, "its own config")
        differing = [n for n in differing if n in swapped_names or own.get(n) is not built.get(n)]
    if not differing:
        return
    shown = [
        f"{name or '<model>'}: the ReLU model has {getattr(expected.get(name), '__name__', 'nothing')}, "
        f"the rewritten config builds {getattr(built.get(name), '__name__', 'nothing')}"
        for name in differing[:12]
    ]
    more = f"\n  … and {len(differing) - 12} more" if len(differing) > 12 else ""
    raise ValueError(
        f"refusing to relu-ize {type(model).__name__}: its config cannot describe the network the swap would produce "
        f"({len(differing)} module(s) differ, first {shown[0]}), so from_pretrained would build a different model.\n"
        "Modules that differ:\n  " + "\n  ".join(shown) + more + "\n"
        "Make every activation that one config key controls the same kind (all λ-GELU, or pass include_gelu=True "
        "to swap plain GELUs too), and keep λ-GELU only at sites that a config activation key builds."
    )


def _forget_theta_fp32(model: nn.Module, swapped_names: set[str]) -> None:
    """Drop the swapped sites' θ from `_keep_in_fp32_modules_strict` (the kgelu init hook adds them,
    relative to each (sub)model, and transformers copies a submodel's entries up unprefixed)."""

    def names_a_swapped_theta(entry: str) -> bool:
        stem = entry[: -len(".theta")] if entry.endswith(".theta") else None
        return stem is not None and any(name == stem or name.endswith("." + stem) for name in swapped_names)

    for sub in model.modules():
        keep = vars(sub).get("_keep_in_fp32_modules_strict")
        if isinstance(sub, PreTrainedModel) and keep:
            remaining = {entry for entry in keep if not names_a_swapped_theta(entry)}
            sub._keep_in_fp32_modules_strict = remaining or type(sub)._keep_in_fp32_modules_strict


def warn_far_from_relu(report: ReluReport) -> list[SwappedSite]:
    """Warn, once for all of them, about the λ-GELU sites whose smallest λ is far below a ReLU-like
    hardness (gate-L1 ε > FAR_FROM_RELU_TOLERANCE): swapping them changes the function a lot. Plain
    GELUs (include_gelu) are a deliberate direct swap and are not warned about. Returns the sites."""
    far = [site for site in report.sites
           if site.activation == KGELU_NAME and site.tolerance["gate_l1"] > FAR_FROM_RELU_TOLERANCE]
    if far:
        worst = min(far, key=lambda site: site.lam_min)
        named = ", ".join(f"{site.name} (λ {'≥' if site.num_channels else '='} {site.lam_min:.4g})" for site in far[:4])
        more = f" and {len(far) - 4} more" if len(far) > 4 else ""
        logger.warning(
            "relu_ize: λ-GELU site(s) %s%s are far from ReLU: the smallest λ, %.4g, guarantees only ε = %.3g under the "
            "gate-L1 bound √(2/π)/λ (activation sup %.3g), looser than %g (λ < %.3g), so the ReLU model can behave "
            "quite unlike the λ-GELU one. Anneal λ toward λ* first (KGeluTrainer with kgelu_anneal_start), or, for a "
            "deliberate direct swap, relu_ize the GELU model with include_gelu=True",
            named, more, worst.lam_min, worst.tolerance["gate_l1"], worst.tolerance["act_sup"],
            FAR_FROM_RELU_TOLERANCE, target_lambda(FAR_FROM_RELU_TOLERANCE),
        )
    return far


def _no_site_reason(model: nn.Module, include_gelu: bool) -> str:
    kinds = "λ-GELU (KGELU) or GELU" if include_gelu else "λ-GELU (KGELU)"
    config = getattr(model, "config", None)
    named = [
        prefix + key for prefix, sub in (_configs(config) if isinstance(config, PreTrainedConfig) else ())
        for key in activation_config_keys(sub, (KGELU_NAME,))
    ]
    unreachable = remaining_gelus(model)
    gelus = f"{'; '.join(unreachable[:3])}{'; …' if len(unreachable) > 3 else ''}"
    if named:  # Pop2Piano's feed_forward_proj, Llama 4's vision hidden_act: keys the modeling code never reads
        hint = f"its config names kgelu ({', '.join(named)}) but {type(model).__name__} builds no λ-GELU from it"
        hint += f"; its GELUs are model code that no config key builds ({gelus})" if unreachable else ""
    elif include_gelu and unreachable:
        hint = f"its GELUs ({gelus}) are model code that no config activation key builds, so no swap can reach them"
    elif _swap_targets(model, include_gelu=True):
        hint = "pass include_gelu=True (hf-kgelu relu-ize --include-gelu) to swap its GELUs directly (the paper's baseline)"
    else:
        hint = 'build it with hidden_act="kgelu" (GPT-2: activation_function="kgelu") or convert it with hf_kgelu.convert_to_kgelu'
    return f"{type(model).__name__} has no {kinds} activation site to swap for ReLU: {hint}"


def relu_ize(
    model: nn.Module, *, inplace: bool = False, include_gelu: bool = False, merge_peft: bool = False
) -> tuple[nn.Module, ReluReport]:
    """Replace every λ-GELU site (with `include_gelu`, every GELU-family module too: the paper's
    direct-swap baseline) with `nn.ReLU`; returns (ReLU model, `ReluReport`).

    The config's activation keys that named "kgelu" (and GELU names, with `include_gelu`) become
    "relu" and the `kgelu_*` settings are removed, so `save_pretrained` gives a checkpoint that
    stock transformers loads without this package. θ leaves the state dict with its module.
    Raises ValueError, changing nothing, when the model has no site, is PEFT-wrapped (unless
    `merge_peft`), or holds activations that its config cannot describe. Warns when a λ-GELU site
    is far from ReLU (`warn_far_from_relu`). GELUs that no swap reaches (hard-coded modules, GELU
    functions called in model code) stay: they are listed in `report.remaining_gelu`, with a warning.
    """
    relu_model, report = relu_ize_quietly(model, inplace=inplace, include_gelu=include_gelu, merge_peft=merge_peft)
    warn_far_from_relu(report)
    return relu_model, report


def relu_ize_quietly(model: nn.Module, *, inplace: bool, include_gelu: bool, merge_peft: bool = False):
    """`relu_ize` without the warning (`substitution_report` measures what the swap costs instead)."""
    merged = False
    if _is_peft_wrapper(model):
        if not merge_peft:
            raise ValueError(
                f"{type(model).__name__} is a PEFT-wrapped model: merge the adapters first "
                "(model = model.merge_and_unload()), or call relu_ize(model, merge_peft=True) to do it here"
            )
        if not inplace:
            model = copy_model(model)
        try:
            model = model.merge_and_unload()
        except AttributeError as error:
            raise ValueError(f"this PEFT model cannot be merged into its base model ({error}); relu-ize the base model instead") from error
        merged, inplace = True, True  # already our own copy
    leftover = _peft_modules(model)
    if leftover:
        raise ValueError(
            f"the model still holds PEFT adapter layers ({', '.join(leftover[:5])}"
            f"{', …' if len(leftover) > 5 else ''}): merge them into the base weights first (merge_and_unload)"
        )

    targets = _swap_targets(model, include_gelu)
    if not targets:
        raise ValueError(_no_site_reason(model, include_gelu))
    swapped_names = {name for name, _ in targets}
    names = (KGELU_NAME, *GELU_NAMES) if include_gelu else (KGELU_NAME,)

    config = getattr(model, "config", None)
    if isinstance(config, PreTrainedConfig) and isinstance(model, PreTrainedModel):
        planned = copy.deepcopy(config)
        _rewrite_config(planned, names)
        _check_rebuild(model, swapped_names, planned)

    seen: set[int] = set()
    sites = []
    for name, module in targets:  # λ is read before anything changes
        if id(module) not in seen:
            seen.add(id(module))
            sites.append(_describe(name, module))

    if not inplace:
        model = copy_model(model)
    for name in [name for name, _ in targets]:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, nn.ReLU())
    call_time = call_time_kgelus(model)  # read while the config still names kgelu
    changes, removed = {}, {}
    config = getattr(model, "config", None)
    if isinstance(config, PreTrainedConfig):
        changes, removed = _rewrite_config(config, names)
    _forget_theta_fp32(model, swapped_names)
    remaining = remaining_gelus(model)
    if remaining:
        shown = "; ".join(remaining[:4]) + (f"; … and {len(remaining) - 4} more" if len(remaining) > 4 else "")
        warnings.warn(
            f"the ReLU model still computes GELU where no swap reaches ({shown}): it is not a pure ReLU network "
            "(report.remaining_gelu lists them all)",
            stacklevel=2,
        )
    if call_time:
        warnings.warn(
            f"the model builds λ-GELU afresh at every call at {'; '.join(call_time)}: its λ was never trained nor "
            "annealed, so the swap to ReLU there is not covered by the bound (report.call_time_kgelu)",
            stacklevel=2,
        )
    report = ReluReport(type(model).__name__, sites, changes, removed, include_gelu, merged, remaining, call_time)
    return model, report
