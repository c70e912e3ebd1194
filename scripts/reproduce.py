#!/usr/bin/env python
"""Reproduce the paper's experiments on the offline data here; with --update-docs, into docs/results.md.

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

The tables (Table I, Fig. 3 ρ, Table II, the τ × η grid) are rows of the benchmarks' one schema
(benchmarks/harness.py; p50 the mean over seeds, p20 / p80 the mean ∓ std), rendered into
OUT/results.md; --update-docs appends them to benchmarks/results/<machine kind>.csv and
regenerates docs/results.md (`python -m benchmarks.report`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

import hf_kgelu  # noqa: F401  (registers "kgelu" and the MLP)
from hf_kgelu.checkpoint import TrainResult, train_and_relu_ize
from hf_kgelu.checkpoint.report import fmt, profile_rho
from hf_kgelu.modeling import with_activation
from hf_kgelu.presets import deit_config, gpt2_config, mlp_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's benchmarks package (results schema, tables): not installed
from benchmarks import harness, report  # noqa: E402
from benchmarks.offline_data import arrays_from_library, load_arrays, save_arrays, to_rows  # noqa: E402
from benchmarks.report.paper import paper_tables  # noqa: E402

INIT_MODES = ("uniform", "increasing", "decreasing")
VARIANTS = ("gelu", "relu", "kgelu-uniform", "kgelu-increasing", "kgelu-decreasing", "kgelu-annealed")
DEFAULT_TAU, DEFAULT_ETA = 0.1, 10.0


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
            Setting("gpt2-pydocs", "GPT-2 small 12×768 (124 M, block 256) / Python docs", "pydocs", "causal_lm",
                    {"kind": "GPT-2", "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 256},
                    dict(learning_rate=6e-4, weight_decay=0.1, warmup_steps=0.05, num_train_epochs=2, per_device_train_batch_size=32,
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
        arrays = load_arrays(data_dir, setting.source, "python scripts/reproduce.py --export-data DIR --preset PRESET")
    else:
        arrays = arrays_from_library(setting.source, setting.sizes)
    train = to_rows(arrays, "train", setting.sizes.get("train"))
    evaluation = to_rows(arrays, "eval", setting.sizes.get("eval"))
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
    done = set()
    for setting in settings:
        if setting.source in done:
            continue
        sizes = {k: max(s.sizes.get(k, 0) for s in settings if s.source == setting.source) or None for k in ("train", "eval")}
        arrays = arrays_from_library(setting.source, {**setting.sizes, **{k: v for k, v in sizes.items() if v}})
        for key in list(arrays):
            limit = sizes["train" if key.startswith("train.") else "eval"]
            arrays[key] = arrays[key][:limit] if limit else arrays[key]
        save_arrays(folder, setting.source, arrays)
        done.add(setting.source)


# ----------------------------------------------------------------------------------------------
# The tables as rows of the benchmarks' schema (benchmarks/report/paper.py renders them)


def paper_rows(settings: list[Setting], grid: dict, results: dict[Run, TrainResult], seeds: list[int]) -> list[tuple]:
    """(what, variant, metric, Stats over the seeds, shape) of Table I, Fig. 3, Table II and the grid."""
    out = []

    def add(what, setting, variant, metric, values):
        stats = harness.Stats.over_seeds(values)
        if stats is not None:
            out.append((what, f"{setting.name}/{variant}", metric, stats, f"{setting.title} — {setting.describe()}"))

    def runs(setting, variant):
        return [results[Run(setting.name, variant, seed)] for seed in seeds if Run(setting.name, variant, seed) in results]

    for s in settings:
        metric = "accuracy" if s.task == "classification" else "perplexity"
        for variant in VARIANTS:
            rs = runs(s, variant)
            if rs:
                add("paper_table1", s, variant, "seeds", [len(rs)])
                for name, values in ((f"best_val_{metric}", [r.best_score for r in rs]), ("best_epoch", [r.best_epoch for r in rs]),
                                     ("mean_lambda", [r.mean_lambda for r in rs]), ("drift", [r.drift for r in rs])):
                    add("paper_table1", s, variant, name, values)
        by_mode = {m: runs(s, f"kgelu-{m}") for m in INIT_MODES}
        if all(by_mode.values()):
            for mode, rs in by_mode.items():
                for site in rs[0].lambda_learned:
                    add("paper_fig3", s, mode, f"lambda {site}", [r.lambda_learned[site] for r in rs])
            for a, b in (("uniform", "increasing"), ("uniform", "decreasing"), ("increasing", "decreasing")):
                both = [seed for seed in seeds if Run(s.name, f"kgelu-{a}", seed) in results and Run(s.name, f"kgelu-{b}", seed) in results]
                rhos = [profile_rho(results[Run(s.name, f"kgelu-{a}", seed)], results[Run(s.name, f"kgelu-{b}", seed)]) for seed in both]
                add("paper_fig3_rho", s, f"{a} vs {b}", "spearman_rho", rhos)
                for seed, rho in zip(both, rhos, strict=True):
                    add("paper_fig3_rho", s, f"{a} vs {b}", f"spearman_rho seed {seed}", [rho])
        for variant in ("gelu", "kgelu-annealed", "kgelu-uniform"):
            subs = [r.substitution for r in runs(s, variant) if r.substitution]
            if subs:
                add("paper_table2", s, variant, f"original_{metric}", [x["before"] for x in subs])
                add("paper_table2", s, variant, "after_relu_swap", [x["after"] for x in subs])
                add("paper_table2", s, variant, "change", [x["after"] - x["before"] for x in subs])
                if s.task == "classification":
                    add("paper_table2", s, variant, "change_val_loss", [
                        x["loss_after"] - x["loss_before"] for x in subs
                        if x.get("loss_after") is not None and x.get("loss_before") is not None])
    grid_setting = next((s for s in settings if s.name == grid["setting"]), None)
    for tau in grid["taus"] if grid_setting else ():
        for eta in grid["etas"]:
            variant = "kgelu-uniform" if (tau, eta) == (DEFAULT_TAU, DEFAULT_ETA) else f"grid-tau{tau:g}-eta{eta:g}"
            pairs = [(results[Run(grid["setting"], variant, seed)], results[Run(grid["setting"], "gelu", seed)]) for seed in seeds
                     if Run(grid["setting"], variant, seed) in results and Run(grid["setting"], "gelu", seed) in results]
            cell = f"tau={tau:g} eta={eta:g}"
            add("paper_grid", grid_setting, cell, "drift", [r.drift for r, _ in pairs])
            add("paper_grid", grid_setting, cell, "delta_bvs", [r.best_score - g.best_score for r, g in pairs])
            add("paper_grid", grid_setting, cell, "mean_lambda", [r.mean_lambda for r, _ in pairs])
    return out


def header(preset: str, seeds: list[int], elapsed: float, machine: str, cmd: str, n_runs: int, n_total: int, n_trained: int,
           train_minutes: float) -> str:
    import transformers

    done = "" if n_runs == n_total else f" **Partial: {n_runs} of {n_total} runs finished.**"
    return (f"### Preset `{preset}`\n\n"
            f"Command: `{cmd}` — {machine}, {datetime.now(timezone.utc).strftime('%Y-%m-%d')}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}. {n_runs} runs, {train_minutes:.1f} min of training in total "
            f"(Trainer time, evaluation included; this call trained {n_trained} and took {elapsed / 60:.1f} min, "
            f"the others were reused from earlier calls with the same settings).{done}\n\n"
            f"Seeds {', '.join(map(str, seeds))}. λ-GELU: τ = {DEFAULT_TAU:g}, η = {DEFAULT_ETA:g} (θ at lr × η, no weight "
            f"decay), init λ = 1.05 (uniform) or 1.05 → 2.0 across depth.\n")


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
    parser.add_argument("--update-docs", action="store_true",
                        help="append the tables' rows to benchmarks/results/<machine kind>.csv (or --results) and regenerate docs/results.md")
    parser.add_argument("--results", default=None, help="--update-docs: the folder of the per-kind CSVs (another than "
                                                        "benchmarks/results: docs/results.md is left alone)")
    parser.add_argument("--machine-kind", default=None, help="the machine kind naming the CSV (default: detected)")
    parser.add_argument("--machine", default=None, help="how the rows name the device (default: the GPU, else the CPU's model and cores)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default on a CPU-only machine: 1; two OpenMP threads on a busy 2-core "
                             "machine were measured 100× slower than one)")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)

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
    recorder = harness.Recorder("scripts/reproduce.py", args.argv, kind=args.machine_kind, results=args.results,
                                save=args.update_docs, device=args.machine)
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
    for what, variant, metric, stats, shape in paper_rows(settings, grid, results, seeds):
        recorder.add(what, variant, metric, stats, dtype="float32", shape=shape)
    body = (header(args.preset, seeds, elapsed, recorder.device, recorder.command, len(results), len(runs), trained, train_minutes)
            + "\n" + paper_tables([dict(row, kind=recorder.kind) for row in recorder.rows]))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(body + "\n", encoding="utf-8")
    print(f"\nwrote {out / 'results.md'}", flush=True)
    if recorder.save() is not None and recorder.folder.resolve() == harness.RESULTS.resolve():
        report.main([])  # docs/results.md from the CSVs, these rows included
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
