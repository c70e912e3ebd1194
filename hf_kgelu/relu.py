"""`relu_ize`: swap every λ-GELU site (and, on request, every GELU) for `nn.ReLU`, rewrite the
config so that stock transformers rebuilds exactly that network, and report what was swapped.
`substitution_report`: the eval metric before and after the swap (the paper's Table II row).

Why a rebuild check: the saved artefact is a config plus weights. If the model holds
activations that one config key cannot describe (mixed activations, a site no key controls),
`from_pretrained` would silently build a different network. `relu_ize` builds the class from
the rewritten config on the meta device (no memory, no weights) and compares the module class
at every module name with the swapped model; any difference is refused before anything is
changed.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .hardness import BOUNDS, tolerance_at
from .metrics import evaluate_model, infer_task, load_metric
from .modeling.config import GELU_NAMES, KGELU_NAME, RELU_NAME, activation_config_keys
from .modeling.convert import gelu_module_classes
from .modeling.module import KGELU

KGELU_CONFIG_PREFIX = "kgelu_"


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
    before), and the kgelu settings it removed from the config (for the model card)."""

    model_class: str
    sites: list[SwappedSite]
    config_changes: dict[str, str] = field(default_factory=dict)
    kgelu_settings: dict[str, Any] = field(default_factory=dict)
    include_gelu: bool = False
    merged_peft: bool = False

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


def _swap_targets(model: nn.Module, include_gelu: bool) -> list[tuple[str, nn.Module]]:
    """Every (name, module) to replace, in depth order; a module reachable under two names appears twice."""
    kinds = (KGELU, *gelu_module_classes()) if include_gelu else (KGELU,)
    targets = [(name, module) for name, module in model.named_modules(remove_duplicate=False) if isinstance(module, kinds)]
    if any(name == "" for name, _ in targets):
        raise ValueError("the model itself is an activation module: there is nothing to relu-ize around it")
    return targets


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
            setattr(sub, key, RELU_NAME)
        for key in [k for k in vars(sub) if k.startswith(KGELU_CONFIG_PREFIX)]:
            removed[prefix + key] = getattr(sub, key)
            delattr(sub, key)
    return changes, removed


def _check_rebuild(model: PreTrainedModel, swapped_names: set[str], config: PreTrainedConfig) -> None:
    """Refuse unless `type(model)(config)` has, at every module name, the class the swap leaves there."""
    try:
        with torch.device("meta"):
            rebuilt = type(model)(config)
    except Exception as error:
        raise ValueError(
            f"cannot check that the rewritten config rebuilds the ReLU network: building {type(model).__name__} "
            f"from it failed ({type(error).__name__}: {error}). Refusing to produce a config that may not load."
        ) from error
    expected = {n: (nn.ReLU if n in swapped_names else type(m)) for n, m in model.named_modules(remove_duplicate=False)}
    built = {n: type(m) for n, m in rebuilt.named_modules(remove_duplicate=False)}
    differing = sorted(n for n in expected.keys() | built.keys() if expected.get(n) is not built.get(n))
    if not differing:
        return
    shown = [
        f"{name or '<model>'}: the ReLU model has {getattr(expected.get(name), '__name__', 'nothing')}, "
        f"the rewritten config builds {getattr(built.get(name), '__name__', 'nothing')}"
        for name in differing[:12]
    ]
    more = f"\n  … and {len(differing) - 12} more" if len(differing) > 12 else ""
    raise ValueError(
        "refusing to relu-ize: the config cannot describe the network the swap would produce, so "
        "from_pretrained would build a different model. Sites that differ:\n  " + "\n  ".join(shown) + more + "\n"
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


def relu_ize(
    model: nn.Module, *, inplace: bool = False, include_gelu: bool = False, merge_peft: bool = False
) -> tuple[nn.Module, ReluReport]:
    """Replace every λ-GELU site (with `include_gelu`, every GELU-family module too: the paper's
    direct-swap baseline) with `nn.ReLU`; returns (ReLU model, `ReluReport`).

    The config's activation keys that named "kgelu" (and GELU names, with `include_gelu`) become
    "relu" and the `kgelu_*` settings are removed, so `save_pretrained` gives a checkpoint that
    stock transformers loads without this package. θ leaves the state dict with its module.
    Raises ValueError, changing nothing, when the model has no site, is PEFT-wrapped (unless
    `merge_peft`), or holds activations that its config cannot describe.
    """
    merged = False
    if _is_peft_wrapper(model):
        if not merge_peft:
            raise ValueError(
                f"{type(model).__name__} is a PEFT-wrapped model: merge the adapters first "
                "(model = model.merge_and_unload()), or call relu_ize(model, merge_peft=True) to do it here"
            )
        if not inplace:
            model = copy.deepcopy(model)
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
        hint = (
            "pass include_gelu=True to swap its GELUs directly (the paper's baseline)"
            if _swap_targets(model, include_gelu=True)
            else 'build it with hidden_act="kgelu" (GPT-2: activation_function="kgelu") or convert it with hf_kgelu.convert_to_kgelu'
        )
        kinds = "λ-GELU (KGELU) or GELU" if include_gelu else "λ-GELU (KGELU)"
        raise ValueError(f"{type(model).__name__} has no {kinds} activation site to swap for ReLU: {hint}")
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
        model = copy.deepcopy(model)
    for name in [name for name, _ in targets]:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child_name, nn.ReLU())
    changes, removed = {}, {}
    config = getattr(model, "config", None)
    if isinstance(config, PreTrainedConfig):
        changes, removed = _rewrite_config(config, names)
    _forget_theta_fp32(model, swapped_names)
    report = ReluReport(type(model).__name__, sites, changes, removed, include_gelu, merged)
    return model, report


