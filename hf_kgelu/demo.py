"""`hf-kgelu demo`: the whole method on an embedded data set, on a CPU, in a few minutes.

A small DeiT (4 layers × 64, patch 4) learns sklearn's 8×8 digits three times from the same
seed — GELU, ReLU, and λ-GELU (λ learned for the first `anneal_start` of training, then
annealed to λ* ≈ 160) — and the demo prints the paper's Table I row of each run (best
validation accuracy, its epoch, the mean learned λ) and the Table II substitution test
(accuracy before/after swapping the activations for ReLU, for the GELU model's direct swap and
for the annealed λ-GELU model). It writes, under `--output-dir`:

    report.md      both tables, the settings and the command
    hardness.png   λ per layer over the λ-GELU run (anneal start marked)
    relu_model/    the ReLU-ized λ-GELU model: weights, config, image processor, model card
    gelu/ relu/ kgelu/   each run's trained model, report.md, results.json (and the λ history)
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

DEMO_RUNS = (("gelu", "GELU"), ("relu", "ReLU"), ("kgelu", "λ-GELU (annealed)"))


@dataclass
class DemoSettings:
    """The demo's settings (the `hf-kgelu demo` options)."""

    output_dir: str = "outputs/demo"
    seed: int = 0
    epochs: int = 20
    anneal_start: float = 0.5
    train_limit: int | None = None
    batch_size: int = 32
    learning_rate: float = 3e-3
    threads: int = 1  # these tiny models gain little from more; on a busy 2-core machine 2 threads ran 100× slower
    quiet: bool = False


def run_demo(args: DemoSettings) -> int:
    import torch

    if args.epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {args.epochs}")
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)  # a caller's (e.g. a test session's) setting is theirs


def _run(args: DemoSettings) -> int:
    import torch
    from transformers import DeiTForImageClassification, set_seed
    from transformers.utils import logging as hf_logging

    from .checkpoint import train_and_relu_ize
    from .checkpoint.report import table_one, table_two
    from .data import digits_splits
    from .modeling import with_activation
    from .presets import (
        DIGITS_LABELS,
        IMAGE_SIZE,
        RAW_PIXEL_MAX,
        deit_config,
        image_processor_for,
        label_maps,
    )
    from .publishing.card import CardDetails
    from .training import EpochProgress, KGeluTrainingArguments

    hf_logging.set_verbosity_error()  # the demo prints its own progress; warnings stay visible via python logging
    started = time.perf_counter()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = digits_splits(seed=args.seed)
    train, validation = data["train"], data["validation"]
    if args.train_limit:
        train = train.select(range(min(args.train_limit, len(train))))
    processor = image_processor_for(IMAGE_SIZE["digits"], RAW_PIXEL_MAX["digits"])
    base = deit_config(**label_maps(DIGITS_LABELS))
    print(
        f"hf-kgelu demo: DeiT ({base.num_hidden_layers} layers × {base.hidden_size}, patch {base.patch_size}) on sklearn digits "
        f"({len(train)} train / {len(validation)} validation images), {args.epochs} epochs per run, seed {args.seed}",
        flush=True,
    )
    results, gelu_model = {}, None
    for index, (activation, label) in enumerate(DEMO_RUNS, 1):
        print(f"[{index}/{len(DEMO_RUNS)}] {label}", flush=True)
        set_seed(args.seed)
        model = DeiTForImageClassification(with_activation(base, activation))
        training = KGeluTrainingArguments(
            output_dir=str(out / activation), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128, learning_rate=args.learning_rate, warmup_steps=0.1, weight_decay=0.05,
            eval_strategy="epoch", save_strategy="no", logging_steps=5, report_to="none", seed=args.seed,
            disable_tqdm=True, use_cpu=not torch.cuda.is_available(), kgelu_anneal_start=args.anneal_start,
        )
        progress = [] if args.quiet else [EpochProgress(label, "accuracy")]
        results[activation] = train_and_relu_ize(
            model, training, train, validation, name=f"demo-{activation}", processing_class=processor,
            gelu_baseline=gelu_model if activation == "kgelu" else None, substitution=activation != "relu",
            relu_output_dir=out / "relu_model" if activation == "kgelu" else None,
            details=CardDetails(datasets=["sklearn digits"]),
            callbacks=progress, log_lines=False, command=_command(args),
        )
        if activation == "gelu":
            gelu_model = model

    kgelu, gelu = results["kgelu"], results["gelu"]
    if kgelu.plot_path:
        shutil.copyfile(kgelu.plot_path, out / "hardness.png")
    table1 = table_one([(label, results[act]) for act, label in DEMO_RUNS])
    table2 = table_two(
        [
            ("GELU → ReLU (direct swap)", gelu.substitution["before"], gelu.substitution["after"],
             gelu.substitution.get("loss_before"), gelu.substitution.get("loss_after")),
            ("λ-GELU annealed → ReLU", kgelu.substitution["before"], kgelu.substitution["after"],
             kgelu.substitution.get("loss_before"), kgelu.substitution.get("loss_after")),
        ],
        "accuracy",
    )
    elapsed = time.perf_counter() - started
    print("\nTable I — training (validation accuracy; λ learned before the anneal switch)\n" + table1)
    print("\nTable II — swapping the activations for ReLU after training\n" + table2)
    print(f"\nReLU model: {kgelu.relu_dir}\nReport:     {out / 'report.md'}\nλ plot:     {out / 'hardness.png'}"
          f"\nTotal time: {elapsed:.0f} s", flush=True)
    (out / "report.md").write_text(_report(args, base, len(train), len(validation), results, table1, table2, elapsed), encoding="utf-8")
    (out / "results.json").write_text(json.dumps({k: r.to_dict() for k, r in results.items()}, indent=1, default=str) + "\n", encoding="utf-8")
    return 0


