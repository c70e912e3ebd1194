"""`hf-kgelu demo`: what annealed λ-GELU buys, on embedded data, on a CPU, in under five minutes.

The default task (`--task pydocs`): a small GPT-2 learns the stdlib's own documentation
(`pydoc_data.topics`, tokenised with GPT-2's BPE cut down to the 4 096 tokens that text uses)
twice from the same seed — once with GELU, once with λ-GELU (λ learned for the first
`anneal_start` of training, then annealed to λ* ≈ 160) — and both models are made ReLU
networks: the GELU model by swapping ReLU in directly, the λ-GELU model by `relu_ize`. The
report opens with the held-out perplexity of each before and after its swap: the direct swap
costs perplexity, the annealed one does not. `--relu-run` adds a model trained with ReLU from
the start, for context. `--task digits` is the earlier demo: a small DeiT on sklearn's 8×8
digits, where the direct swap happens to cost nothing.

Under `--output-dir` it writes:

    report.md      the comparison (one sentence, one table), then training, settings, timings
    results.json   per run: metric, higher_is_better, substitution before/after (+ relative change), λ, history
    hardness.png   λ of every λ-GELU site over the optimizer steps of the λ-GELU run
    relu_model/    the ReLU-ized λ-GELU model: weights, config, tokenizer (or image processor), model card
    gelu/ kgelu/ (relu/)   each run's trained model, report.md, results.json (and the λ history)
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

RUN_LABELS = {"gelu": "GELU", "relu": "ReLU (trained as ReLU)", "kgelu": "λ-GELU (annealed)"}
TASKS = ("pydocs", "digits")
OVERRIDES = ("epochs", "anneal_start", "learning_rate", "batch_size", "layers", "width", "block_size", "vocab_size", "relu_run")


@dataclass
class DemoOptions:
    """The `hf-kgelu demo` options. `overrides` (epochs, anneal_start, learning_rate, batch_size,
    layers, width, block_size, vocab_size, relu_run) change the task's preset
    (`hf_kgelu.presets.DEMO_PRESETS`); what is left out keeps the preset's value."""

    task: str = "pydocs"
    output_dir: str = "outputs/demo"
    seed: int = 0
    train_limit: int | None = None  # use only the first N training examples: a quicker, weaker demo
    eval_limit: int | None = None  # evaluate on only the first N held-out examples (tests)
    threads: int = 1  # these tiny models gain little from more; on a busy 2-core machine 2 ran 100× slower
    quiet: bool = False
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown demo task {self.task!r}: choose one of {', '.join(TASKS)}")
        unknown = set(self.overrides) - set(OVERRIDES)
        if unknown:
            raise ValueError(f"unknown demo setting(s) {', '.join(sorted(unknown))}: choose from {', '.join(OVERRIDES)}")


def run_demo(args: DemoOptions) -> int:
    import torch

    from .presets import demo_preset

    settings = demo_preset(args.task, **{key: args.overrides.get(key) for key in OVERRIDES})
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, settings)
    finally:
        torch.set_num_threads(threads)  # a caller's (e.g. a test session's) setting is theirs




def _run(args: DemoOptions, settings) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the demo prints its own progress; warnings stay visible via python logging
    hf_logging.disable_progress_bar()  # no "Writing model shards" bars between the demo's own lines
    try:
        return _train_and_report(args, settings)
    finally:
        hf_logging.enable_progress_bar()


