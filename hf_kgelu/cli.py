"""The `hf-kgelu` command: the only code that sees argparse. Each subcommand turns its options into
one library call (`hf_kgelu.checkpoint` verbs, the demo, the analysis). Every error is one line on
stderr and exit status 2 (a failed upload: status 1, with the command to retry); `--debug` shows
the traceback instead."""

from __future__ import annotations

import argparse
import math
import os
import sys

TASKS = ("classification", "causal_lm", "masked_lm")
# --metric of relu-ize and of the scripts (hf_kgelu.metrics.load_metric reads it)
METRIC_HELP = (
    "metric to report: accuracy or perplexity (exact, built in), the name of a Hugging Face `evaluate` metric "
    "(from evaluate's cache, else the Hub unless HF_HUB_OFFLINE=1; 'accuracy' falls back to the built-in one "
    "with a one-line note), or a path to a local evaluate metric script or its folder (default: accuracy for "
    "classification, perplexity for language models)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str, kind: type, ok, allowed: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "at least 1")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


# ---- info, plot


def _add_info(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show the installed versions and the registered activation")
    parser.set_defaults(func=_run_info)


def _run_info(args) -> int:
    import torch
    import transformers
    from transformers.activations import ACT2FN

    import hf_kgelu

    print(f"hf-kgelu {hf_kgelu.__version__}, transformers {transformers.__version__}, torch {torch.__version__}")
    print(f'"kgelu" registered: {"kgelu" in ACT2FN}')
    return 0


def _add_plot(subparsers) -> None:
    parser = subparsers.add_parser("plot", help="plot λ per site over training steps from a run's hardness_history.json")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a KGeluTrainer output_dir or checkpoint folder, or the JSON file")
    parser.add_argument("-o", "--output", default=None, help="PNG to write (default: RUN_DIR/hardness.png)")
    parser.set_defaults(func=_run_plot)


def _run_plot(args) -> int:
    from .plotting import plot_hardness

    print(plot_hardness(args.run_dir, args.output))
    return 0


# ---- relu-ize


def _add_eval_options(parser, what: str) -> None:
    parser.add_argument("--eval-data", help=f"{what}: a datasets.save_to_disk folder (model-input columns + labels), or a "
                        "text file (language models: token blocks; sentence encoders: one sentence per line)")
    parser.add_argument("--eval-split", help="split of a DatasetDict --eval-data folder (default: validation, test, eval or train)")
    parser.add_argument("--block-size", type=positive_int, default=128, help="tokens per block for text data (default 128)")
    parser.add_argument("--max-eval-blocks", type=positive_int, help="evaluate at most this many text blocks")


def _add_hub_options(parser) -> None:
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the written folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN, then `hf auth login`)")


def _add_card_options(parser) -> None:
    parser.add_argument("--base-model", help="Hub id of the model this one was fine-tuned from (card metadata)")
    parser.add_argument("--dataset", action="append", help="Hub id of a training/eval dataset (card metadata; repeatable)")
    parser.add_argument("--license", help="license identifier for the card (e.g. apache-2.0)")


def _hub(args):
    from .checkpoint import HubTarget

    if not args.push_to_hub:
        return None
    return HubTarget(args.push_to_hub, private=args.private, token=args.token or os.environ.get("HF_TOKEN"),
                     endpoint=os.environ.get("HF_ENDPOINT"))


def _card(args):
    from .publishing import CardDetails

    return CardDetails(base_model=args.base_model, datasets=args.dataset or (), license=args.license)


def _eval_data(args):
    from .data import LocalData

    if not args.eval_data:
        return None
    return LocalData(args.eval_data, split=args.eval_split, block_size=args.block_size, max_blocks=args.max_eval_blocks)


def _add_relu_ize(subparsers) -> None:
    parser = subparsers.add_parser(
        "relu-ize",
        help="swap every λ-GELU of a checkpoint for ReLU and write (and push) a stock-transformers model with its card",
        description="Load CHECKPOINT, replace every λ-GELU by ReLU, evaluate before/after (--eval-data), write a "
        "complete model folder with its card to --output-dir, and optionally push it to the Hub.",
    )
    parser.add_argument("checkpoint", help="λ-GELU checkpoint folder (or Hub id) with config.json and safetensors weights")
    parser.add_argument("--output-dir", required=True, help="folder for the ReLU model (must be empty or new, see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir (only once the new folder is complete)")
    parser.add_argument("--include-gelu", action="store_true", help="also swap plain GELU activations (the direct-swap baseline)")
    _add_eval_options(parser, "evaluate before/after the swap on this")
    parser.add_argument("--task", choices=TASKS, help="metric to report (default: from the model)")
    parser.add_argument("--metric", help=METRIC_HELP)
    parser.add_argument("--batch-size", type=positive_int, default=32, help="evaluation batch size (default 32)")
    parser.add_argument("--gelu-baseline", help="GELU checkpoint to evaluate before/after its direct swap (the paper's Table II row)")
    _add_card_options(parser)
    parser.add_argument("--plot", help="PNG of λ over training to include and link from the card (default: the run's)")
    _add_hub_options(parser)
    parser.set_defaults(func=_run_relu_ize)


def _run_relu_ize(args) -> int:
    from .checkpoint import relu_ize_checkpoint

    published = relu_ize_checkpoint(
        args.checkpoint, args.output_dir, evaluation=_eval_data(args), gelu_baseline=args.gelu_baseline,
        include_gelu=args.include_gelu, task=args.task, batch_size=args.batch_size, details=_card(args),
        plot_file=args.plot, hub=_hub(args), overwrite=args.overwrite, log=print, metric=args.metric,
    )
    print(f"ReLU model written to {published.folder}" + (f" and pushed to {published.url}" if published.url else ""))
    return 0


# ---- convert


def _add_convert(subparsers) -> None:
    from .conversion import METHODS

    parser = subparsers.add_parser(
        "convert",
        help="turn a pretrained GELU checkpoint into a ReLU model on a small fine-tuning budget",
        description="Load CHECKPOINT (GELU), swap every GELU for ReLU and re-fit the linear layer reading each one so it "
        "reproduces the GELU layer's output on a few --data batches (least squares, no training), then fine-tune for "
        "--budget optimizer steps (the benchmark's best recipe, see docs/results.md), and write a stock-transformers "
        "ReLU model with its card to --output-dir.",
    )
    parser.add_argument("checkpoint", help="GELU checkpoint folder (config.json + safetensors weights)")
    parser.add_argument("--budget", required=True,
                        help="optimizer steps (200), or a share of the checkpoint's own training steps from its "
                             "trainer_state.json (0.03 or 3%%)")
    parser.add_argument("--data", required=True,
                        help="training data: a datasets.save_to_disk folder (model-input columns + labels), or a text file "
                             "(language models: token blocks; encoders: one sentence per line)")
    parser.add_argument("--output-dir", required=True, help="folder for the ReLU model (must be empty or new, see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output-dir")
    parser.add_argument("--method", default="readout_finetune", choices=METHODS,
                        help="readout_finetune (default): readout fit then fine-tune; readout: the fit alone (no training); "
                             "anneal: λ-GELU annealing fine-tune then relu_ize; swap_finetune: swap then fine-tune; swap: neither")
    parser.add_argument("--calibration-batches", type=positive_int, default=None,
                        help="batches of --data for the readout fit (default: chosen from the data, enough for 8 rows per "
                             "unknown of each readout's least-squares fit, or all of --data if it has fewer)")
    parser.add_argument("--distill", action="store_true",
                        help="add distillation from the original model to the task loss (always on for encoders without a "
                             "task head, whose only signal it is)")
    parser.add_argument("--learning-rate", type=positive_float, default=None,
                        help="peak learning rate, linear decay (default: chosen from the checkpoint: 0.3 × the peak rate its "
                             "training_args.bin or trainer_state.json records, else 2e-5, the rate pretrained models are fine-tuned at)")
    parser.add_argument("--held-out", type=positive_float, default=0.1, metavar="FRACTION",
                        help="without --eval-data: the share of --data (at most 512 rows) held out to check the fine-tuned model "
                             "against the readout fit alone, keeping the better (default 0.1)")
    parser.add_argument("--no-keep-better", action="store_true",
                        help="return the fine-tuned model unchecked, trained on all of --data")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="training batch size (default 16)")
    parser.add_argument("--anneal-start", type=fraction, default=0.0, help="--method anneal: fraction of the budget before λ moves (default 0)")
    parser.add_argument("--anneal-shape", default="geometric", choices=("geometric", "linear"), help="--method anneal: λ schedule")
    parser.add_argument("--bound", default="gate_l1", choices=("gate_l1", "act_sup", "act_l1", "data"),
                        help="gate_l1 (λ* ≈ 160 at ε = 0.005), act_sup, act_l1, or data (per-site targets)")
    parser.add_argument("--tolerance", type=positive_float, default=0.005, help="ε of --bound (default 0.005)")
    parser.add_argument("--block-size", type=positive_int, default=128, help="tokens per block (text data; default 128)")
    parser.add_argument("--split", help="split of a DatasetDict --data folder (default train)")
    parser.add_argument("--task", choices=(*TASKS, "embedding"), help="default: from the model")
    parser.add_argument("--eval-data", help="evaluate GELU vs ReLU on this folder / text file and put the numbers in the card "
                        "(encoders: mean cosine of sentence embeddings, one sentence per line); also the held-out data on "
                        "which the fine-tuned model is checked against the readout fit alone")
    parser.add_argument("--eval-split", help="split of a DatasetDict --eval-data folder")
    parser.add_argument("--seed", type=int, default=0)
    _add_card_options(parser)
    _add_hub_options(parser)
    parser.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from .checkpoint import convert_checkpoint
    from .conversion import ConversionConfig, steps_from_budget
    from .data import LocalData

    config = ConversionConfig(
        method=args.method, steps=steps_from_budget(args.budget, args.checkpoint), learning_rate=args.learning_rate,
        batch_size=args.batch_size, seed=args.seed, calibration_batches=args.calibration_batches,
        distill=True if args.distill else None, anneal_start=args.anneal_start, anneal_shape=args.anneal_shape,
        bound=args.bound, tolerance=args.tolerance, task=args.task, keep_better=not args.no_keep_better,
        held_out_fraction=args.held_out,
    )
    evaluation = LocalData(args.eval_data, split=args.eval_split, block_size=args.block_size) if args.eval_data else None
    published = convert_checkpoint(
        args.checkpoint, args.output_dir, data=LocalData(args.data, split=args.split or "train", block_size=args.block_size),
        config=config, evaluation=evaluation, details=_card(args), hub=_hub(args), overwrite=args.overwrite, log=print,
    )
    print(f"ReLU model written to {published.folder}" + (f" and pushed to {published.url}" if published.url else ""))
    return 0


