"""The model card of a ReLU model: Hub YAML metadata and a truthful body, rendered from the
template in `model_cards/` (shipped in the wheel as `hf_kgelu.model_cards`). Every variant of
the card — how the model was made, where it loads from, custom code — is a template variable:
nothing edits rendered text afterwards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..hardness import BOUNDS, target_lambda
from ..model_cards import PAPER_URL, template
from ..modeling.config import KGELU_NAME
from ..relu import ReluReport

CARD_TEMPLATE = "relu_model_card.md.jinja"
MADE_BY = ("kgelu", "direct_swap", "conversion")

# Auto classes by preference (a task head before the bare model) and the Hub pipeline tag of each.
_PIPELINE_TAGS = {
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForImageClassification": "image-classification",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForMaskedLM": "fill-mask",
    "AutoModelForSeq2SeqLM": "text2text-generation",
    "AutoModelForCTC": "automatic-speech-recognition",
    "AutoModelForSpeechSeq2Seq": "automatic-speech-recognition",
    "AutoModelForTokenClassification": "token-classification",
    "AutoModelForAudioClassification": "audio-classification",
}
# Labels of the training settings the card shows, in order (keys of `CardDetails.training`).
TRAINING_FIELDS = (
    ("tau", "τ (temperature of λ = 1 + softplus(θ/τ))"),
    ("eta", "η (θ learns at learning_rate × η)"),
    ("init", "hardness init"),
    ("lambda_init", "λ at init"),
    ("lambda_range", "λ range of the init profile"),
    ("per_channel", "one λ per channel"),
    ("anneal_start", "anneal start (fraction of training)"),
    ("tolerance", "tolerance ε"),
    ("bound", "bound (turns ε into λ*)"),
    ("target_lambda", "λ* (annealing target)"),
)
_BOUND_TEXT = {
    "gate_l1": "gate L1: ‖Φ(λ·) − H‖₁ = √(2/π)/λ",
    "act_sup": "activation sup: sup \\|xΦ(λx) − ReLU(x)\\| = 0.169971/λ",  # "\\|": a literal bar in a Markdown table
    "act_l1": "activation L1: ∫ \\|xΦ(λx) − ReLU(x)\\| dx = 1/(2λ²)",
}


@dataclass
class CardDetails:
    """What a card says beyond the swap report.

    made_by: "kgelu" (trained with λ-GELU, then relu_ize), "direct_swap" (a GELU model swapped
        directly) or "conversion" (a pretrained GELU model converted); None reads it from the report.
    made_with: the command or call that made it (conversions); conversion_text: what it did.
    training: settings shown in the card's table (`eta`, `anneal_start`, `tolerance`, `bound`,
        `target_lambda`, `tau`, `init`, …; other keys are listed as they are).
    base_model, datasets, eval_dataset, license: Hub metadata; pipeline_tag: the Hub task (default:
        the Auto class's, none for an architecture outside transformers).
    usage_id: the repo id the loading snippet names when the folder is written here and uploaded
        later (`publish` names the Hub repo it pushes to, else this, else the folder).
    """

    made_by: str | None = None
    made_with: str | None = None
    conversion_text: str | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    datasets: Sequence[str] = ()
    eval_dataset: str | None = None
    license: str | None = None
    pipeline_tag: str | None = None
    usage_id: str | None = None

    def __post_init__(self):
        if self.made_by is not None and self.made_by not in MADE_BY:
            raise ValueError(f"made_by must be one of {', '.join(MADE_BY)} (or None), got {self.made_by!r}")
        if isinstance(self.datasets, str):
            self.datasets = [self.datasets]


def _auto_classes_of(architecture: str) -> list[str]:
    """The Auto classes that build `architecture` (a class name): from transformers' own mappings and
    from classes registered with them (e.g. hf-kgelu's MLP)."""
    from transformers.models.auto import modeling_auto

    found = []
    for name in getattr(modeling_auto, "__all__", dir(modeling_auto)):
        lazy = getattr(getattr(modeling_auto, name, None), "_model_mapping", None)
        mapping = getattr(lazy, "_model_mapping", None)
        if not name.startswith("AutoModel") or not isinstance(mapping, Mapping):
            continue
        names = [n for value in mapping.values() for n in ((value,) if isinstance(value, str) else tuple(value))]
        names += [getattr(cls, "__name__", None) for cls in getattr(lazy, "_extra_content", {}).values()]
        if architecture in names:
            found.append(name)
    return found


def auto_class_name(architectures: Sequence[str]) -> str:
    """The transformers Auto class that builds the first of `architectures` (class names: the model's
    own first, then its config's) that any builds: a task head's Auto class; AutoModel for a bare
    model (not its alias AutoModelForTextEncoding); AutoModel if none fits."""
    for architecture in architectures:
        found = _auto_classes_of(architecture)
        if not found:
            continue
        preferred = [name for name in _PIPELINE_TAGS if name in found]
        heads = [name for name in found if name not in ("AutoModel", "AutoModelForTextEncoding")]
        return (preferred or heads or (["AutoModel"] if "AutoModel" in found else found))[0]
    return "AutoModel"


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _training_values(report: ReluReport, training: Mapping[str, Any]) -> dict[str, Any]:
    """The config's kgelu settings and the sites' τ, overridden by the caller's `training` record;
    λ* is derived from ε and the bound when not given."""
    values: dict[str, Any] = {}
    settings = {key.rpartition(".")[2]: value for key, value in report.kgelu_settings.items()}
    for field_name in ("init", "lambda_init", "lambda_range", "per_channel", "tau"):
        if f"kgelu_{field_name}" in settings:
            values[field_name] = settings[f"kgelu_{field_name}"]
    taus = {site.tau for site in report.sites if site.tau is not None}
    if len(taus) == 1:
        values["tau"] = taus.pop()
    if any(site.num_channels for site in report.sites):
        values["per_channel"] = True
    values.update({key: value for key, value in training.items() if value is not None})
    # (a data-aware run has no single closed-form λ*: its per-site λ are in the site table)
    if "target_lambda" not in values and "tolerance" in values and values.get("bound", "gate_l1") in BOUNDS:
        values["target_lambda"] = target_lambda(float(values["tolerance"]), values.get("bound", "gate_l1"))
    return values


def _training_rows(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    values = dict(values)
    rows = [(label, _number(values.pop(key))) for key, label in TRAINING_FIELDS if key in values]
    rows += [(key, _number(value)) for key, value in sorted(values.items())]  # anything else the caller recorded
    return rows


def _site_rows(report: ReluReport) -> list[dict[str, str]]:
    rows = []
    for site in report.sites:
        rows.append({
            "name": site.name,
            "activation": "λ-GELU" if site.activation == KGELU_NAME else f"{site.activation} (λ = 1)",
            "lam": f"{site.lam:.4g}",
            "spread": f"{site.lam_min:.4g} – {site.lam_max:.4g}" if site.num_channels else "",
            **{bound: f"{site.tolerance[bound]:.3g}" for bound in BOUNDS},
        })
    return rows


def _eval_results(comparison, task_type: str | None, dataset_type: str, dataset_name: str):
    from huggingface_hub import EvalResult

    if comparison is None or task_type is None:
        return None
    common = dict(task_type=task_type, dataset_type=dataset_type, dataset_name=dataset_name, metric_type=comparison.metric)
    return [EvalResult(**common, metric_value=round(value, 6), metric_name=name) for name, value in comparison.card_results()]


def _how_it_loads(report: ReluReport, config, pipeline_tag: str | None) -> tuple[str, str, str | None]:
    """(loading, Auto class, Hub pipeline tag). loading: "stock" (a transformers architecture),
    "remote_code" (save_pretrained writes its code and an auto_map beside the weights: classes
    registered with `register_for_auto_class`, like hf-kgelu's MLP) or "package" (neither). A custom
    model's Auto class says nothing of its inputs: it gets no pipeline tag unless one is given."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    auto_map = getattr(config, "auto_map", None) or {}
    model_type = getattr(config, "model_type", None)
    if auto_map or getattr(type(config), "_auto_class", None) is not None:
        loading = "remote_code"
    else:
        loading = "package" if model_type and model_type not in CONFIG_MAPPING_NAMES else "stock"
    architectures = [report.model_class, *(getattr(config, "architectures", None) or [])]
    auto_class = next((k for k in auto_map if k.startswith("AutoModelFor")), None) or auto_class_name(architectures)
    if pipeline_tag is None and loading == "stock":
        pipeline_tag = _PIPELINE_TAGS.get(auto_class)
        if pipeline_tag is None and auto_class == "AutoModel":
            pipeline_tag = _bare_model_tag(report.model_class)
    return loading, auto_class, pipeline_tag


def _bare_model_tag(model_class: str) -> str | None:
    """The Hub pipeline tag of a bare model (features out): by its main input."""
    import transformers

    main_input = getattr(getattr(transformers, model_class, None), "main_input_name", None)
    return {"input_ids": "feature-extraction", "pixel_values": "image-feature-extraction"}.get(main_input)


def render_model_card(
    report: ReluReport,
    *,
    config=None,
    details: CardDetails | None = None,
    comparison=None,
    usage_id: str = "path/to/this/model",
    model_name: str | None = None,
    plot_file: str | None = None,
) -> str:
    """The README.md of a ReLU model.

    `comparison`: the metric before and after (a `SubstitutionReport` or a
    `hf_kgelu.metrics.Comparison`), shown as a table and as Hub eval results. `usage_id`: what the
    loading snippet passes to `from_pretrained` (the Hub repo id when the model is pushed, its
    folder otherwise). `plot_file`: a file name inside the model folder (λ over training steps).
    """
    from huggingface_hub import ModelCardData

    details = details or CardDetails()
    num_kgelu = sum(site.activation == KGELU_NAME for site in report.sites)
    made_by = details.made_by or ("kgelu" if num_kgelu else "direct_swap")
    loading, auto_class, pipeline_tag = _how_it_loads(report, config, details.pipeline_tag)
    model_name = model_name or usage_id.rstrip("/").rpartition("/")[2]
    dataset_list = list(details.datasets or [])
    eval_dataset = details.eval_dataset or (dataset_list[0] if dataset_list else "evaluation data")
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["relu-ized", "kgelu", "lambda-gelu", "relu"],
        base_model=details.base_model,
        datasets=dataset_list or None,
        license=details.license,
        model_name=model_name,
        eval_results=_eval_results(comparison, pipeline_tag, dataset_list[0] if dataset_list else "custom", eval_dataset),
    )
    training = _training_values(report, details.training) if made_by == "kgelu" else dict(details.training)
    annealed_to = training.get("target_lambda")
    worst = {bound: report.tolerance(bound) for bound in BOUNDS}
    return template(CARD_TEMPLATE).render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        usage_id=usage_id,
        auto_class=auto_class,
        loading=loading,
        model_type=getattr(config, "model_type", ""),
        made_by=made_by,
        made_with=details.made_with or "`hf-kgelu convert`",
        conversion_text=details.conversion_text or "every GELU was swapped for ReLU",
        base_model=details.base_model,
        paper_url=PAPER_URL,
        num_kgelu=num_kgelu,
        num_gelu=len(report.sites) - num_kgelu,
        remaining_gelu=list(getattr(report, "remaining_gelu", None) or []),
        min_lambda=f"{report.min_lambda:.4g}",
        worst=[(_BOUND_TEXT[bound], f"{worst[bound]:.3g}") for bound in BOUNDS],
        training_rows=_training_rows(training),
        annealed_to=_number(float(annealed_to)) if annealed_to is not None and made_by == "kgelu" else None,
        site_rows=_site_rows(report),
        per_channel=any(site.num_channels for site in report.sites),
        plot_file=plot_file,
        comparison=comparison.as_markdown() if comparison is not None else None,
        comparison_metric=comparison.metric[:1].upper() + comparison.metric[1:] if comparison is not None else None,
        eval_dataset=eval_dataset,
        baseline_row=getattr(comparison, "gelu_before", None) is not None,
        config_changes=report.config_changes,
    )


def training_from_history(history: Mapping[str, Any]) -> dict[str, Any]:
    """The card's `training` fields from a run's hardness history (`hardness_history.json`, written
    by `KGeluTrainer`): τ, η, init, anneal start, ε, bound, λ*."""
    settings = history.get("settings") or {}
    names = {"kgelu_tau": "tau", "kgelu_lr_multiplier": "eta", "kgelu_init": "init", "kgelu_lambda_init": "lambda_init",
             "kgelu_lambda_range": "lambda_range", "kgelu_anneal_start": "anneal_start", "kgelu_tolerance": "tolerance",
             "kgelu_bound": "bound"}
    training = {field_name: settings[key] for key, field_name in names.items() if settings.get(key) is not None}
    if settings.get("kgelu_target_lambda") is not None:  # an explicit λ* overrides the tolerance
        training.pop("tolerance", None)
        training.pop("bound", None)
    if "kgelu_anneal_start" in settings and settings["kgelu_anneal_start"] is None:
        training["anneal_start"] = "none (λ learned throughout)"
    target = history.get("target_lambda", settings.get("kgelu_target_lambda"))
    if target is not None:
        training["target_lambda"] = float(target)
    return training
