"""The end every flow shares: a ReLU model, its swap report and its numbers become a complete
model folder with its card (written atomically), then, if asked, a Hub repo."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..modeling.config import KGELU_NAME
from ..modeling.sites import find_sites
from ..publishing.card import CardDetails, render_model_card
from ..publishing.folder import check_output_dir, write_model_folder
from ..publishing.push import push_folder
from ..relu import ReluReport
from .source import Checkpoint

_NAMES_KGELU = re.compile(rf"(^|-){KGELU_NAME}$")  # "kgelu", T5's "gated-kgelu"


@dataclass
class HubTarget:
    """Where to push: the repo id, whether to create it private, and the credentials (None:
    huggingface_hub's own lookup, HF_TOKEN then `hf auth login`). Never printed or saved."""

    repo_id: str
    private: bool = False
    token: str | None = None
    endpoint: str | None = None

    def __post_init__(self):
        if not isinstance(self.repo_id, str) or self.repo_id.count("/") != 1 or not all(self.repo_id.split("/")):
            raise ValueError(f"the Hub repo must be NAMESPACE/NAME, got {self.repo_id!r}")

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"HubTarget(repo_id={self.repo_id!r}, private={self.private}, endpoint={self.endpoint!r})"


@dataclass
class Published:
    """What a flow produced: the ReLU model, the swap report, the numbers, the folder, the Hub URL."""

    model: nn.Module
    report: ReluReport
    comparison: object | None
    folder: Path
    url: str | None = None


def _walk_json(value, key: str = ""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_json(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk_json(v, key)
    else:
        yield key, value


def check_folder_is_relu(folder: Path) -> None:
    """The written config must not mention kgelu and no weight may be a θ."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    leftovers = [key for key, value in _walk_json(config)
                 if (isinstance(value, str) and _NAMES_KGELU.search(value)) or key.startswith("kgelu_")]
    weight_files = sorted(folder.glob("*.safetensors"))
    if not weight_files:
        raise RuntimeError(f"save_pretrained wrote no .safetensors weights into {folder}")
    for path in weight_files:
        with safe_open(str(path), "pt") as handle:
            leftovers += [key for key in handle.keys() if key.endswith(".theta")]
    if leftovers:
        raise RuntimeError(f"the saved ReLU model still refers to λ-GELU: {', '.join(leftovers[:8])}")


def publish(
    relu_model: nn.Module,
    report: ReluReport,
    output_dir: str | os.PathLike,
    *,
    comparison=None,
    details: CardDetails | None = None,
    source: Checkpoint | None = None,
    processor=None,
    plot_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    hub: HubTarget | None = None,
) -> Published:
    """Write `relu_model` as a stock-transformers folder — weights, config, the processor (given, or
    the source checkpoint's), every file a client reads from the `source` folder, the λ plot and the
    model card — then push it to `hub`. The card's loading snippet names the Hub repo when pushing,
    else `details.usage_id` (a repo the folder will be uploaded to), else the folder. A failed push
    raises `HubPushError` and leaves the folder complete."""
    if find_sites(relu_model):
        raise ValueError("the model still has λ-GELU sites: call hf_kgelu.relu_ize(model) first and publish the model it returns")
    output_dir = check_output_dir(output_dir, overwrite)
    plot_name = Path(plot_file).name if plot_file is not None else None
    usage_id = hub.repo_id if hub is not None else getattr(details, "usage_id", None) or str(output_dir)
    card = render_model_card(
        report, config=getattr(relu_model, "config", None), details=details, comparison=comparison,
        usage_id=usage_id, plot_file=plot_name,
    )
    if processor is None and source is not None:
        processor = source.processor
    folder = write_model_folder(
        relu_model, output_dir, card=card, processor=processor, source=source.folder if source is not None else None,
        extra_files=[plot_file] if plot_file is not None else [], overwrite=overwrite, check=check_folder_is_relu,
    )
    url = None
    if hub is not None:
        url = push_folder(folder, hub.repo_id, private=hub.private, token=hub.token, endpoint=hub.endpoint)
    return Published(relu_model, report, comparison, folder, url)