def _command(args) -> str:
    return "hf-kgelu demo " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "demo" else "hf-kgelu demo"


def _report(args, base, n_train, n_val, results, table1, table2, elapsed) -> str:
    import torch
    import transformers

    kgelu = results["kgelu"]
    profile = "\n".join(f"| `{site}` | {lam:.4f} |" for site, lam in (kgelu.lambda_learned or {}).items())
    return f"""# hf-kgelu demo: GELU vs ReLU vs λ-GELU on sklearn digits

Command: `{_command(args)}` — {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')},
{platform.machine()} with {torch.get_num_threads()} torch threads, torch {torch.__version__},
transformers {transformers.__version__}; {elapsed:.0f} s in total.

Setting: DeiT with {base.num_hidden_layers} layers of width {base.hidden_size} (MLP {base.intermediate_size}),
patch {base.patch_size} on 8×8 images; {n_train} training and {n_val} validation images;
{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.learning_rate:g} (linear decay, 10 % warmup),
weight decay 0.05, seed {args.seed}. The λ-GELU run learns λ (τ = 0.1, η = 10, init λ = 1.05) for the first
{args.anneal_start:.0%} of its steps, then anneals it linearly to λ* = {kgelu.target_lambda or float('nan'):.1f}
(gate-L1 tolerance ε = 0.005).

## Table I — training

{table1}

Mean λ is the mean over the {len(kgelu.lambda_learned or {})} λ-GELU sites of the λ learned at the anneal
switch; drift D is the mean over epochs of the mean |Δλ| per site between consecutive epochs
(learning phase only).

| site | λ learned |
|---|---:|
{profile}

![λ per layer during the λ-GELU run](hardness.png)

## Table II — ReLU substitution

{table2}

The GELU row swaps the trained GELU model's activations for ReLU directly; the λ-GELU row swaps
the annealed model's (λ = λ* at every site). The ReLU-ized λ-GELU model, loadable with stock
transformers, is in `relu_model/` with its model card.
"""
