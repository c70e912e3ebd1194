"""The `hf-kgelu` command. Each subcommand lives in the module that owns its concept and is
added here with one `_add_<name>` function; `main` only parses and dispatches."""

from __future__ import annotations

import argparse
import sys


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
    from hf_kgelu.plotting import plot_hardness

    try:
        print(plot_hardness(args.run_dir, args.output))
    except (FileNotFoundError, ValueError) as error:
        print(f"hf-kgelu plot: error: {error}", file=sys.stderr)
        return 1
    return 0


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
    parser.add_argument("--eval-data", help="datasets.save_to_disk folder (model-input columns + labels), or a text file (language models)")
    parser.add_argument("--eval-split", help="split of a DatasetDict folder (default: validation, test, eval or train)")
    parser.add_argument("--task", choices=("classification", "causal_lm", "masked_lm"), help="metric to report (default: from the model)")
    parser.add_argument("--block-size", type=int, default=128, help="tokens per block when --eval-data is a text file (default 128)")
    parser.add_argument("--max-eval-blocks", type=int, help="evaluate at most this many text blocks")
    parser.add_argument("--batch-size", type=int, default=32, help="evaluation batch size (default 32)")
    parser.add_argument("--gelu-baseline", help="GELU checkpoint to evaluate before/after its direct swap (the paper's Table II row)")
    parser.add_argument("--base-model", help="Hub id of the model this one was fine-tuned from (card metadata)")
    parser.add_argument("--dataset", action="append", help="Hub id of a training/eval dataset (card metadata; repeatable)")
    parser.add_argument("--license", help="license identifier for the card (e.g. apache-2.0)")
    parser.add_argument("--plot", help="PNG of the per-layer λ profile to include and link from the card")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the written folder to this Hub repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token with write access (default: HF_TOKEN, then `hf auth login`)")
    parser.set_defaults(func=_run_relu_ize)


def _run_relu_ize(args) -> int:
    import os

    from .hub import HubPushError, relu_ize_checkpoint

    try:
        result = relu_ize_checkpoint(
            args.checkpoint, args.output_dir, overwrite=args.overwrite, include_gelu=args.include_gelu,
            eval_data=args.eval_data, eval_split=args.eval_split, task=args.task, block_size=args.block_size,
            max_eval_blocks=args.max_eval_blocks, batch_size=args.batch_size, gelu_baseline=args.gelu_baseline,
            base_model=args.base_model, datasets=args.dataset, license=args.license, plot_file=args.plot,
            push_to_hub=args.push_to_hub, private=args.private, token=args.token or os.environ.get("HF_TOKEN"),
            endpoint=os.environ.get("HF_ENDPOINT"), log=print,
        )
    except HubPushError as error:
        print(f"hf-kgelu relu-ize: {error}", file=sys.stderr)
        return 1
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as error:
        print(f"hf-kgelu relu-ize: error: {error}", file=sys.stderr)
        return 2
    print(f"ReLU model written to {result.folder}" + (f" and pushed to {result.url}" if result.url else ""))
    return 0


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo", help="train a small DeiT on sklearn digits with GELU, ReLU and annealed λ-GELU; ReLU-ize; report (CPU, minutes)"
    )
    from .demo import add_demo_arguments  # argparse only: the heavy imports wait for run_demo

    add_demo_arguments(parser)
    parser.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def _add_convert(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="turn a pretrained GELU checkpoint into a ReLU model on a small fine-tuning budget",
        description="Load CHECKPOINT (GELU), swap every GELU for ReLU and re-fit the linear layer reading each one so it "
        "reproduces the GELU layer's output on a few --data batches (least squares, no training), then fine-tune for "
        "--budget optimizer steps (the benchmark's best recipe, see docs/results.md), and write a stock-transformers ReLU model with its card to --output-dir.",
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
    parser.add_argument("--method", default="readout_finetune",
                        choices=("readout_finetune", "readout", "anneal", "swap_finetune", "swap"),
                        help="readout_finetune (default): readout fit then fine-tune; readout: the fit alone (no training); "
                             "anneal: λ-GELU annealing fine-tune then relu_ize; swap_finetune: swap then fine-tune; swap: neither")
    parser.add_argument("--calibration-batches", type=int, default=8, help="batches of --data for the readout fit (default 8)")
    parser.add_argument("--distill", action="store_true",
                        help="add distillation from the original model to the task loss (always on for encoders without a "
                             "task head, whose only signal it is)")
    parser.add_argument("--learning-rate", type=float, default=2e-4, help="peak learning rate, linear decay (default 2e-4)")
    parser.add_argument("--batch-size", type=int, default=16, help="training batch size (default 16)")
    parser.add_argument("--anneal-start", type=float, default=0.0, help="--method anneal: fraction of the budget before λ moves (default 0)")
    parser.add_argument("--anneal-shape", default="geometric", choices=("geometric", "linear"), help="--method anneal: λ schedule")
    parser.add_argument("--bound", default="gate_l1", help="gate_l1 (λ* ≈ 160 at ε = 0.005), act_sup, act_l1, or data (per-site targets)")
    parser.add_argument("--tolerance", type=float, default=0.005, help="ε of --bound (default 0.005)")
    parser.add_argument("--block-size", type=int, default=128, help="tokens per block (text data; default 128)")
    parser.add_argument("--split", help="split of a DatasetDict --data folder (default train)")
    parser.add_argument("--task", choices=("classification", "causal_lm", "masked_lm", "embedding"), help="default: from the model")
    parser.add_argument("--eval-data", help="evaluate GELU vs ReLU on this folder / text file and put the numbers in the card "
                        "(encoders: mean cosine of sentence embeddings, one sentence per line)")
    parser.add_argument("--eval-split", help="split of a DatasetDict --eval-data folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from .convert import run_convert

    return run_convert(args)


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
    parser.add_argument("--block-size", type=int, default=128, help="tokens per block for text data (default 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batches", type=int, default=16, help="analyse at most this many batches (default 16)")
    parser.add_argument("--near-zero", type=float, default=1e-3, help="near-zero threshold relative to the layer's mean |f| (default 1e-3)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    parser.add_argument("--onnx", metavar="FILE", help="also export MODEL to this ONNX file (needs onnx, onnxruntime), list the "
                        "nonlinear operators of its graph and compare onnxruntime with PyTorch on a batch of --data")
    parser.set_defaults(func=_run_analyze)


def _run_analyze(args) -> int:
    from .analysis import run_analyze

    return run_analyze(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-kgelu", description="λ-GELU for Hugging Face models: train, anneal, ReLU-ize, publish.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_info(subparsers)
    _add_relu_ize(subparsers)
    _add_plot(subparsers)
    _add_demo(subparsers)
    _add_convert(subparsers)
    _add_analyze(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