def _train_and_report(args: DemoOptions, settings) -> int:
    import torch
    from transformers import set_seed

    from .checkpoint import train_and_relu_ize
    from .modeling import with_activation
    from .publishing.card import CardDetails
    from .training import EpochProgress, KGeluTrainingArguments

    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = _build_task(settings, args.seed, args.train_limit, args.eval_limit)
    print(f"hf-kgelu demo: {task['headline']}, seed {args.seed}. GELU swapped for ReLU after training, against λ-GELU "
          f"annealed to λ* then swapped.", flush=True)
    runs = ["gelu", *(["relu"] if settings.relu_run else []), "kgelu"]
    results, gelu_model = {}, None
    for index, activation in enumerate(runs, 1):
        label = RUN_LABELS[activation]
        print(f"[{index}/{len(runs)}] {label}", flush=True)
        set_seed(args.seed)
        model = task["model_class"](with_activation(task["config"], activation))
        training = KGeluTrainingArguments(
            output_dir=str(out / activation), num_train_epochs=settings.epochs, per_device_train_batch_size=settings.batch_size,
            per_device_eval_batch_size=settings.eval_batch_size, learning_rate=settings.learning_rate,
            warmup_steps=settings.warmup, weight_decay=settings.weight_decay, **task["eval_every"], save_strategy="no",
            logging_steps=task["logging_steps"], report_to="none", seed=args.seed, disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), kgelu_anneal_start=settings.anneal_start,
            kgelu_log_every=task["lambda_every"],  # ~100 λ records: a smooth learned phase in hardness.png
        )
        progress = [] if args.quiet else [EpochProgress(label, task["metric"])]
        results[activation] = train_and_relu_ize(
            model, training, task["train"], task["validation"], name=f"demo-{activation}", data_collator=task["collator"],
            processing_class=task["processor"], gelu_baseline=gelu_model if activation == "kgelu" else None,
            substitution=activation != "relu", relu_output_dir=out / "relu_model" if activation == "kgelu" else None,
            details=CardDetails(datasets=[task["dataset"]]), callbacks=progress, log_lines=False, command=_command(args),
        )
        results[activation].settings["demo"] = settings.describe()
        if activation == "gelu":
            gelu_model = model

    kgelu = results["kgelu"]
    for result in results.values():
        if result.substitution and result.substitution.get("before") is not None:
            result.substitution["relative_change"] = _relative(result.substitution["before"], result.substitution["after"])
    if kgelu.plot_path:
        shutil.copyfile(kgelu.plot_path, out / "hardness.png")
    opening, table = comparison(results["gelu"], kgelu)
    training_table = _training_table(results, runs)
    timing = {"wall_seconds": time.perf_counter() - started, "cpu_seconds": time.process_time() - cpu_started}
    print(f"\n{opening}\n\n{table}\n\nTraining ({task['metric']} on the held-out {task['unit']}):\n{training_table}")
    print(f"\nReLU model: {kgelu.relu_dir}\nReport:     {out / 'report.md'}\nλ plot:     {out / 'hardness.png'}"
          f"\nTime:       {timing['wall_seconds']:.0f} s wall, {timing['cpu_seconds']:.0f} s CPU (this process)", flush=True)
    (out / "report.md").write_text(_report(args, settings, task, results, runs, opening, table, training_table, timing), encoding="utf-8")
    (out / "results.json").write_text(json.dumps({k: r.to_dict() for k, r in results.items()}, indent=1, default=str) + "\n",
                                      encoding="utf-8")
    return 0


