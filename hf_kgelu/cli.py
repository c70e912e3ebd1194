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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf-kgelu", description="λ-GELU for Hugging Face models: train, anneal, ReLU-ize, publish.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_info(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
