#!/usr/bin/env python
"""Reproduce the paper's experiments on the offline data here and write `docs/results.md`.

Settings (the paper's model–data pairs that exist offline):
    mlp-adult      the 4×256 MLP on UCI Adult
    mlp-fashion    the 4×256 MLP on FashionMNIST (flattened)
    deit-digits    a small DeiT on sklearn digits (CPU preset) / deit-fashion: DeiT-tiny on FashionMNIST (GPU preset)
    gpt2-pydocs    a reduced GPT-2 on the Python 3.11 documentation (reST sources)
Variants per setting, each over several seeds:
    gelu, relu                         the fixed activations
    kgelu-{uniform,increasing,decreasing}   λ learned throughout from three init profiles (Table I, Fig. 3)
    kgelu-annealed                     λ learned, then annealed to λ* (Table II, with the GELU direct swap)
and the τ × η grid of §IV-A on mlp-fashion (drift D and ΔBVS against GELU).

    python scripts/reproduce.py --preset cpu --update-docs              # this 2-core machine, ~20 min
    python scripts/reproduce.py --export-data outputs/repro-data --preset gpu   # tensors for a machine without the data
    python scripts/reproduce.py --preset gpu --data-dir outputs/repro-data --settings mlp-adult,mlp-fashion

Every run's results.json is kept under --out; a rerun skips finished runs, so a preset can be
split over several calls (`--settings`, `--max-minutes`). The experiment loop needs neither
`datasets` nor the Debian data packages when `--data-dir` holds the exported tensors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import hf_kgelu  # noqa: F401  (registers "kgelu" and the MLP)
from hf_kgelu.checkpoint import TrainResult, train_and_relu_ize
from hf_kgelu.checkpoint.report import fmt, markdown_table, mean_std, profile_rho
from hf_kgelu.modeling import with_activation
from hf_kgelu.presets import deit_config, gpt2_config, mlp_config

ROOT = Path(__file__).resolve().parents[1]
INIT_MODES = ("uniform", "increasing", "decreasing")
VARIANTS = ("gelu", "relu", "kgelu-uniform", "kgelu-increasing", "kgelu-decreasing", "kgelu-annealed")
VARIANT_LABELS = {
    "gelu": "GELU", "relu": "ReLU", "kgelu-uniform": "λ-GELU, uniform init", "kgelu-increasing": "λ-GELU, increasing init",
    "kgelu-decreasing": "λ-GELU, decreasing init", "kgelu-annealed": "λ-GELU, annealed (uniform init)",
}
DEFAULT_TAU, DEFAULT_ETA = 0.1, 10.0


# ----------------------------------------------------------------------------------------------
# Data as plain tensors (no `datasets` needed in the experiment loop)


class TensorRows(torch.utils.data.Dataset):
    """Rows of equally long tensors: `ds[i]` is one example dict, `ds[a:b]` a dict of column slices."""

    def __init__(self, **columns: torch.Tensor):
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: { {k: len(v) for k, v in columns.items()} }")
        self.columns = columns
        self.length = lengths.pop()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        return {key: value[index] for key, value in self.columns.items()}


def _arrays_from_library(source: str, sizes: dict) -> dict[str, np.ndarray]:
    """Numpy arrays of one data source, read through hf_kgelu.data (needs `datasets` and the data packages)."""
    from hf_kgelu import data

    def columns(split, keys=("pixel_values", "labels")):
        return {k: np.asarray(split.with_format("numpy")[k]) for k in keys}

    if source == "adult":
        splits = data.adult_splits()
        train, test = columns(splits["train"]), columns(splits["validation"])
    elif source == "fashion":
        splits = data.fashion_mnist_splits(limit=max(sizes.get("train", 0), sizes.get("eval", 0)) or None)
        # keep bytes: 4× smaller to carry; exact (the library's scaling is x/127.5 − 1)
        raw = {name: np.rint((columns(splits[name])["pixel_values"] + 1.0) * 127.5).astype(np.uint8) for name in ("train", "validation")}
        train = {"pixel_values": raw["train"], "labels": columns(splits["train"])["labels"]}
        test = {"pixel_values": raw["validation"], "labels": columns(splits["validation"])["labels"]}
    elif source == "digits":
        splits = data.digits_splits(seed=0)
        train, test = columns(splits["train"]), columns(splits["validation"])
    elif source == "pydocs":
        tokenizer = data.gpt2_tokenizer()
        text = data.python_docs_text(max_chars=sizes["chars"])
        blocks = data.causal_lm_blocks(text, tokenizer, sizes["block"], eval_fraction=0.1, max_tokens=sizes.get("tokens"))
        train_ids = np.asarray(blocks["train"].with_format("numpy")["input_ids"]).astype(np.int64)
        test_ids = np.asarray(blocks["validation"].with_format("numpy")["input_ids"]).astype(np.int64)
        if sizes.get("vocab"):
            train_ids, test_ids = _compact_vocabulary(train_ids, test_ids, sizes["vocab"])
        train, test = {"input_ids": train_ids.astype(np.uint16)}, {"input_ids": test_ids.astype(np.uint16)}
    else:
        raise ValueError(source)
    return {**{f"train.{k}": v for k, v in train.items()}, **{f"eval.{k}": v for k, v in test.items()}}


def _compact_vocabulary(train_ids: np.ndarray, test_ids: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber GPT-2 BPE ids by frequency in the training text, keeping the `size − 1` most
    frequent; every other id becomes `size − 1` (unknown). A 50 257-way softmax dominates a
    small model's cost on a CPU; this keeps the text and the tokenisation, with a smaller head."""
    counts = np.bincount(train_ids.ravel(), minlength=int(max(train_ids.max(), test_ids.max())) + 1)
    keep = np.argsort(-counts, kind="stable")[: size - 1]
    mapping = np.full(len(counts), size - 1, dtype=np.int64)
    mapping[keep] = np.arange(len(keep))
    return mapping[train_ids], mapping[test_ids]