def _build_task(settings, seed: int, train_limit: int | None, eval_limit: int | None) -> dict:
    """Data, model class, config, processor and evaluation cadence of the task."""
    import math

    if settings.task == "pydocs":
        from transformers import GPT2LMHeadModel, default_data_collator

        from .data import compact_gpt2_tokenizer, embedded_text_splits, text_blocks
        from .presets import gpt2_config

        texts = embedded_text_splits(settings.eval_fraction)
        tokenizer = compact_gpt2_tokenizer(texts["train"], settings.vocab_size)
        tokenizer.model_max_length = settings.block_size
        data = text_blocks(texts, tokenizer, settings.block_size, limits={"train": train_limit, "validation": eval_limit})
        config = gpt2_config(vocab_size=len(tokenizer), n_positions=settings.block_size, n_layer=settings.layers,
                             n_embd=settings.width, n_head=settings.heads)
        task = dict(model_class=GPT2LMHeadModel, config=config, processor=tokenizer, collator=default_data_collator,
                    metric="perplexity", unit=f"{len(data['validation']) * settings.block_size:,} tokens",
                    dataset="Python documentation (stdlib pydoc_data.topics)")
        task["headline"] = (
            f"GPT-2 ({settings.layers} layers × {settings.width}, {len(tokenizer):,}-token BPE) on the stdlib's Python docs "
            f"({len(data['train']) * settings.block_size:,} training / {len(data['validation']) * settings.block_size:,} held-out "
            f"tokens in blocks of {settings.block_size}), {settings.epochs:g} epochs per run"
        )
    else:
        from transformers import DeiTForImageClassification

        from .data import digits_splits
        from .presets import DIGITS_LABELS, IMAGE_SIZE, RAW_PIXEL_MAX, deit_config, image_processor_for, label_maps

        data = digits_splits(seed=seed)  # as before: the split follows the seed
        if train_limit:
            data["train"] = data["train"].select(range(min(train_limit, len(data["train"]))))
        if eval_limit:
            data["validation"] = data["validation"].select(range(min(eval_limit, len(data["validation"]))))
        config = deit_config(hidden_size=settings.width, num_hidden_layers=settings.layers, num_attention_heads=settings.heads,
                             **label_maps(DIGITS_LABELS))
        task = dict(model_class=DeiTForImageClassification, config=config, collator=None,
                    processor=image_processor_for(IMAGE_SIZE["digits"], RAW_PIXEL_MAX["digits"]), metric="accuracy",
                    unit=f"{len(data['validation'])} images", dataset="sklearn digits")
        task["headline"] = (
            f"DeiT ({settings.layers} layers × {settings.width}, patch {config.patch_size}) on sklearn digits "
            f"({len(data['train'])} train / {len(data['validation'])} validation images), {settings.epochs:g} epochs per run"
        )
    steps = math.ceil(len(data["train"]) / settings.batch_size) * settings.epochs
    evaluations = settings.evaluations or max(1, math.ceil(settings.epochs))
    task.update(
        train=data["train"], validation=data["validation"], logging_steps=max(1, int(steps // 20)), lambda_every=max(1, int(steps // 100)),
        eval_every=dict(eval_strategy="steps", eval_steps=max(1, math.ceil(steps / evaluations))),
    )
    return task


def _relative(before: float, after: float) -> float:
    return after / before - 1.0


def _percent(change: float) -> str:
    """A relative change with the digits it needs: +24.1 %, +0.0004 %."""
    value = 100.0 * change
    if value == 0:
        return "0 %"
    digits = 1 if abs(value) >= 1 else 2 if abs(value) >= 0.1 else 4
    return f"{value:+.{digits}f} %"


def comparison(gelu, kgelu) -> tuple[str, str]:
    """The report's opening: one sentence and one table, direct swap against annealed swap."""
    from .checkpoint.report import markdown_table

    metric, lower_is_better = gelu.metric, not gelu.higher_is_better
    target = kgelu.target_lambda
    g, k = gelu.substitution, kgelu.substitution

    def verb(change: float) -> str:
        if lower_is_better and change > 0:
            return f"costs {_percent(change)} {metric}"
        if not lower_is_better and change < 0:
            return f"lowers {metric} by {_percent(-change)[1:]}"
        return f"changes {metric} by {_percent(change)}"

    g_change, k_change = _relative(g["before"], g["after"]), _relative(k["before"], k["after"])
    digits = 3 if lower_is_better else 4
    sentence = (
        f"Swapping GELU for ReLU after training {verb(g_change)} ({g['before']:.{digits}f} → {g['after']:.{digits}f}); "
        f"λ-GELU annealed to λ* = {target:.0f} swaps for {_percent(k_change)} ({k['before']:.{digits}f} → {k['after']:.{digits}f})."
    )
    rows = [
        ("GELU, ReLU swapped in directly", f"{g['before']:.4f}", f"{g['after']:.4f}", _percent(g_change)),
        (f"λ-GELU annealed to λ* = {target:.1f}, then ReLU", f"{k['before']:.4f}", f"{k['after']:.4f}", _percent(k_change)),
    ]
    table = markdown_table(["model", f"held-out {metric} before the swap", "after (ReLU)", "relative change"], rows)
    return sentence, table


def _training_table(results: dict, runs: list[str]) -> str:
    from .checkpoint.report import fmt, markdown_table

    rows = []
    for run in runs:
        r = results[run]
        rows.append((RUN_LABELS[run], fmt(r.final_score), fmt(r.best_score), fmt(r.best_epoch, 2), fmt(r.mean_lambda, 3),
                     fmt(r.drift, 4), f"{r.train_seconds:.0f} s" if r.train_seconds else "–"))
    metric = results[runs[0]].metric
    return markdown_table(["run", f"final {metric}", f"best {metric}", "at epoch", "mean λ learned", "drift D", "training"], rows)


def _command(args) -> str:
    return "hf-kgelu demo " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "demo" else "hf-kgelu demo"


def _report(args, settings, task, results, runs, opening, table, training_table, timing) -> str:
    import torch
    import transformers

    kgelu, gelu = results["kgelu"], results["gelu"]
    metric = gelu.metric
    profile = "\n".join(
        f"| `{site}` | {lam:.4f} | {(kgelu.lambda_final or {}).get(site, float('nan')):.2f} |"
        for site, lam in (kgelu.lambda_learned or {}).items()
    )
    loss_rows = ""
    if gelu.substitution.get("loss_before") is not None:
        g, k = gelu.substitution, kgelu.substitution
        loss_rows = (
            "\nValidation cross-entropy before → after the swap (finer than accuracy, which moves only when a prediction "
            f"flips): GELU {g['loss_before']:.4f} → {g['loss_after']:.4f}, annealed λ-GELU {k['loss_before']:.4f} → "
            f"{k['loss_after']:.4f}.\n"
        )
    if "relu" in results:
        relu_note = (f"\nFor context, a model trained with ReLU from the start reaches {metric} "
                     f"{results['relu'].final_score:.4f} with the same budget and seed.\n")
    else:
        relu_note = "\nA model trained with ReLU from the start, for context, is one more run: `--relu-run`.\n"
    return f"""# hf-kgelu demo: {'GPT-2 on the Python docs' if settings.task == 'pydocs' else 'DeiT on sklearn digits'}

{opening}

{table}

"Before" is the trained model as it is; "after" is the same weights with every activation replaced by
ReLU, on the same held-out {task['unit']}. The GELU model is swapped directly; the λ-GELU model learned one
hardness λ per layer for the first {settings.anneal_start:.0%} of its steps, then annealed every λ linearly to
λ* = {kgelu.target_lambda:.1f} (gate-L1 tolerance ε = 0.005: ‖Φ(λ*·) − step‖₁ = 0.005), where λ-GELU and ReLU
nearly coincide, so its swap changes almost nothing. The ReLU-ized λ-GELU model, loadable with stock transformers,
is in `relu_model/` with its {'tokenizer' if settings.task == 'pydocs' else 'image processor'} and model card.
{loss_rows}{relu_note}
## Training

{training_table}

Final and best {metric} are on the held-out {task['unit']}, with each run's own activation (before any swap).
Mean λ learned is the mean over the {len(kgelu.lambda_learned or {})} λ-GELU sites of λ at the anneal switch; drift D is
the mean |Δλ| per site between consecutive epoch ends of the learning phase (– when it holds fewer than two).

| site | λ learned (at the anneal switch) | λ at the end (= λ*) |
|---|---:|---:|
{profile}

![λ of each λ-GELU site over the optimizer steps of the λ-GELU run, log scale: learned until the anneal start (dashed line), then raised linearly to λ* (dotted line); the left panel shows the learned phase alone](hardness.png)

## Settings

{task['headline']}, seed {args.seed}: {settings.describe()}.
Every run starts from the same seed (same initial weights and data order). λ-GELU: τ = 0.1, θ at
learning rate × 10 without weight decay, initial λ = 1.05.

Command: `{_command(args)}` — {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')},
{platform.machine()} with {torch.get_num_threads()} torch thread(s), torch {torch.__version__},
transformers {transformers.__version__}. Time: {timing['wall_seconds']:.0f} s wall, {timing['cpu_seconds']:.0f} s CPU
(this process, from the data preparation to the saved ReLU model; Python and library start-up not included).
"""