@dataclass
class SubstitutionReport:
    """The eval metric before and after the ReLU swap on the same data: λ-GELU model, and the
    GELU baseline's direct swap when one was given (the paper's Table II row)."""

    task: str
    metric: str
    higher_is_better: bool
    kgelu_before: float
    kgelu_after: float
    gelu_before: float | None = None
    gelu_after: float | None = None
    details: dict[str, dict[str, float]] = field(default_factory=dict)
    relu_report: ReluReport | None = None

    @property
    def kgelu_change(self) -> float:
        return self.kgelu_after - self.kgelu_before

    @property
    def gelu_change(self) -> float | None:
        return None if self.gelu_before is None else self.gelu_after - self.gelu_before

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["kgelu_change"], out["gelu_change"] = self.kgelu_change, self.gelu_change
        return out

    @property
    def swapped(self) -> str:
        """What the swap replaced: "λ-GELU", or "GELU" for a direct swap of a GELU model."""
        sites = self.relu_report.sites if self.relu_report is not None else []
        return "λ-GELU" if any(site.activation == KGELU_NAME for site in sites) or not sites else "GELU"

    def card_results(self) -> list[tuple[str, float]]:
        """(name, value) pairs for the model card's Hub eval results."""
        return [(f"{self.metric} (ReLU, this model)", self.kgelu_after),
                (f"{self.metric} ({self.swapped}, before the swap)", self.kgelu_before)]

    def as_markdown(self) -> str:
        """A Markdown table: one row per model, the metric before and after the ReLU swap."""
        rows = [(f"{self.swapped} → ReLU", self.kgelu_before, self.kgelu_after, self.kgelu_change)]
        if self.gelu_before is not None:
            rows.append(("GELU → ReLU (direct swap)", self.gelu_before, self.gelu_after, self.gelu_change))
        lines = [f"| model | {self.metric} before | {self.metric} after | change |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {before:.4f} | {after:.4f} | {change:+.4f} |" for name, before, after, change in rows]
        return "\n".join(lines)


def substitution_report(
    model: nn.Module,
    eval_data,
    *,
    gelu_baseline: nn.Module | None = None,
    task: str | None = None,
    batch_size: int = 32,
    include_gelu: bool = False,
    metric=None,
) -> SubstitutionReport:
    """Evaluate `model` (λ-GELU) before and after `relu_ize` (with `include_gelu` passed on), and
    `gelu_baseline` before and after its direct GELU → ReLU swap, on the same data. Works on
    copies: the passed models are never changed (not even their train/eval mode).

    `metric`: None for the task's exact built-in accuracy / perplexity, or a name ("accuracy",
    "perplexity", an `evaluate` metric), a path to a local metric script or folder, an `evaluate`
    module or a `hf_kgelu.metrics.Metric` (see `hf_kgelu.metrics.load_metric`, offline first)."""
    task = task or infer_task(model)
    chosen = load_metric(metric, task)
    metric, higher_is_better = chosen.name, chosen.higher_is_better

    def measure(candidate: nn.Module) -> dict[str, float]:
        return evaluate_model(candidate, eval_data, task, batch_size, metric=chosen)

    details = {"kgelu_before": measure(copy.deepcopy(model))}
    relu_model, relu_report = relu_ize(model, inplace=False, include_gelu=include_gelu)
    details["kgelu_after"] = measure(relu_model)
    del relu_model
    if gelu_baseline is not None:
        details["gelu_before"] = measure(copy.deepcopy(gelu_baseline))
        gelu_relu, _ = relu_ize(gelu_baseline, inplace=False, include_gelu=True)
        details["gelu_after"] = measure(gelu_relu)
        del gelu_relu
    value = {key: result[metric] for key, result in details.items()}
    return SubstitutionReport(
        task=task,
        metric=metric,
        higher_is_better=higher_is_better,
        kgelu_before=value["kgelu_before"],
        kgelu_after=value["kgelu_after"],
        gelu_before=value.get("gelu_before"),
        gelu_after=value.get("gelu_after"),
        details=details,
        relu_report=relu_report,
    )
