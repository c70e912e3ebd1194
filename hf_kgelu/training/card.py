"""The README.md that `KGeluTrainer` writes beside a saved λ-GELU model: transformers alone cannot
load it (`KeyError: 'kgelu'`), so the folder says what to install and import, and how to get a
stock-transformers ReLU model from it. Rendered from `model_cards/` templates."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from ..model_cards import PAPER_URL, template
from ..modeling.sites import find_sites, site_lambda

CARD_TAGS = ("kgelu", "lambda-gelu")
LOADING_TEMPLATE = "kgelu_loading.md.jinja"
CARD_TEMPLATE = "kgelu_checkpoint_card.md.jinja"
LOADING_MARK = "import hf_kgelu"


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT


def loading_section(model: nn.Module, usage_id: str) -> str | None:
    """How to load `model` once saved at `usage_id`; None when it has no λ-GELU site."""
    sites = find_sites(model)
    if not sites:
        return None
    lam = [value for _, site in sites for value in site_lambda(site).tolist()]
    low, high = min(lam), max(lam)
    return template(LOADING_TEMPLATE).render(
        num_sites=len(sites), model_class=type(_base_model(model)).__name__, usage_id=usage_id,
        lambda_text=f"λ = {low:.4g}" if high == low else f"λ from {low:.4g} to {high:.4g}",
    )


def write_checkpoint_card(model: nn.Module, folder: str | os.PathLike) -> Path | None:
    """Write README.md into `folder` (a saved λ-GELU model) unless one is there; returns its path if written."""
    from huggingface_hub import ModelCardData

    path = Path(folder) / "README.md"
    loading = loading_section(model, str(folder))
    if loading is None or path.exists() or not path.parent.is_dir():
        return None
    card_data = ModelCardData(library_name="transformers", tags=list(CARD_TAGS))
    path.write_text(template(CARD_TEMPLATE).render(card_data=card_data.to_yaml(), model_name=Path(folder).name,
                                                   paper_url=PAPER_URL, loading=loading), encoding="utf-8")
    return path


def add_loading_section(model: nn.Module, card_path: str | os.PathLike, usage_id: str) -> None:
    """Append the loading section to a card that transformers wrote (Trainer.create_model_card) unless it has one."""
    path = Path(card_path)
    loading = loading_section(model, usage_id)
    if loading is None or not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if LOADING_MARK not in text:
        path.write_text(text.rstrip("\n") + "\n\n" + loading, encoding="utf-8")