def _to_rows(arrays: dict[str, np.ndarray], source: str, split: str, limit: int | None) -> TensorRows:
    cols = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.startswith(split + ".")}
    cols = {k: v[:limit] if limit else v for k, v in cols.items()}
    if source == "pydocs":
        ids = torch.from_numpy(cols["input_ids"].astype(np.int64))
        return TensorRows(input_ids=ids, labels=ids.clone())
    pixels = cols["pixel_values"]
    if pixels.dtype == np.uint8:
        pixels = pixels.astype(np.float32) / 127.5 - 1.0
    return TensorRows(pixel_values=torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)),
                      labels=torch.from_numpy(cols["labels"].astype(np.int64)))


# ----------------------------------------------------------------------------------------------
# Settings and presets


@dataclass
class Setting:
    name: str
    title: str
    source: str  # adult | fashion | digits | pydocs
    task: str
    model: dict  # builder kwargs
    train: dict  # TrainingArguments kwargs
    sizes: dict = field(default_factory=dict)  # train/eval limits, corpus sizes
    flatten: bool = False

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {v:,}" for k, v in self.sizes.items())
        model = ", ".join(f"{k}={v}" for k, v in self.model.items() if k != "kind")
        t = self.train
        return (f"{self.model['kind']}({model}); {sizes}; {t['num_train_epochs']} epochs, batch {t['per_device_train_batch_size']}, "
                f"AdamW lr {t['learning_rate']:g}, weight decay {t.get('weight_decay', 0.0):g}")


