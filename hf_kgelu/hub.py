"""Publishing a ReLU-ized model: its model card, the complete local folder, and the Hub upload.

- `render_model_card`: the README.md (Hub YAML metadata + how the model was made, the per-layer
  λ before the swap, the before/after metrics, how to load it with stock transformers).
- `save_relu_model`: weights (safetensors), config, tokenizer/image processor, card, plot — written
  to a temporary folder beside the target and renamed into place, so a crash never leaves a
  half-written folder where a good one was.
- `push_relu_model`: `create_repo` + `upload_folder`. A failure keeps the local folder and
  raises `HubPushError` with the exact command to retry; the token never appears in it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .hardness import BOUNDS, target_lambda
from .modules import find_sites
from .registry import KGELU_NAME
from .relu import ReluReport, SubstitutionReport

CARD_TEMPLATE = "relu_model_card.md.jinja"
# Stands for the repo id in the card's loading snippet until `push_relu_model` knows it.
REPO_ID_PLACEHOLDER = "<namespace>/<model-name>"
PAPER_URL = "https://arxiv.org/abs/2603.21991"

# Files of a tokenizer or image/feature processor that travel verbatim from the source checkpoint.
PROCESSOR_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json",
    "image_processor_config.json", "video_preprocessor_config.json",
)

# (Auto class, name of transformers' mapping of model types to class names), most specific first.
_AUTO_CLASSES = (
    ("AutoModelForCausalLM", "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"),
    ("AutoModelForImageClassification", "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForSequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    ("AutoModelForMaskedLM", "MODEL_FOR_MASKED_LM_MAPPING_NAMES"),
)
_PIPELINE_TAGS = {
    "AutoModelForCausalLM": "text-generation",
    "AutoModelForImageClassification": "image-classification",
    "AutoModelForSequenceClassification": "text-classification",
    "AutoModelForMaskedLM": "fill-mask",
}
# Labels of the training settings the card shows, in order (keys of `training=`).
TRAINING_FIELDS = (
    ("tau", "τ (temperature of λ = 1 + softplus(θ/τ))"),
    ("eta", "η (θ learns at learning_rate × η)"),
    ("init", "hardness init"),
    ("lambda_init", "λ at init"),
    ("lambda_range", "λ range of the init profile"),
    ("per_channel", "one λ per channel"),
    ("anneal_start", "anneal start (fraction of training)"),
    ("tolerance", "tolerance ε"),
    ("bound", "bound"),
    ("target_lambda", "λ* (annealing target)"),
)
_BOUND_TEXT = {
    "gate_l1": "gate L1: ‖Φ(λ·) − H‖₁ = √(2/π)/λ",
    "act_sup": "activation sup: sup \\|xΦ(λx) − ReLU(x)\\| = 0.169971/λ",  # "\\|": a literal bar in a Markdown table
    "act_l1": "activation L1: ∫ \\|xΦ(λx) − ReLU(x)\\| dx = 1/(2λ²)",
}


class HubPushError(RuntimeError):
    """The upload failed; the local folder is intact and `retry_command` uploads it again."""

    def __init__(self, message: str, *, folder: Path, repo_id: str, retry_command: str, status_code: int | None):
        super().__init__(message)
        self.folder, self.repo_id, self.retry_command, self.status_code = folder, repo_id, retry_command, status_code


def auto_class_name(architectures: Sequence[str]) -> str:
    """The transformers Auto class that builds one of `architectures` (class names, e.g. a
    config's `architectures`); AutoModel if none fits."""
    from transformers.models.auto import modeling_auto

    for architecture in architectures:
        for auto_name, mapping_name in _AUTO_CLASSES:
            for value in getattr(modeling_auto, mapping_name, {}).values():
                if architecture in ((value,) if isinstance(value, str) else tuple(value)):
                    return auto_name
    return "AutoModel"


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _training_values(report: ReluReport, training: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the card says about the run: the config's kgelu settings and the sites' τ, overridden
    by the caller's `training` record; λ* is derived from ε and the bound when not given."""
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
    values.update({key: value for key, value in (training or {}).items() if value is not None})
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
        spread = f"{site.lam_min:.4g} – {site.lam_max:.4g}" if site.num_channels else ""
        rows.append({
            "name": site.name,
            "activation": "λ-GELU" if site.activation == KGELU_NAME else f"{site.activation} (λ = 1)",
            "lam": f"{site.lam:.4g}",
            "spread": spread,
            **{bound: f"{site.tolerance[bound]:.3g}" for bound in BOUNDS},
        })
    return rows


def _eval_results(substitution: SubstitutionReport | None, task_type: str | None, dataset_type: str, dataset_name: str):
    from huggingface_hub import EvalResult

    if substitution is None or task_type is None:
        return None
    common = dict(task_type=task_type, dataset_type=dataset_type, dataset_name=dataset_name, metric_type=substitution.metric)
    return [
        EvalResult(**common, metric_value=round(substitution.kgelu_after, 6), metric_name=f"{substitution.metric} (ReLU, this model)"),
        EvalResult(**common, metric_value=round(substitution.kgelu_before, 6), metric_name=f"{substitution.metric} (λ-GELU, before the swap)"),
    ]


def render_model_card(
    report: ReluReport,
    *,
    config=None,
    substitution: SubstitutionReport | None = None,
    repo_id: str | None = None,
    model_name: str | None = None,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    eval_dataset: str | None = None,
    training: Mapping[str, Any] | None = None,
    plot_file: str | None = None,
    license: str | None = None,
) -> str:
    """The README.md of a ReLU-ized model: Hub YAML metadata and a truthful body.

    `training` holds what the card cannot read from the model: `eta` (θ learns at learning_rate × η),
    `anneal_start`, `tolerance` (ε), `bound`, `target_lambda` (λ*), and optionally `tau`,
    `init`, ... (any other key is listed as is). `plot_file` is a file name inside the model
    folder (the per-layer λ plot), linked from the card.
    """
    import jinja2
    from huggingface_hub import ModelCardData

    auto_class = auto_class_name([report.model_class, *(getattr(config, "architectures", None) or [])])
    pipeline_tag = _PIPELINE_TAGS.get(auto_class)
    repo_id = repo_id or REPO_ID_PLACEHOLDER
    model_name = model_name or repo_id.rpartition("/")[2]
    dataset_list = [datasets] if isinstance(datasets, str) else list(datasets or [])
    eval_dataset = eval_dataset or (dataset_list[0] if dataset_list else "evaluation data")
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=["relu-ized", "kgelu", "lambda-gelu", "relu"],
        base_model=base_model,
        datasets=dataset_list or None,
        license=license,
        model_name=model_name,
        eval_results=_eval_results(substitution, pipeline_tag, dataset_list[0] if dataset_list else "custom", eval_dataset),
    )
    template = jinja2.Template(
        resources.files("hf_kgelu").joinpath("model_cards", CARD_TEMPLATE).read_text(encoding="utf-8"),
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    worst = {bound: report.tolerance(bound) for bound in BOUNDS}
    training_values = _training_values(report, training)
    annealed_to = training_values.get("target_lambda")
    return template.render(
        card_data=card_data.to_yaml(),
        model_name=model_name,
        repo_id=repo_id,
        auto_class=auto_class,
        base_model=base_model,
        eval_dataset=eval_dataset,
        paper_url=PAPER_URL,
        report=report,
        num_kgelu=sum(site.activation == KGELU_NAME for site in report.sites),
        num_gelu=sum(site.activation != KGELU_NAME for site in report.sites),
        min_lambda=f"{report.min_lambda:.4g}",
        worst=[(_BOUND_TEXT[bound], f"{worst[bound]:.3g}") for bound in BOUNDS],
        training_rows=_training_rows(training_values),
        annealed_to=_number(float(annealed_to)) if annealed_to is not None else None,
        site_rows=_site_rows(report),
        plot_file=plot_file,
        substitution=substitution.as_markdown() if substitution is not None else None,
        metric=substitution.metric if substitution is not None else None,
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


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an existing non-empty folder (or a file) unless `overwrite`; returns the absolute path."""
    output_dir = Path(output_dir).expanduser().absolute()
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a folder: choose another output folder")
    if _is_nonempty_dir(output_dir) and not overwrite:
        raise FileExistsError(
            f"{output_dir} exists and is not empty: pass overwrite=True (--overwrite) to replace it, or choose another folder"
        )
    return output_dir


def _check_folder_is_relu(folder: Path) -> None:
    """The written config must not mention kgelu and no weight may be a θ."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    leftovers = [key for key, value in _walk_json(config) if value == KGELU_NAME or key.startswith("kgelu_")]
    weight_files = sorted(folder.glob("*.safetensors"))
    if not weight_files:
        raise RuntimeError(f"save_pretrained wrote no .safetensors weights into {folder}")
    for path in weight_files:
        with safe_open(str(path), "pt") as handle:
            leftovers += [key for key in handle.keys() if key.endswith(".theta")]
    if leftovers:
        raise RuntimeError(f"the saved ReLU model still refers to λ-GELU: {', '.join(leftovers[:8])}")


def _walk_json(value, key: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_json(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_json(v, key)
    else:
        yield key, value


def _move_into_place(staging: Path, output_dir: Path) -> None:
    """Rename the finished folder over `output_dir`; the old one is only deleted once the new one is in place."""
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    retired = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.old-"))
    os.rename(output_dir, retired / output_dir.name)
    try:
        os.rename(staging, output_dir)
    except BaseException:
        os.rename(retired / output_dir.name, output_dir)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def save_relu_model(
    relu_model,
    output_dir: str | os.PathLike,
    *,
    report: ReluReport,
    substitution: SubstitutionReport | None = None,
    source: str | os.PathLike | None = None,
    processor=None,
    overwrite: bool = False,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    eval_dataset: str | None = None,
    training: Mapping[str, Any] | None = None,
    plot_file: str | os.PathLike | None = None,
    license: str | None = None,
) -> Path:
    """Write the complete ReLU model folder: safetensors weights, config, the tokenizer or image
    processor (`processor`, or the processor files found in the `source` checkpoint folder),
    the per-layer λ plot (`plot_file`, copied in) and README.md (the model card).

    An existing non-empty `output_dir` is replaced only with `overwrite=True`, and only once the
    new folder is complete. Returns the folder's path.
    """
    output_dir = check_output_dir(output_dir, overwrite)
    if find_sites(relu_model):
        raise ValueError("the model still has λ-GELU sites: call hf_kgelu.relu_ize(model) first and save the model it returns")
    if source is not None and Path(source).expanduser().absolute() == output_dir:
        raise ValueError(f"the output folder {output_dir} is the source checkpoint: write the ReLU model somewhere else")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.tmp-"))
    try:
        relu_model.save_pretrained(staging)
        if processor is not None:
            processor.save_pretrained(staging)
        elif source is not None and Path(source).is_dir():
            for name in PROCESSOR_FILES:
                if (Path(source) / name).is_file():
                    shutil.copy2(Path(source) / name, staging / name)
        plot_name = None
        if plot_file is not None:
            plot_name = Path(plot_file).name
            shutil.copy2(plot_file, staging / plot_name)
        card = render_model_card(
            report, config=getattr(relu_model, "config", None), substitution=substitution, repo_id=repo_id,
            model_name=(repo_id or output_dir.name).rpartition("/")[2], base_model=base_model, datasets=datasets,
            eval_dataset=eval_dataset, training=training, plot_file=plot_name, license=license,
        )
        (staging / "README.md").write_text(card, encoding="utf-8")
        _check_folder_is_relu(staging)
        _move_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output_dir


def retry_command(folder: str | os.PathLike, repo_id: str, *, private: bool = False, endpoint: str | None = None) -> str:
    """The shell command that uploads `folder` again (credentials from `hf auth login` or HF_TOKEN)."""
    prefix = f"HF_ENDPOINT={shlex.quote(endpoint)} " if endpoint else ""
    private_flag = " --private" if private else ""
    return f"{prefix}hf upload {shlex.quote(repo_id)} {shlex.quote(str(folder))} . --repo-type model{private_flag}"


def _scrub(text: str, secrets: Sequence[str | None]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _failure_message(error: Exception, status: int | None, repo_id: str, endpoint: str) -> str:
    name = type(error).__name__
    if name == "OfflineModeIsEnabled":
        return "offline mode is enabled (HF_HUB_OFFLINE=1): unset it to upload"
    if status in (401, 403):
        return (f"the Hub refused the credentials (HTTP {status}): the token is missing, invalid, or cannot write to "
                f"{repo_id!r}. Log in with `hf auth login` or set HF_TOKEN to a token with write access")
    if status is not None and status >= 500:
        return f"the Hub had a server error (HTTP {status}); nothing is wrong with the model, try again later"
    if status is not None:
        return f"the Hub rejected the upload (HTTP {status})"
    if "Connect" in name or "Timeout" in name or "Network" in name:
        return f"could not reach {endpoint} (no network?)"
    return "the upload failed"


def _linked_copy(folder: Path, card: str) -> Path:
    """`folder` with another README.md, without copying the weights: hard links where the file
    system allows them, copies elsewhere. Lives in a temporary folder beside `folder`."""
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.push-")) / folder.name
    try:
        shutil.copytree(folder, staging, copy_function=os.link)
    except (OSError, shutil.Error):
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(folder, staging)
    (staging / "README.md").unlink()  # a hard link: writing into it would change the original
    (staging / "README.md").write_text(card, encoding="utf-8")
    return staging


def push_relu_model(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload ReLU-ized model (hf-kgelu)",
) -> str:
    """Create `repo_id` (if needed) and upload the folder written by `save_relu_model`; returns the repo URL.

    `token` defaults to huggingface_hub's own lookup (HF_TOKEN, then `hf auth login`); `endpoint`
    to HF_ENDPOINT. Any failure raises `HubPushError`, which keeps the folder and gives the
    retry command; the token is never part of it.
    """
    from huggingface_hub import HfApi

    folder = Path(folder).expanduser().absolute()
    missing = [name for name in ("config.json", "README.md") if not (folder / name).is_file()]
    if not folder.is_dir() or missing or not list(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} is not a complete ReLU model folder (missing {', '.join(missing) or 'weights'}): write it with save_relu_model first")
    card = (folder / "README.md").read_text(encoding="utf-8")
    pushed_card = card.replace(REPO_ID_PLACEHOLDER, repo_id)  # now the card's loading snippet can name the repo
    api = HfApi(endpoint=endpoint, token=token)
    upload_from = folder if pushed_card == card else _linked_copy(folder, pushed_card)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=upload_from, repo_id=repo_id, repo_type="model", commit_message=commit_message)
    except Exception as error:
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        command = retry_command(folder, repo_id, private=private, endpoint=endpoint)
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        message = (
            f"pushing {folder} to {repo_id!r} failed: {_failure_message(error, status, repo_id, api.endpoint)}.\n"
            f"The local folder is complete and untouched: {folder}\n"
            f"Retry with:\n  {command}\n"
            f"or from Python: hf_kgelu.push_relu_model({str(folder)!r}, {repo_id!r})\n"
            f"(cause: {type(error).__name__}: {detail})"
        )
        raise HubPushError(
            _scrub(message, [token, os.environ.get("HF_TOKEN")]), folder=folder, repo_id=repo_id,
            retry_command=command, status_code=status,
        ) from None
    finally:
        if upload_from != folder:
            shutil.rmtree(upload_from.parent, ignore_errors=True)
    if pushed_card != card:  # keep the local card equal to the pushed one
        staged = folder / ".README.md.tmp"
        staged.write_text(pushed_card, encoding="utf-8")
        os.replace(staged, folder / "README.md")
    return f"{api.endpoint.rstrip('/')}/{repo_id}"


@dataclass
class ReluizedCheckpoint:
    """What `relu_ize_checkpoint` produced: the folder, the swap report, the metrics, the Hub URL."""

    folder: Path
    report: ReluReport
    substitution: SubstitutionReport | None = None
    url: str | None = None


def load_checkpoint(checkpoint: str | os.PathLike):
    """A model from a checkpoint through the Auto class that fits its config's `architectures`
    ("kgelu" is registered because this package is imported)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(checkpoint)
    auto_class = getattr(transformers, auto_class_name(getattr(config, "architectures", None) or []))
    return auto_class.from_pretrained(checkpoint, config=config).eval()


def _load_tokenizer(checkpoint):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _load_processor(checkpoint):
    """The tokenizer or image processor of a checkpoint that is not a local folder (a Hub id)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(checkpoint)
    except (OSError, ValueError, KeyError, TypeError):
        return _load_tokenizer(checkpoint)


def _find_in_run(checkpoint: Path, match) -> Path | None:
    """A file of the checkpoint folder, or of its run folder (the parent of `checkpoint-N`)."""
    for folder in (checkpoint, checkpoint.parent):
        found = sorted(p for p in folder.glob("*") if p.is_file() and match(p.name)) if folder.is_dir() else []
        if found:
            return found[0]
    return None


def relu_ize_checkpoint(
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    include_gelu: bool = False,
    eval_data: str | os.PathLike | None = None,
    eval_split: str | None = None,
    task: str | None = None,
    block_size: int = 128,
    max_eval_blocks: int | None = None,
    batch_size: int = 32,
    gelu_baseline: str | os.PathLike | None = None,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str | None = None,
    plot_file: str | os.PathLike | None = None,
    push_to_hub: str | None = None,
    private: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
    log=lambda message: None,
) -> ReluizedCheckpoint:
    """From a λ-GELU checkpoint to a published ReLU model in one call (what `hf-kgelu relu-ize` runs):
    load with the Auto classes, `relu_ize`, evaluate before/after on `eval_data`
    (`metrics.load_eval_data`), write the folder with `save_relu_model` (the card reads the run's
    `hardness_history.json` and a λ plot beside the checkpoint when present), then push it with
    `push_relu_model` when `push_to_hub` names a repo. The folder is complete before any upload.
    """
    from .metrics import load_eval_data
    from .relu import relu_ize, substitution_report

    output_dir = check_output_dir(output_dir, overwrite)  # fail before the slow part
    source = Path(checkpoint)
    model = load_checkpoint(checkpoint)
    relu_model, report = relu_ize(model, include_gelu=include_gelu)
    log(f"swapped {len(report.sites)} site(s) for ReLU; smallest λ {report.min_lambda:.4g}, "
        f"ε gate L1 ≤ {report.tolerance('gate_l1'):.3g}, act sup ≤ {report.tolerance('act_sup'):.3g}")
    substitution = None
    if eval_data is not None:
        positions = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
        data = load_eval_data(eval_data, split=eval_split, tokenizer=_load_tokenizer(checkpoint),
                              block_size=min(block_size, positions or block_size), max_blocks=max_eval_blocks)
        baseline = load_checkpoint(gelu_baseline) if gelu_baseline is not None else None
        substitution = substitution_report(model, data, gelu_baseline=baseline, task=task, batch_size=batch_size,
                                           include_gelu=include_gelu)
        log(substitution.as_markdown())
    history_file = _find_in_run(source, lambda name: name == "hardness_history.json")
    training = training_from_history(json.loads(history_file.read_text(encoding="utf-8"))) if history_file else None
    if plot_file is None:
        plot_file = _find_in_run(source, lambda name: name.endswith(".png") and ("lambda" in name or "hardness" in name))
    folder = save_relu_model(
        relu_model, output_dir, report=report, substitution=substitution,
        source=source if source.is_dir() else None, processor=None if source.is_dir() else _load_processor(checkpoint),
        overwrite=overwrite, repo_id=push_to_hub, base_model=base_model, datasets=datasets,
        eval_dataset=Path(eval_data).name if eval_data is not None else None, training=training,
        plot_file=plot_file, license=license,
    )
    result = ReluizedCheckpoint(folder, report, substitution)
    if push_to_hub:
        result.url = push_relu_model(folder, push_to_hub, private=private, token=token, endpoint=endpoint)
    return result
