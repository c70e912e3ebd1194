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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-kgelu", description="λ-GELU for Hugging Face models: train, anneal, ReLU-ize, publish.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_info(subparsers)
    _add_plot(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