# ---- demo


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="what annealed λ-GELU buys: GELU swapped for ReLU after training vs λ-GELU annealed then swapped "
                     "(GPT-2 on the Python docs, CPU, minutes); a report, a plot and a ReLU model with its card",
        description="Options left out take the task's preset (hf_kgelu.presets.DEMO_PRESETS).",
    )
    parser.add_argument("--task", choices=("pydocs", "digits"), default="pydocs",
                        help="pydocs (default): GPT-2 on the stdlib's Python docs, scored by held-out perplexity; "
                             "digits: a small DeiT on sklearn digits, scored by accuracy (the direct swap costs little there)")
    parser.add_argument("--output-dir", default="outputs/demo", help="where the report, plot and ReLU model go (default: outputs/demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the data order (default 0)")
    parser.add_argument("--epochs", type=positive_float, help="training epochs of each run (default: the task's; pydocs 5, digits 20)")
    parser.add_argument("--anneal-start", type=fraction,
                        help="fraction of the λ-GELU run that learns λ before annealing it to λ* (default: the task's)")
    parser.add_argument("--learning-rate", type=positive_float, help="peak learning rate of the weights (default: the task's)")
    parser.add_argument("--batch-size", type=positive_int, help="training batch size (default: the task's)")
    parser.add_argument("--layers", type=positive_int, help="transformer layers (default: the task's)")
    parser.add_argument("--width", type=positive_int, help="hidden size (default: the task's)")
    parser.add_argument("--block-size", type=positive_int, help="pydocs: tokens per block (default: the task's)")
    parser.add_argument("--vocab-size", type=positive_int, help="pydocs: tokens kept of GPT-2's BPE (default: the task's)")
    parser.add_argument("--train-limit", type=positive_int, help="use only the first N training examples: a quicker, weaker demo")
    parser.add_argument("--eval-limit", type=positive_int, help="evaluate on only the first N held-out examples (tests)")
    parser.add_argument("--relu-run", action=argparse.BooleanOptionalAction, default=None,
                        help="also train a ReLU model from scratch, for context (default: pydocs no, digits yes)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="CPU threads for torch (default 1: these tiny models gain little from more, and on a busy "
                             "2-core machine two OpenMP threads were measured 100× slower than one)")
    parser.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines")
    parser.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import OVERRIDES, DemoOptions, run_demo

    overrides = {name: getattr(args, name) for name in OVERRIDES if getattr(args, name) is not None}
    return run_demo(DemoOptions(task=args.task, output_dir=args.output_dir, seed=args.seed, train_limit=args.train_limit,
                                eval_limit=args.eval_limit, threads=args.threads, quiet=args.quiet, overrides=overrides))


# ---- analyze


def _add_analyze(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="activation sparsity per layer on real data: exact zeros and APoZ (ReLU) vs near-zeros (GELU)",
        description="Run MODEL (and --compare GELU_MODEL) over --data and print, per MLP activation, the fraction of "
        "exact zeros, APoZ over channels (Network Trimming), dead channels, and the fraction of near-zeros "
        "(|f| < NEAR_ZERO × the layer's mean |f|).",
    )
    parser.add_argument("model", metavar="MODEL", help="checkpoint folder (typically the ReLU model)")
    parser.add_argument("--data", required=True, help="a datasets.save_to_disk folder, or a text file (cut into token blocks)")
    parser.add_argument("--compare", metavar="GELU_MODEL", help="a second checkpoint (typically the GELU original) for side-by-side columns")
    parser.add_argument("--split", help="split of a DatasetDict --data folder")
    parser.add_argument("--block-size", type=positive_int, default=128, help="tokens per block for text data (default 128)")
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--max-batches", type=positive_int, default=16, help="analyse at most this many batches (default 16)")
    parser.add_argument("--near-zero", type=positive_float, default=1e-3,
                        help="near-zero threshold relative to the layer's mean |f| (default 1e-3)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--onnx", metavar="FILE", help="also export MODEL to this ONNX file (needs onnx, onnxruntime), list the "
                        "nonlinear operators of its graph and compare onnxruntime with PyTorch on a batch of --data")
    parser.set_defaults(func=_run_analyze)


def _run_analyze(args) -> int:
    import json
    from pathlib import Path

    from .analysis import DEAD_APOZ, analyze_checkpoints, sparsity_table
    from .data import LocalData

    try:
        reports, onnx_lines = analyze_checkpoints(
            [args.model, *([args.compare] if args.compare else [])], LocalData(args.data, split=args.split, block_size=args.block_size),
            batch_size=args.batch_size, max_batches=args.max_batches, near_zero=args.near_zero, onnx_path=args.onnx,
        )
    except ImportError as error:
        raise ValueError(f"--onnx needs the onnx extra (pip install onnx onnxruntime): {error}") from None
    print(sparsity_table(reports))
    print(f"\nexact zeros: outputs == 0; APoZ: per-channel fraction of zeros (Network Trimming), mean and max over channels; "
          f"dead: channels with APoZ ≥ {DEAD_APOZ}; near zero: |f| < {args.near_zero:g} × the layer's mean |f| on this data.")
    for line in onnx_lines:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in reports], indent=1) + "\n", encoding="utf-8")
        print(f"written: {args.json}")
    return 0


# ---- main


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hf-kgelu", description="λ-GELU for Hugging Face models: train, anneal, ReLU-ize, publish.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_info, _add_relu_ize, _add_plot, _add_demo, _add_convert, _add_analyze):
        add(subparsers)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])
    return " ".join(text.split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    from .publishing.push import HubPushError

    args = build_parser().parse_args(argv)
    prog = f"hf-kgelu {args.command}"
    try:
        return args.func(args)
    except HubPushError as error:  # the folder is complete: say how to retry (several lines on purpose)
        if args.debug:
            raise
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, KeyError, OSError, RuntimeError) as error:
        if args.debug:
            raise
        print(f"{prog}: error: {_one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