def presets(name: str) -> tuple[list[Setting], dict]:
    """The settings of a preset and its τ × η grid."""
    mlp_train = dict(learning_rate=1e-3, weight_decay=0.0, warmup_steps=0.0, per_device_eval_batch_size=512)
    if name == "cpu":
        settings = [
            Setting("mlp-adult", "MLP 4×256 / UCI Adult", "adult", "classification", {"kind": "MLP", "hidden_size": 256, "num_hidden_layers": 4},
                    dict(mlp_train, num_train_epochs=5, per_device_train_batch_size=128), {"train": 8000, "eval": 4000}),
            Setting("mlp-fashion", "MLP 4×256 / FashionMNIST", "fashion", "classification", {"kind": "MLP", "hidden_size": 256, "num_hidden_layers": 4},
                    dict(mlp_train, num_train_epochs=5, per_device_train_batch_size=128), {"train": 10000, "eval": 2000}, flatten=True),
            Setting("deit-digits", "DeiT 4×64 (patch 4) / sklearn digits", "digits", "classification",
                    {"kind": "DeiT", "hidden_size": 64, "num_hidden_layers": 4, "patch_size": 4, "image_size": 8},
                    dict(learning_rate=3e-3, weight_decay=0.05, warmup_steps=0.1, num_train_epochs=10, per_device_train_batch_size=32,
                         per_device_eval_batch_size=256),
                    {"train": 1438, "eval": 359}),
            Setting("gpt2-pydocs", "GPT-2 4×64 (block 64, 4 096-token vocabulary) / Python docs", "pydocs", "causal_lm",
                    {"kind": "GPT-2", "n_layer": 4, "n_embd": 64, "n_head": 4, "n_positions": 64, "vocab_size": 4096},
                    dict(learning_rate=2e-3, weight_decay=0.01, warmup_steps=0.05, num_train_epochs=2, per_device_train_batch_size=16,
                         per_device_eval_batch_size=16),  # 50 257-way logits: small eval batches
                    {"chars": 600_000, "block": 64, "tokens": 150_000, "vocab": 4096, "train": 1200, "eval": 150}),
        ]
        grid = {"setting": "mlp-fashion", "taus": (0.01, 0.1, 1.0), "etas": (1.0, 10.0, 100.0)}
    elif name == "gpu":
        settings = [
            Setting("mlp-adult", "MLP 4×256 / UCI Adult", "adult", "classification", {"kind": "MLP", "hidden_size": 256, "num_hidden_layers": 4},
                    dict(mlp_train, num_train_epochs=20, per_device_train_batch_size=256), {"train": 30162, "eval": 15060}),
            Setting("mlp-fashion", "MLP 4×256 / FashionMNIST", "fashion", "classification", {"kind": "MLP", "hidden_size": 256, "num_hidden_layers": 4},
                    dict(mlp_train, num_train_epochs=20, per_device_train_batch_size=256), {"train": 60000, "eval": 10000}, flatten=True),
            Setting("deit-fashion", "DeiT-tiny 12×192 (patch 4) / FashionMNIST", "fashion", "classification",
                    {"kind": "DeiT", "hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3, "patch_size": 4, "image_size": 28},
                    dict(learning_rate=1e-3, weight_decay=0.05, warmup_steps=0.1, num_train_epochs=6, per_device_train_batch_size=256,
                         per_device_eval_batch_size=512),
                    {"train": 60000, "eval": 10000}),
            Setting("gpt2-pydocs", "GPT-2 6×384 (block 256) / Python docs", "pydocs", "causal_lm",
                    {"kind": "GPT-2", "n_layer": 6, "n_embd": 384, "n_head": 6, "n_positions": 256},
                    dict(learning_rate=1e-3, weight_decay=0.01, warmup_steps=0.05, num_train_epochs=2, per_device_train_batch_size=32,
                         per_device_eval_batch_size=32),
                    {"chars": 8_000_000, "block": 256, "tokens": 2_000_000}),
        ]
        grid = {"setting": "mlp-fashion", "taus": (0.01, 0.03, 0.1, 0.3, 1.0), "etas": (1.0, 3.0, 10.0, 30.0, 100.0)}
    elif name == "smoke":  # the test suite's preset: seconds, not science
        settings = [
            Setting("mlp-adult", "MLP 3×16 / UCI Adult (smoke)", "adult", "classification", {"kind": "MLP", "hidden_size": 16, "num_hidden_layers": 3},
                    dict(mlp_train, learning_rate=3e-3, num_train_epochs=2, per_device_train_batch_size=64), {"train": 256, "eval": 128}),
        ]
        grid = {"setting": "mlp-adult", "taus": (0.1, 1.0), "etas": (10.0, 100.0)}
    else:
        raise ValueError(f"unknown preset {name!r}: cpu, gpu or smoke")
    return settings, grid


def build_model(setting: Setting, activation: str, num_features: int | None):
    from transformers import DeiTForImageClassification, GPT2LMHeadModel

    from hf_kgelu.modeling.mlp import MLPForSequenceClassification

    m = dict(setting.model)
    kind = m.pop("kind")
    if kind == "MLP":
        num_labels = 2 if setting.source == "adult" else 10
        return MLPForSequenceClassification(with_activation(mlp_config(num_features, num_labels, **m), activation))
    if kind == "DeiT":
        return DeiTForImageClassification(with_activation(deit_config(**m), activation))
    return GPT2LMHeadModel(with_activation(gpt2_config(**m), activation))


# ----------------------------------------------------------------------------------------------
# Runs


@dataclass(frozen=True)
class Run:
    setting: str
    variant: str  # one of VARIANTS, or grid-tau{τ}-eta{η}
    seed: int
    tau: float = DEFAULT_TAU
    eta: float = DEFAULT_ETA

    @property
    def activation(self) -> str:
        return "kgelu" if self.variant.startswith(("kgelu", "grid")) else self.variant

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.setting / self.variant / f"seed{self.seed}"


def planned_runs(settings: list[Setting], grid: dict, seeds: list[int], with_grid: bool) -> list[Run]:
    runs = [Run(s.name, v, seed) for s in settings for v in VARIANTS for seed in seeds]
    if with_grid and any(s.name == grid["setting"] for s in settings):
        for tau in grid["taus"]:
            for eta in grid["etas"]:
                if (tau, eta) != (DEFAULT_TAU, DEFAULT_ETA):  # the default cell is the kgelu-uniform run
                    runs += [Run(grid["setting"], f"grid-tau{tau:g}-eta{eta:g}", seed, tau, eta) for seed in seeds]
    return runs


def execute(run: Run, setting: Setting, data: tuple, out: Path, device_is_cpu: bool) -> TrainResult:
    from transformers import set_seed

    from hf_kgelu.training import KGeluTrainingArguments

    folder = run.folder(out)
    train, evaluation, num_features = data
    set_seed(run.seed)
    model = build_model(setting, run.activation, num_features)
    init = run.variant.removeprefix("kgelu-") if run.variant in ("kgelu-uniform", "kgelu-increasing", "kgelu-decreasing") else "uniform"
    steps_per_epoch = math.ceil(len(train) / setting.train["per_device_train_batch_size"])
    eval_every = dict(eval_strategy="epoch")
    if setting.train["num_train_epochs"] <= 3:  # few epochs: evaluate four times per epoch for a finer best-score epoch
        eval_every = dict(eval_strategy="steps", eval_steps=max(1, steps_per_epoch // 4))
    args = KGeluTrainingArguments(
        output_dir=str(folder), seed=run.seed, save_strategy="no", report_to="none", disable_tqdm=True,
        logging_steps=max(1, steps_per_epoch // 10), use_cpu=device_is_cpu,
        dataloader_pin_memory=not device_is_cpu, bf16=False, **eval_every, **setting.train,
        kgelu_tau=run.tau, kgelu_lr_multiplier=run.eta, kgelu_init=init,
        kgelu_anneal_start=0.25 if run.variant == "kgelu-annealed" else None,
    )
    return train_and_relu_ize(model, args, train, evaluation, task=setting.task, name=f"{run.setting}/{run.variant}/seed{run.seed}",
                        substitution=run.activation != "relu", save_model=False, log_lines=False,
                        command=" ".join(["scripts/reproduce.py", *sys.argv[1:]]))


def load_data(setting: Setting, data_dir: Path | None, cache: dict) -> tuple:
    if setting.name in cache:
        return cache[setting.name]
    if data_dir is not None:
        with np.load(data_dir / f"{setting.source}.npz") as stored:
            arrays = dict(stored)
    else:
        arrays = _arrays_from_library(setting.source, setting.sizes)
    train = _to_rows(arrays, setting.source, "train", setting.sizes.get("train"))
    evaluation = _to_rows(arrays, setting.source, "eval", setting.sizes.get("eval"))
    num_features = None
    if "pixel_values" in train.columns:
        if setting.flatten:
            for rows in (train, evaluation):
                rows.columns["pixel_values"] = rows.columns["pixel_values"].reshape(len(rows), -1)
        elif setting.source == "fashion":
            for rows in (train, evaluation):
                rows.columns["pixel_values"] = rows.columns["pixel_values"].reshape(len(rows), 1, 28, 28)
        num_features = int(train.columns["pixel_values"][0].numel())
    cache[setting.name] = (train, evaluation, num_features)
    return cache[setting.name]


def export_data(settings: list[Setting], folder: Path) -> None:
    """Write each source's arrays (at the preset's sizes) as .npz, for a machine without the data."""
    folder.mkdir(parents=True, exist_ok=True)
    done = set()
    for setting in settings:
        if setting.source in done:
            continue
        sizes = {k: max(s.sizes.get(k, 0) for s in settings if s.source == setting.source) or None for k in ("train", "eval")}
        arrays = _arrays_from_library(setting.source, {**setting.sizes, **{k: v for k, v in sizes.items() if v}})
        for key in list(arrays):
            limit = sizes["train" if key.startswith("train.") else "eval"]
            arrays[key] = arrays[key][:limit] if limit else arrays[key]
        np.savez_compressed(folder / f"{setting.source}.npz", **arrays)
        done.add(setting.source)
        print(f"exported {setting.source}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()), flush=True)


# ----------------------------------------------------------------------------------------------
# Summaries


def summarize(settings: list[Setting], grid: dict, results: dict[Run, TrainResult], seeds: list[int]) -> str:
    parts = []
    parts.append("#### Table I — training (mean ± std over seeds)\n\n"
                 "Best validation score and the epoch it was reached; mean λ is the mean over sites of λ at the end of "
                 "training for the learned runs (at the anneal switch for the annealed run); drift D is the mean over "
                 "epoch boundaries of the mean |Δλ| per site between consecutive epochs (learning phase only).\n")
    for s in settings:
        rows = []
        for variant in VARIANTS:
            rs = [results[Run(s.name, variant, seed)] for seed in seeds if Run(s.name, variant, seed) in results]
            if not rs:
                continue
            rows.append((VARIANT_LABELS[variant], len(rs), mean_std([r.best_score for r in rs]), mean_std([r.best_epoch for r in rs], 1),
                         mean_std([r.mean_lambda for r in rs], 3), mean_std([r.drift for r in rs], 4)))
        if rows:
            metric = "accuracy" if s.task == "classification" else "perplexity"
            parts.append(f"**{s.title}** (`{s.name}`)\n\n" + markdown_table(
                ["run", "seeds", f"best val {metric}", "epoch", "mean λ", "drift D"], rows) + "\n")

    parts.append("#### Layerwise λ and robustness to the init profile (Fig. 3)\n\n"
                 "λ per site at the end of training, mean over seeds, for the three init profiles (uniform λ = 1.05; "
                 "increasing/decreasing: linear from 1.05 to 2.0 across depth), and Spearman ρ between the profiles of "
                 "two init modes of the same seed (mean ± std over seeds; ρ = 1: same ranking of layers).\n")
    for s in settings:
        by_mode = {m: [results[Run(s.name, f"kgelu-{m}", seed)] for seed in seeds if Run(s.name, f"kgelu-{m}", seed) in results]
                   for m in INIT_MODES}
        if not all(by_mode.values()):
            continue
        sites = list(by_mode["uniform"][0].lambda_learned)
        rows = [(f"`{site}`", *[mean_std([r.lambda_learned[site] for r in by_mode[m]], 3) for m in INIT_MODES]) for site in sites]
        pairs = [("uniform", "increasing"), ("uniform", "decreasing"), ("increasing", "decreasing")]
        rho_rows = []
        for a, b in pairs:
            rhos = [profile_rho(results[Run(s.name, f"kgelu-{a}", seed)], results[Run(s.name, f"kgelu-{b}", seed)])
                    for seed in seeds if Run(s.name, f"kgelu-{a}", seed) in results and Run(s.name, f"kgelu-{b}", seed) in results]
            rho_rows.append((f"{a} vs {b}", mean_std(rhos, 3), ", ".join(fmt(r, 2) for r in rhos)))
        parts.append(f"**{s.title}**\n\n" + markdown_table(["site", *INIT_MODES], rows) + "\n\n"
                     + markdown_table(["Spearman ρ", "mean ± std", "per seed"], rho_rows) + "\n")

    parts.append("#### Table II — ReLU substitution after training (mean ± std over seeds)\n\n"
                 "The validation score with the trained activation and after replacing every activation by ReLU, on "
                 "the same data: the GELU model swapped directly, the λ-GELU model after annealing to λ* (ε = 0.005, "
                 "gate-L1 bound: λ* ≈ 159.6; λ learned for the first 25 % of the steps, then annealed), and for reference "
                 "the λ-GELU models that learned λ without annealing.\n")
    for s in settings:
        rows = []
        for variant, label in (("gelu", "GELU → ReLU (direct swap)"), ("kgelu-annealed", "λ-GELU annealed → ReLU"),
                               ("kgelu-uniform", "λ-GELU not annealed (uniform init) → ReLU")):
            rs = [results[Run(s.name, variant, seed)] for seed in seeds if Run(s.name, variant, seed) in results]
            rs = [r for r in rs if r.substitution]
            if not rs:
                continue
            before = [r.substitution["before"] for r in rs]
            after = [r.substitution["after"] for r in rs]
            row = [label, mean_std(before), mean_std(after), mean_std([a - b for a, b in zip(after, before)])]
            if s.task == "classification":
                lb = [r.substitution.get("loss_before") for r in rs]
                la = [r.substitution.get("loss_after") for r in rs]
                row.append(mean_std([a - b for a, b in zip(la, lb) if a is not None and b is not None]))
            rows.append(row)
        if rows:
            metric = "accuracy" if s.task == "classification" else "perplexity"
            headers = ["model", f"original {metric}", "after ReLU swap", "change"]
            if s.task == "classification":
                headers.append("change of val loss")
            parts.append(f"**{s.title}**\n\n" + markdown_table(headers, rows) + "\n")

    cells = _grid_cells(grid, results, seeds)
    if cells:
        taus, etas = grid["taus"], grid["etas"]
        gelu = [results[Run(grid["setting"], "gelu", seed)].best_score for seed in seeds if Run(grid["setting"], "gelu", seed) in results]
        rows_d = [(f"τ = {tau:g}", *[mean_std(cells.get((tau, eta), {}).get("drift", []), 4) for eta in etas]) for tau in taus]
        rows_b = [(f"τ = {tau:g}", *[mean_std(cells.get((tau, eta), {}).get("dbvs", []), 4) for eta in etas]) for tau in taus]
        rows_l = [(f"τ = {tau:g}", *[mean_std(cells.get((tau, eta), {}).get("lam", []), 3) for eta in etas]) for tau in taus]
        heads = ["", *[f"η = {eta:g}" for eta in etas]]
        parts.append(
            f"#### τ × η grid (§IV-A) on {grid['setting']}\n\n"
            f"λ-GELU (uniform init, λ learned throughout) for each temperature τ and θ learning-rate multiplier η; "
            f"GELU's best validation accuracy over the same seeds: {mean_std(gelu)}.\n\n"
            "Drift D (mean over epochs; lower = steadier hardness):\n\n" + markdown_table(heads, rows_d) + "\n\n"
            "ΔBVS = best validation accuracy of λ-GELU − that of GELU, same seed:\n\n" + markdown_table(heads, rows_b) + "\n\n"
            "Mean λ at the end of training:\n\n" + markdown_table(heads, rows_l) + "\n\n" + _grid_verdict(cells) + "\n")
    return "\n".join(parts)


def _grid_cells(grid: dict, results: dict, seeds: list[int]) -> dict:
    cells = {}
    for tau in grid["taus"]:
        for eta in grid["etas"]:
            variant = "kgelu-uniform" if (tau, eta) == (DEFAULT_TAU, DEFAULT_ETA) else f"grid-tau{tau:g}-eta{eta:g}"
            drift, dbvs, lam = [], [], []
            for seed in seeds:
                run, base = Run(grid["setting"], variant, seed, tau, eta), Run(grid["setting"], "gelu", seed)
                run = run if run in results else Run(grid["setting"], variant, seed)
                if run in results and base in results:
                    drift.append(results[run].drift)
                    dbvs.append(results[run].best_score - results[base].best_score)
                    lam.append(results[run].mean_lambda)
            if dbvs:
                cells[(tau, eta)] = {"drift": drift, "dbvs": dbvs, "lam": lam}
    return cells


def _grid_verdict(cells: dict) -> str:
    default = cells.get((DEFAULT_TAU, DEFAULT_ETA))
    if not default:
        return ""
    mean = lambda xs: statistics.fmean([x for x in xs if x is not None]) if any(x is not None for x in xs) else float("nan")  # noqa: E731
    best = max(cells, key=lambda k: mean(cells[k]["dbvs"]))
    spread = statistics.stdev(default["dbvs"]) if len(default["dbvs"]) > 1 else 0.0
    gap = mean(cells[best]["dbvs"]) - mean(default["dbvs"])
    text = (f"Automatic reading: the best mean ΔBVS is at τ = {best[0]:g}, η = {best[1]:g} ({mean(cells[best]['dbvs']):+.4f}); "
            f"the default τ = {DEFAULT_TAU:g}, η = {DEFAULT_ETA:g} has {mean(default['dbvs']):+.4f} "
            f"(seed std {spread:.4f}), drift {mean(default['drift']):.4f} vs {mean(cells[best]['drift']):.4f}. ")
    if best == (DEFAULT_TAU, DEFAULT_ETA) or gap <= max(spread, 1e-9):
        text += "The default is within one seed standard deviation of the best cell: nothing here says it is wrong."
    else:
        text += "The best cell beats the default by more than one seed standard deviation at this size."
    return text


# ----------------------------------------------------------------------------------------------
# docs/results.md


SECTION = "## Paper experiments"


def update_results_md(path: Path, preset: str, body: str) -> None:
    """Put `body` between this preset's markers inside the `## Paper experiments` section of `path`,
    leaving every other section (and any hand-written text in this one) alone."""
    begin, end = f"<!-- reproduce:{preset}:begin -->", f"<!-- reproduce:{preset}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Results\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    elif SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        cut = len(text) if nxt < 0 else nxt + 1
        text = text[:cut].rstrip("\n") + "\n\n" + block + "\n\n" + text[cut:]
    else:
        text = text.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def header(preset: str, settings: list[Setting], grid: dict, seeds: list[int], elapsed: float, machine: str, n_runs: int, n_total: int,
           n_trained: int, train_minutes: float) -> str:
    import transformers

    sizes = "\n".join(f"- `{s.name}`: {s.describe()}" for s in settings)
    cmd = shlex.join(["python", "scripts/reproduce.py", *sys.argv[1:]])
    done = "" if n_runs == n_total else f" **Partial: {n_runs} of {n_total} runs finished.**"
    return (f"### Preset `{preset}`\n\n"
            f"Command: `{cmd}` — {machine}, {datetime.now(timezone.utc).strftime('%Y-%m-%d')}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}. {n_runs} runs, {train_minutes:.1f} min of training in total "
            f"(Trainer time, evaluation included; this call trained {n_trained} and took {elapsed / 60:.1f} min, "
            f"the others were reused from earlier calls with the same settings).{done}\n\n"
            f"Seeds {', '.join(map(str, seeds))}. λ-GELU: τ = {DEFAULT_TAU:g}, η = {DEFAULT_ETA:g} (θ at lr × η, no weight "
            f"decay), init λ = 1.05 (uniform) or 1.05 → 2.0 across depth. Sizes:\n\n{sizes}\n\n"
            f"τ × η grid: τ ∈ {{{', '.join(f'{t:g}' for t in grid['taus'])}}}, η ∈ {{{', '.join(f'{e:g}' for e in grid['etas'])}}} "
            f"on `{grid['setting']}`, same seeds.\n")


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "gpu", "smoke"), default="cpu", help="cpu: this 2-core machine; gpu: one H200; smoke: the tests'")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--settings", default=None, help="comma-separated setting names (default: all of the preset)")
    parser.add_argument("--no-grid", action="store_true", help="skip the τ × η grid")
    parser.add_argument("--out", default=None, help="run folder (default outputs/reproduce-PRESET)")
    parser.add_argument("--data-dir", default=None, help="read the exported .npz tensors from here instead of hf_kgelu.data")
    parser.add_argument("--export-data", default=None, metavar="DIR", help="only write the preset's data as .npz into DIR")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new run after this many minutes")
    parser.add_argument("--update-docs", action="store_true", help="write the tables into docs/results.md (## Paper experiments)")
    parser.add_argument("--results-md", default=str(ROOT / "docs" / "results.md"), help="the file --update-docs edits")
    parser.add_argument("--machine", default=None, help="how the report names the machine (default: from the hardware)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default on a CPU-only machine: 1; two OpenMP threads on a busy 2-core "
                             "machine were measured 100× slower than one)")
    args = parser.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads is None and not torch.cuda.is_available():
        args.threads = 1
    previous_threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(previous_threads)  # the caller's setting (e.g. a test session's) is theirs


def _run(args: argparse.Namespace) -> int:
    settings, grid = presets(args.preset)
    if args.settings:
        wanted = args.settings.split(",")
        unknown = set(wanted) - {s.name for s in settings}
        if unknown:
            raise SystemExit(f"unknown setting(s) {sorted(unknown)} for preset {args.preset}: {[s.name for s in settings]}")
        settings = [s for s in settings if s.name in wanted]
    if args.export_data:
        export_data(settings, Path(args.export_data))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out or ROOT / "outputs" / f"reproduce-{args.preset}")
    data_dir = Path(args.data_dir) if args.data_dir else None
    device_is_cpu = not torch.cuda.is_available()
    machine = args.machine or (torch.cuda.get_device_name(0) if not device_is_cpu else f"{os.cpu_count()}-core CPU ({platform.machine()})")
    by_name = {s.name: s for s in settings}
    runs = planned_runs(settings, grid, seeds, not args.no_grid)
    results: dict[Run, TrainResult] = {}
    reused: set[Run] = set()
    cache: dict = {}
    started = time.perf_counter()
    print(f"reproduce: preset {args.preset}, {len(runs)} runs, seeds {seeds}, out {out}", flush=True)
    for index, run in enumerate(runs, 1):
        stored = run.folder(out) / "results.json"
        if stored.exists():
            results[run] = TrainResult.from_dict(json.loads(stored.read_text()))
            reused.add(run)
            continue
        minutes = (time.perf_counter() - started) / 60
        if args.max_minutes is not None and minutes > args.max_minutes:
            print(f"stopping after {minutes:.1f} min (--max-minutes): {len(runs) - index + 1} runs left for a later call", flush=True)
            break
        setting = by_name[run.setting]
        t0 = time.perf_counter()
        result = execute(run, setting, load_data(setting, data_dir, cache), out, device_is_cpu)
        results[run] = result
        sub = result.substitution or {}
        print(f"[{index}/{len(runs)}] {run.setting} {run.variant} seed {run.seed}: best {fmt(result.best_score)} "
              f"@ {fmt(result.best_epoch, 2)}, mean λ {fmt(result.mean_lambda, 3)}, D {fmt(result.drift, 4)}, "
              f"swap {fmt(sub.get('before'))} → {fmt(sub.get('after'))} ({time.perf_counter() - t0:.0f} s; "
              f"{(time.perf_counter() - started) / 60:.1f} min total)", flush=True)
    elapsed = time.perf_counter() - started
    trained = sum(1 for run in results if run not in reused)
    train_minutes = sum(r.train_seconds or 0.0 for r in results.values()) / 60
    body = (header(args.preset, settings, grid, seeds, elapsed, machine, len(results), len(runs), trained, train_minutes)
            + "\n" + summarize(settings, grid, results, seeds))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(body + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'results.md'}", flush=True)
    if args.update_docs:
        update_results_md(Path(args.results_md), args.preset, body)
        print(f"updated {args.results_md} ({SECTION}, preset {args.preset})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
