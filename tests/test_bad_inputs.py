"""Every bad input tried against hf-kgelu, and the message its user gets (issue 19).

`CASES` is the catalogue: the area, the input in words, how to produce it (an `hf-kgelu` command
line, or a Python call) and the words its message must hold. For every case the user gets one
message on one line holding those words: a command-line error is one `hf-kgelu CMD: error: …` line
on stderr with exit status 2 and no traceback; a Python error is one exception; a case that
`warns` runs to its end and logs exactly one warning. `python tests/test_bad_inputs.py` runs the
catalogue and writes it with each message to benchmarks/results/bad_inputs.csv (area, input,
message), from which docs/results.md is rendered.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # (the CSV command runs outside pytest's conftest)
TESTS_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS_DIR)] if str(TESTS_DIR) not in sys.path else []

from tiny_models import tiny_config, tiny_model
from trainer_helpers import make_args, text_blocks, tiny_gpt2

import hf_kgelu

CSV_PATH = TESTS_DIR.parent / "benchmarks" / "results" / "bad_inputs.csv"
PROGRESS = re.compile(r"\d+%\|")  # transformers' loading/saving progress bars share stderr


class Workspace:
    """The files the cases point at, each made on first use under one temporary folder."""

    def __init__(self, root: Path):
        self.root = root
        self._fresh = 0

    def __getitem__(self, name: str) -> str:  # for str.format_map: "{kgelu}" → the folder
        return str(getattr(self, name))

    @property
    def out(self) -> Path:
        """A new output folder for each case."""
        self._fresh += 1
        return self.root / f"out-{self._fresh}"

    def _save(self, name: str, model, tokenizer=None) -> Path:
        model.save_pretrained(self.root / name)
        if tokenizer is not None:
            tokenizer.save_pretrained(self.root / name)
        return self.root / name

    @functools.cached_property
    def kgelu(self) -> Path:  # λ-GELU GPT-2 at λ = 1.05, no tokenizer
        return self._save("kgelu", tiny_model("gpt2"))

    @functools.cached_property
    def kgelu_tok(self) -> Path:  # with the GPT-2 tokenizer (and its full vocabulary)
        from transformers import GPT2Config, GPT2LMHeadModel

        from hf_kgelu.data import gpt2_tokenizer

        config = GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=16, activation_function="kgelu")
        return self._save("kgelu_tok", GPT2LMHeadModel(config), gpt2_tokenizer(self.root / "bpe"))

    @functools.cached_property
    def gelu(self) -> Path:
        return self._save("gelu", tiny_model("gpt2", activation="gelu"))

    @functools.cached_property
    def vit(self) -> Path:
        return self._save("vit", tiny_model("vit"))

    def edited(self, name: str, change: Callable[[Path], None], source: str = "kgelu") -> Path:
        """A copy of a checkpoint with `change(folder)` applied."""
        folder = self.root / name
        if not folder.exists():
            shutil.copytree(getattr(self, source), folder)
            change(folder)
        return folder

    def config_edit(self, key: str, value) -> Path:
        """The λ-GELU checkpoint with `key: value` written into its config.json (NaN and inf as JSON's NaN, Infinity)."""

        def change(folder):
            config = json.loads((folder / "config.json").read_text())
            (folder / "config.json").write_text(json.dumps({**config, key: value}))

        return self.edited(re.sub(r"\W", "_", f"config-{key}-{value!r}"), change)

    def file(self, name: str, text: str) -> Path:
        (self.root / name).parent.mkdir(parents=True, exist_ok=True)
        (self.root / name).write_text(text)
        return self.root / name

    @property
    def missing(self) -> Path:
        return self.root / "does-not-exist"

    @functools.cached_property
    def folder(self) -> Path:  # an empty folder: no config.json
        (self.root / "empty-folder").mkdir()
        return self.root / "empty-folder"

    @functools.cached_property
    def non_empty(self) -> Path:
        return self.file("non-empty/keep.txt", "precious").parent

    @functools.cached_property
    def text(self) -> Path:
        return self.file("text.txt", "The quick brown fox jumps over the lazy dog. " * 40)

    @functools.cached_property
    def short_text(self) -> Path:
        return self.file("short.txt", "Too short.")

    @functools.cached_property
    def plain_file(self) -> Path:
        return self.file("notes.txt", "not a checkpoint")

    @functools.cached_property
    def not_dataset(self) -> Path:
        return self.file("not-dataset/rows.csv", "a,b\n1,2\n").parent

    @functools.cached_property
    def dataset_without_inputs(self) -> Path:
        from datasets import Dataset

        Dataset.from_dict({"text": ["a", "b"], "labels": [0, 1]}).save_to_disk(self.root / "no-inputs")
        return self.root / "no-inputs"

    @functools.cached_property
    def dataset_dict(self) -> Path:
        from datasets import Dataset, DatasetDict

        rows = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 4, "labels": [[1, 2, 3, 4]] * 4})
        DatasetDict({"holdout": rows}).save_to_disk(self.root / "dataset-dict")
        return self.root / "dataset-dict"

    @functools.cached_property
    def run(self) -> Path:
        """A KGeluTrainer run (8 steps, switch at step 2) with checkpoint-4 and checkpoint-8."""
        from hf_kgelu.training import KGeluTrainer

        args = make_args(self.root / "run", max_steps=8, kgelu_anneal_start=0.25, save_strategy="steps", save_steps=4)
        with contextlib.redirect_stdout(io.StringIO()):
            KGeluTrainer(model=tiny_gpt2(), args=args, train_dataset=text_blocks()["train"]).train()
        return self.root / "run"

    def damaged_run(self, name: str, damage: Callable[[Path], None]) -> Path:
        """A copy of the run holding only checkpoint-4, damaged by `damage(checkpoint_folder)`."""
        folder = self.root / name
        shutil.copytree(self.run, folder)
        shutil.rmtree(folder / "checkpoint-8")
        damage(folder / "checkpoint-4")
        return folder


def resume(run: Path, checkpoint: str | bool = "checkpoint-4", **overrides) -> None:
    """Resume the workspace run's training from `run/checkpoint`; the run must end with its last checkpoint saved."""
    from hf_kgelu.training import KGeluTrainer

    args = make_args(run, max_steps=8, kgelu_anneal_start=0.25, save_strategy="steps", save_steps=4, **overrides)
    trainer = KGeluTrainer(model=tiny_gpt2(), args=args, train_dataset=text_blocks()["train"])
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train(resume_from_checkpoint=str(run / checkpoint) if isinstance(checkpoint, str) else checkpoint)
    state = json.loads((run / "checkpoint-8" / "trainer_state.json").read_text())
    assert "KGeluHardnessCallback" in state["stateful_callbacks"], "the hardness state was not saved"


@dataclass(frozen=True)
class Case:
    area: str
    input: str  # what the user did, in words
    words: tuple[str, ...]  # the message must hold each of them
    argv: str | None = None  # an hf-kgelu command line; {name} is a Workspace path
    call: Callable[[Workspace], object] | None = None  # a Python call that raises, warns, or returns the message
    kind: str = "error"  # "error", "warns" (runs to its end, one warning) or "says" (call returns the message)
    error: type[BaseException] = Exception


def cli(area, what, argv, *words):
    return Case(area, what, words, argv=argv)


def error(area, what, call, *words, raises=Exception):
    return Case(area, what, words, call=call, error=raises)


def warns(area, what, call, *words):
    return Case(area, what, words, call=call, kind="warns")


def _build(**config):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel(tiny_config("gpt2", **config))


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def _site(lam=1.05):
    return hf_kgelu.KGELU(lambda_init=lam)


def _nan_theta(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    weights["transformer.h.1.mlp.act.theta"].fill_(math.nan)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def _without_import(ws: Workspace) -> str:
    """What `from_pretrained` says in a process that never imported hf_kgelu, and what config.json tells the reader."""
    code = textwrap.dedent(f"""
        import sys
        sys.modules["hf_kgelu"] = None  # not installed
        from transformers import AutoModelForCausalLM
        AutoModelForCausalLM.from_pretrained({str(ws.kgelu)!r})
    """)
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    requires = json.loads((ws.kgelu / "config.json").read_text())["kgelu_requires"]
    return f"{last} (config.json: kgelu_requires = {requires})"


def _drop_hardness_state(checkpoint: Path) -> None:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state["stateful_callbacks"]["KGeluHardnessCallback"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


def _cut(name: str, keep: int):
    def damage(checkpoint: Path) -> None:
        path = checkpoint / name
        path.write_bytes(path.read_bytes()[:keep])

    return damage


def _write(name: str, text: str):
    return lambda checkpoint: (checkpoint / name).write_text(text)


def _leftover(ws: Workspace, kind: str, name: str = "published") -> Path:
    """An output folder beside which a killed save left `.NAME.<kind>-*` (for kind "old", the folder itself is gone)."""
    out = ws.root / f"{name}-{kind}"
    shutil.copytree(ws.kgelu, out.parent / f".{out.name}.{kind}-x1" / (out.name if kind == "old" else ""))
    if kind == "tmp":
        shutil.copytree(ws.kgelu, out)
    return out


def _republish(ws: Workspace, out: Path) -> None:
    from hf_kgelu.publishing import write_model_folder

    model = tiny_model("gpt2", activation="relu")
    write_model_folder(model, out, card="card", overwrite=True)


CONFIG_VALUES = [  # (attribute, bad value, words of the message)
    ("kgelu_tau", 0, ("config.kgelu_tau", "got 0", "> 0", "default 0.1")),
    ("kgelu_tau", -1, ("config.kgelu_tau", "got -1", "> 0")),
    ("kgelu_tau", math.nan, ("config.kgelu_tau", "got nan", "finite")),
    ("kgelu_tau", math.inf, ("config.kgelu_tau", "got inf", "finite")),
    ("kgelu_tau", "0.1", ("config.kgelu_tau", "got '0.1'", "number")),
    ("kgelu_tau", True, ("config.kgelu_tau", "got True")),
    ("kgelu_per_channel", "false", ("config.kgelu_per_channel", "got 'false'", "true or false")),
    ("kgelu_per_channel", 1, ("config.kgelu_per_channel", "got 1", "boolean")),
    ("kgelu_init", "linear", ("config.kgelu_init", "'linear'", "'increasing'")),
    ("kgelu_lambda_init", 0.5, ("config.kgelu_lambda_init", "got 0.5", "≥ 1")),
    ("kgelu_lambda_init", math.nan, ("config.kgelu_lambda_init", "got nan", "finite")),
    ("kgelu_lambda_range", [2, 1], ("config.kgelu_lambda_range", "[2, 1]", "low ≤ high")),
    ("kgelu_lambda_range", [1.05], ("config.kgelu_lambda_range", "[1.05]", "[low, high]")),
    ("kgelu_lambda_range", "1,2", ("config.kgelu_lambda_range", "'1,2'", "[low, high]")),
    ("kgelu_tua", 0.1, ("config.kgelu_tua", "not a kgelu setting", "kgelu_tau")),
]


RELU_IZE_OPTIONS = [  # (option, bad value, words of the message besides the option's name)
    ("--block-size", "0", "at least 1"),
    ("--block-size", "-3", "got -3"),
    ("--block-size", "abc", "not a whole number"),
    ("--batch-size", "0", "at least 1"),
    ("--batch-size", "-1", "got -1"),
    ("--batch-size", "1.5", "not a whole number"),
    ("--max-eval-blocks", "0", "at least 1"),
    ("--task", "regression", "causal_lm"),
]
CONVERT_OPTIONS = [
    ("--learning-rate", "0", "> 0"),
    ("--tolerance", "-1", "> 0"),
    ("--anneal-start", "1.5", "[0, 1)"),
    ("--method", "foo", "readout_finetune"),
    ("--calibration-batches", "0", "at least 1"),
    ("--seed", "x", "'x'"),
    ("--block-size", "0", "at least 1"),
    ("--batch-size", "-2", "got -2"),
]


def _data(path, **settings):
    from hf_kgelu.data import LocalData

    return LocalData(path, **settings)


def _publish(model, output_dir):
    from hf_kgelu.checkpoint import publish

    return publish(model, None, output_dir)


def _trainer(ws: Workspace, model=None, args=None):
    from transformers import TrainingArguments

    from hf_kgelu.training import KGeluTrainer

    args = args if args is not None else TrainingArguments(output_dir=str(ws.out), report_to="none", use_cpu=True)
    return KGeluTrainer(model=model if model is not None else tiny_gpt2(), args=args)


CASES: list[Case] = [
    # ---- config attributes: at build (Python) and at load (a checkpoint's config.json)
    *[error("config (build)", f"GPT2Config(activation_function='kgelu', {key}={value!r}) → GPT2LMHeadModel(config)",
            lambda ws, key=key, value=value: _build(**{key: value}), *words, raises=ValueError)
      for key, value, words in CONFIG_VALUES],
    *[error("config (load)", f'"{key}": {json.dumps(value)} in a checkpoint\'s config.json → from_pretrained',
            lambda ws, key=key, value=value: _load(ws.config_edit(key, value)), *words, raises=ValueError)
      for key, value, words in CONFIG_VALUES[:8]],
    cli("config (load)", '"kgelu_tau": NaN in config.json → hf-kgelu relu-ize', "relu-ize {tau_nan} --output-dir {out}",
        "config.kgelu_tau", "nan", "config.json"),
    error("config (build)", "kgelu_config(gelu_checkpoint, per_channel='false')",
          lambda ws: hf_kgelu.kgelu_config(str(ws.gelu), per_channel="false"), "config.kgelu_per_channel", "'false'"),
    error("config (build)", "kgelu_config(gelu_checkpoint, tau=0)", lambda ws: hf_kgelu.kgelu_config(str(ws.gelu), tau=0),
          "tau", "> 0", raises=ValueError),
    error("config (build)", "kgelu_config(gelu_checkpoint, init='linear')",
          lambda ws: hf_kgelu.kgelu_config(str(ws.gelu), init="linear"), "unknown init mode", "increasing", raises=ValueError),
    error("config (build)", "kgelu_config(gelu_checkpoint, lambda_range=(2, 1))",
          lambda ws: hf_kgelu.kgelu_config(str(ws.gelu), lambda_range=(2, 1)), "low ≤ high", raises=ValueError),
    error("config (build)", "kgelu_config of a ReLU config", lambda ws: hf_kgelu.kgelu_config(tiny_config("gpt2", "relu")),
          "names no GELU", raises=ValueError),
    error("config (build)", "with_activation(config, 'swish')",
          lambda ws: hf_kgelu.modeling.with_activation(tiny_config("gpt2"), "swish"), "unknown activation", "relu"),
    warns("checkpoint (load)", "a NaN θ in a checkpoint's model.safetensors → from_pretrained",
          lambda ws: _load(ws.edited("nan-theta", _nan_theta)), "transformer.h.1.mlp.act", "NaN or infinite", "earlier checkpoint"),
    Case("checkpoint (load)", "from_pretrained of a λ-GELU checkpoint in a process that never imported hf_kgelu",
         ("KeyError: 'kgelu'", "pip install hf-kgelu", "import hf_kgelu before from_pretrained"), call=_without_import,
         kind="says"),
    # ---- the activation module and the hardness math (the op kgelu(x, λ) itself: tests/test_functional.py)
    error("module", "KGELU(tau=0)", lambda ws: hf_kgelu.KGELU(tau=0), "tau", "> 0", raises=ValueError),
    error("module", "KGELU(tau=True)", lambda ws: hf_kgelu.KGELU(tau=True), "tau", "True", raises=ValueError),
    error("module", "KGELU(lambda_init=0.5)", lambda ws: _site(0.5), "lambda_init", "≥ 1", raises=ValueError),
    error("module", "KGELU(num_channels=0)", lambda ws: hf_kgelu.KGELU(num_channels=0), "num_channels", "positive",
          raises=ValueError),
    error("module", "site.set_lambda(0.5)", lambda ws: _site().set_lambda(0.5), "≥ 1", "got 0.5", raises=ValueError),
    error("module", "site.set_lambda(nan)", lambda ws: _site().set_lambda(math.nan), "finite", raises=ValueError),
    error("module", "site.set_lambda(tensor with a NaN)", lambda ws: _site().set_lambda(torch.tensor([math.nan])),
          "finite", raises=ValueError),
    error("module", "site.set_tau(-1)", lambda ws: _site().set_tau(-1), "tau", "> 0", raises=ValueError),
    error("module", "init_hardness(model, mode='zigzag')", lambda ws: hf_kgelu.init_hardness(tiny_model("gpt2"), "zigzag"),
          "unknown init mode", raises=ValueError),
    error("module", "init_hardness on a GELU model", lambda ws: hf_kgelu.init_hardness(tiny_model("gpt2", "gelu")),
          "no λ-GELU", "convert_to_kgelu", raises=ValueError),
    error("module", "convert_to_kgelu on a ReLU model", lambda ws: hf_kgelu.convert_to_kgelu(tiny_model("gpt2", "relu")),
          "no GELU", raises=ValueError),
    error("hardness", "target_lambda(0)", lambda ws: hf_kgelu.target_lambda(0), "tolerance", "> 0", raises=ValueError),
    error("hardness", "target_lambda(nan)", lambda ws: hf_kgelu.target_lambda(math.nan), "tolerance", "finite", raises=ValueError),
    error("hardness", "target_lambda(0.005, bound='l2')", lambda ws: hf_kgelu.target_lambda(0.005, "l2"), "unknown bound",
          "gate_l1", raises=ValueError),
    error("hardness", "tolerance_at(0.5)", lambda ws: hf_kgelu.hardness.tolerance_at(0.5), "≥ 1", raises=ValueError),
    # ---- relu_ize
    warns("relu_ize", "relu_ize(model) with λ-GELU sites still at λ = 1.05 (never annealed)",
          lambda ws: hf_kgelu.relu_ize(tiny_model("gpt2")), "transformer.h.0.mlp.act", "λ = 1.05", "ε = 0.76",
          "KGeluTrainer", "include_gelu"),
    error("relu_ize", "relu_ize(GELU model) without include_gelu", lambda ws: hf_kgelu.relu_ize(tiny_model("gpt2", "gelu")),
          "no λ-GELU", "include_gelu=True", raises=ValueError),
    error("relu_ize", "relu_ize(KGELU()) (the model is an activation)", lambda ws: hf_kgelu.relu_ize(_site()),
          "the model itself is an activation", raises=ValueError),
    error("relu_ize", "relu_ize(ReLU model, include_gelu=True)",
          lambda ws: hf_kgelu.relu_ize(tiny_model("gpt2", "relu"), include_gelu=True), "no λ-GELU (KGELU) or GELU",
          raises=ValueError),
    # ---- hf-kgelu relu-ize: the checkpoint
    cli("CLI relu-ize", "a missing local folder", "relu-ize {missing} --output-dir {out}", "no such folder", "does-not-exist"),
    cli("CLI relu-ize", "a missing folder named like a Hub id (offline)", "relu-ize not-here --output-dir {out}",
        "no such folder", "not-here", "Hub"),
    cli("CLI relu-ize", "a file instead of a folder", "relu-ize {plain_file} --output-dir {out}", "is a file", "config.json"),
    cli("CLI relu-ize", "a folder without config.json", "relu-ize {folder} --output-dir {out}", "has no config.json"),
    cli("CLI relu-ize", "config.json that is not valid JSON", "relu-ize {bad_json} --output-dir {out}", "config.json",
        "not a valid JSON"),
    cli("CLI relu-ize", "config.json naming an architecture transformers lacks", "relu-ize {unknown_arch} --output-dir {out}",
        "GPT9LMHeadModel", "does not have"),
    cli("CLI relu-ize", "config.json with an unknown model_type", "relu-ize {unknown_type} --output-dir {out}",
        "nosuchmodel", "does not recognize"),
    cli("CLI relu-ize", "a checkpoint without weights", "relu-ize {no_weights} --output-dir {out}", "model.safetensors"),
    cli("CLI relu-ize", "a truncated model.safetensors", "relu-ize {cut_weights} --output-dir {out}", "cannot read the weights",
        "damaged"),
    cli("CLI relu-ize", "a GELU checkpoint without --include-gelu", "relu-ize {gelu} --output-dir {out}", "no λ-GELU",
        "--include-gelu"),
    # ---- hf-kgelu relu-ize: the output folder and options
    cli("CLI relu-ize", "a non-empty --output-dir without --overwrite", "relu-ize {kgelu} --output-dir {non_empty}",
        "is not empty", "--overwrite"),
    cli("CLI relu-ize", "--output-dir is a file", "relu-ize {kgelu} --output-dir {plain_file}", "is not a folder"),
    cli("CLI relu-ize", "--output-dir is the checkpoint itself (--overwrite)", "relu-ize {kgelu} --output-dir {kgelu} --overwrite",
        "is the source checkpoint"),
    cli("CLI relu-ize", "--output-dir missing", "relu-ize {kgelu}", "required", "--output-dir"),
    cli("CLI relu-ize", "an unknown option", "relu-ize {kgelu} --output-dir {out} --fast", "unrecognized arguments", "--fast"),
    *[cli("CLI relu-ize", f"{option} {value}", f"relu-ize {{kgelu}} --output-dir {{out}} {option} {value}", option, said)
      for option, value, said in RELU_IZE_OPTIONS],
    cli("CLI relu-ize", "--push-to-hub without a namespace", "relu-ize {kgelu} --output-dir {out} --push-to-hub tiny",
        "NAMESPACE/NAME", "'tiny'"),
    cli("CLI relu-ize", "--plot naming a missing file", "relu-ize {kgelu} --output-dir {out} --plot {missing}",
        "no such plot file"),
    cli("CLI relu-ize", "--gelu-baseline without --eval-data", "relu-ize {kgelu} --output-dir {out} --gelu-baseline {gelu}",
        "--eval-data", "--gelu-baseline"),
    cli("CLI relu-ize", "--gelu-baseline naming a missing folder",
        "relu-ize {kgelu} --output-dir {out} --eval-data {text} --gelu-baseline {missing}", "GELU baseline", "no such folder"),
    # ---- hf-kgelu relu-ize: the evaluation data
    cli("CLI relu-ize", "--eval-data naming a missing file", "relu-ize {kgelu} --output-dir {out} --eval-data {missing}",
        "no such data file or folder"),
    cli("CLI relu-ize", "--eval-data text with a checkpoint that has no tokenizer",
        "relu-ize {kgelu} --output-dir {out} --eval-data {text}", "no tokenizer", "text file"),
    cli("CLI relu-ize", "--eval-data text with an image model (no tokenizer)",
        "relu-ize {vit} --output-dir {out} --eval-data {text}", "no tokenizer"),
    cli("CLI relu-ize", "--eval-data text shorter than one block",
        "relu-ize {kgelu_tok} --output-dir {out} --eval-data {short_text} --block-size 16", "holds 3 tokens",
        "fewer than one block of 16"),
    cli("CLI relu-ize", "--eval-data an empty text file", "relu-ize {kgelu_tok} --output-dir {out} --eval-data {empty_text}",
        "holds 0 tokens", "longer text"),
    cli("CLI relu-ize", "--eval-data a folder that is not a dataset",
        "relu-ize {kgelu} --output-dir {out} --eval-data {not_dataset}", "not-dataset", "Dataset"),
    cli("CLI relu-ize", "--eval-data a dataset without model-input columns",
        "relu-ize {kgelu} --output-dir {out} --eval-data {dataset_without_inputs}", "no model input column", "input_ids"),
    cli("CLI relu-ize", "--eval-split naming a split the dataset lacks",
        "relu-ize {kgelu} --output-dir {out} --eval-data {dataset_dict} --eval-split test", "has splits", "holdout"),
    # ---- hf-kgelu convert
    cli("CLI convert", "--budget soon", "convert {gelu} --budget soon --data {text} --output-dir {out}", "--budget",
        "number of steps"),
    cli("CLI convert", "--budget 0", "convert {gelu} --budget 0 --data {text} --output-dir {out}", "--budget", "> 0"),
    cli("CLI convert", "--budget -5", "convert {gelu} --budget -5 --data {text} --output-dir {out}", "--budget", "> 0"),
    cli("CLI convert", "--budget 2.5", "convert {gelu} --budget 2.5 --data {text} --output-dir {out}", "whole number"),
    cli("CLI convert", "--budget nan", "convert {gelu} --budget nan --data {text} --output-dir {out}", "--budget", "'nan'"),
    cli("CLI convert", "--budget inf", "convert {gelu} --budget inf --data {text} --output-dir {out}", "--budget", "'inf'"),
    cli("CLI convert", "--budget 150%", "convert {gelu} --budget 150% --data {text} --output-dir {out}", "percentage",
        "below 100%"),
    cli("CLI convert", "--budget 3% for a checkpoint without trainer_state.json",
        "convert {gelu} --budget 3% --data {text} --output-dir {out}", "trainer_state.json", "does not exist"),
    cli("CLI convert", "--budget 3% with a trainer_state.json that is not JSON",
        "convert {gelu_bad_state} --budget 3% --data {text} --output-dir {out}", "trainer_state.json",
        "not a readable trainer state"),
    cli("CLI convert", "--budget missing", "convert {gelu} --data {text} --output-dir {out}", "required", "--budget"),
    cli("CLI convert", "--data naming a missing file", "convert {gelu} --budget 3 --data {missing} --output-dir {out}",
        "no such data file or folder"),
    cli("CLI convert", "--data missing", "convert {gelu} --budget 3 --output-dir {out}", "required", "--data"),
    cli("CLI convert", "--data text with a checkpoint that has no tokenizer",
        "convert {gelu} --budget 3 --data {text} --output-dir {out}", "no tokenizer"),
    cli("CLI convert", "a missing checkpoint folder", "convert {missing} --budget 3 --data {text} --output-dir {out}",
        "no such folder"),
    cli("CLI convert", "--output-dir is the checkpoint itself",
        "convert {gelu} --budget 3 --data {text} --output-dir {gelu} --overwrite", "is the source checkpoint"),
    cli("CLI convert", "a non-empty --output-dir without --overwrite",
        "convert {gelu} --budget 3 --data {text} --output-dir {non_empty}", "is not empty", "--overwrite"),
    *[cli("CLI convert", f"{option} {value}", f"convert {{gelu}} --budget 3 --data {{text}} --output-dir {{out}} {option} {value}",
          option, said) for option, value, said in CONVERT_OPTIONS],
    # ---- hf-kgelu plot, analyze, demo
    cli("CLI plot", "a run folder without a hardness history", "plot {missing}", "no hardness history", "KGeluTrainer"),
    cli("CLI plot", "a file that is not JSON", "plot {plain_file}", "notes.txt", "not a readable hardness history"),
    cli("CLI plot", "a JSON file that is not a hardness history", "plot {other_json}", "not an hf-kgelu hardness history"),
    cli("CLI analyze", "a missing model folder", "analyze {missing} --data {text}", "no such folder"),
    cli("CLI analyze", "--data naming a missing file", "analyze {kgelu} --data {missing}", "no such data file or folder"),
    cli("CLI analyze", "--max-batches 0", "analyze {kgelu} --data {text} --max-batches 0", "--max-batches", "at least 1"),
    cli("CLI analyze", "--near-zero 0", "analyze {kgelu} --data {text} --near-zero 0", "--near-zero", "> 0"),
    cli("CLI demo", "--epochs 0", "demo --epochs 0", "--epochs", "> 0"),
    cli("CLI demo", "--anneal-start 1", "demo --anneal-start 1", "--anneal-start", "[0, 1)"),
    cli("CLI", "no subcommand", "", "required", "command"),
    # ---- training arguments and the trainer
    error("training", "KGeluTrainingArguments(kgelu_tau=0)", lambda ws: make_args(ws.out, kgelu_tau=0), "kgelu_tau", "> 0",
          raises=ValueError),
    error("training", "KGeluTrainingArguments(kgelu_per_channel='false')", lambda ws: make_args(ws.out, kgelu_per_channel="false"),
          "kgelu_per_channel", "'false'", raises=ValueError),
    error("training", "KGeluTrainingArguments(kgelu_anneal_start=1.5)", lambda ws: make_args(ws.out, kgelu_anneal_start=1.5),
          "kgelu_anneal_start", "[0, 1)", raises=ValueError),
    error("training", "KGeluTrainingArguments(kgelu_tolerance=0)", lambda ws: make_args(ws.out, kgelu_tolerance=0),
          "kgelu_tolerance", "> 0", raises=ValueError),
    error("training", "KGeluTrainingArguments(kgelu_bound='l2')", lambda ws: make_args(ws.out, kgelu_bound="l2"),
          "kgelu_bound", "gate_l1", raises=ValueError),
    error("training", "KGeluTrainingArguments(kgelu_lr_multiplier=-1)", lambda ws: make_args(ws.out, kgelu_lr_multiplier=-1),
          "kgelu_lr_multiplier", "≥ 0", raises=ValueError),
    error("training", "KGeluTrainingArguments(kgelu_lambda_range='a b')", lambda ws: make_args(ws.out, kgelu_lambda_range="a b"),
          "kgelu_lambda_range", "two numbers", raises=ValueError),
    error("training", "KGeluTrainer with a stock TrainingArguments",
          lambda ws: _trainer(ws), "KGeluTrainingArguments", raises=TypeError),
    error("training", "KGeluTrainer on a GELU model",
          lambda ws: _trainer(ws, tiny_gpt2(activation="gelu"), make_args(ws.out)), "no λ-GELU", "convert_to_kgelu",
          raises=ValueError),
    # ---- resuming
    warns("resume", "resume from a checkpoint whose trainer_state.json lacks the hardness callback's entry",
          lambda ws: resume(ws.damaged_run("no-entry", _drop_hardness_state)), "resuming at step 4", "annealing restarts"),
    error("resume", "resume from a truncated trainer_state.json",
          lambda ws: resume(ws.damaged_run("cut-state", _cut("trainer_state.json", 100))), "trainer_state.json", "damaged",
          "earlier checkpoint", raises=ValueError),
    error("resume", "resume from an empty trainer_state.json",
          lambda ws: resume(ws.damaged_run("empty-state", _write("trainer_state.json", ""))), "trainer_state.json",
          "JSONDecodeError", raises=ValueError),
    error("resume", "resume from a trainer_state.json with a field this transformers lacks",
          lambda ws: resume(ws.damaged_run("odd-state", _write("trainer_state.json", '{"global_step": 4, "shiny": 1}'))),
          "trainer_state.json", "shiny", raises=ValueError),
    warns("resume", "resume from a checkpoint with a truncated hardness_history.json",
          lambda ws: resume(ws.damaged_run("cut-history", _cut("hardness_history.json", 60))), "hardness_history.json",
          "ignoring", "not a readable hardness history"),
    error("resume", "resume from a checkpoint folder that does not exist",
          lambda ws: resume(ws.damaged_run("no-folder", lambda checkpoint: None), checkpoint="checkpoint-99"),
          "checkpoint-99", raises=ValueError),
    # ---- publishing and interrupted saves
    error("publish", "publish(a λ-GELU model, …)",
          lambda ws: _publish(tiny_model("gpt2"), ws.out), "still has λ-GELU sites", "relu_ize",
          raises=ValueError),
    warns("publish", "saving into a folder beside which a killed save left its staging folder (.NAME.tmp-*)",
          lambda ws: _republish(ws, _leftover(ws, "tmp")), "removed .published-tmp.tmp-x1", "interrupted save"),
    warns("publish", "saving into a folder that a save killed between its two renames left missing (.NAME.old-*)",
          lambda ws: _republish(ws, _leftover(ws, "old")), "restored", "interrupted replacement"),
    cli("publish", "relu-ize reading a folder that a save killed between its two renames left missing",
        "relu-ize {left_missing} --output-dir {out}", "no such folder", ".old-x1", "rerun"),
    error("data", "LocalData(path, block_size=0)", lambda ws: _data(ws.text, block_size=0), "block_size",
          "positive", raises=ValueError),
]


def _workspace_extras(ws: Workspace) -> None:
    """Folders some command lines name: damaged copies of the checkpoints."""
    ws.tau_nan = ws.config_edit("kgelu_tau", math.nan)
    ws.bad_json = ws.edited("bad-json", lambda folder: (folder / "config.json").write_text('{"model_type": "gpt2", '))
    ws.unknown_arch = ws.edited("unknown-arch", lambda folder: (folder / "config.json").write_text(
        (folder / "config.json").read_text().replace("GPT2LMHeadModel", "GPT9LMHeadModel")))
    ws.unknown_type = ws.edited("unknown-type", lambda folder: (folder / "config.json").write_text('{"model_type": "nosuchmodel"}'))
    ws.no_weights = ws.edited("no-weights", lambda folder: (folder / "model.safetensors").unlink())
    ws.cut_weights = ws.edited("cut-weights", _cut("model.safetensors", 500))
    ws.gelu_bad_state = ws.edited("gelu-bad-state", _write("trainer_state.json", "[1, 2"), source="gelu")
    ws.empty_text = ws.file("empty.txt", "")
    ws.other_json = ws.file("other.json", '{"format": "something else"}')
    ws.left_missing = _leftover(ws, "old", name="relu-model")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _warnings_logged():
    """The hf_kgelu warnings logged meanwhile (and only collected: nothing is printed)."""
    handler, logger = _Records(), logging.getLogger("hf_kgelu")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def outcome(case: Case, ws: Workspace) -> str:
    """The one message the user gets from `case`; AssertionError when it is not exactly one line of the right kind."""
    with contextlib.chdir(ws.root):  # (relative paths in messages stay inside the workspace)
        return _outcome(case, ws)


def _outcome(case: Case, ws: Workspace) -> str:
    from hf_kgelu.cli import main

    if case.argv is not None:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), _warnings_logged():
            try:
                code = main(case.argv.format_map(ws).split())
            except SystemExit as exit_:  # argparse
                code = exit_.code
        lines = [line for line in err.getvalue().splitlines() if line.strip() and not PROGRESS.search(line)]
        assert code == 2 and len(lines) == 1 and ": error: " in lines[0], (code, err.getvalue()[-3000:])
        assert "Traceback" not in err.getvalue()
        return lines[0]
    with _warnings_logged() as logged:
        if case.kind == "says":
            message = case.call(ws)
        elif case.kind == "warns":
            case.call(ws)
            assert len(logged) == 1, logged
            message = logged[0]
        else:
            try:
                case.call(ws)
            except case.error as raised:
                message = f"{type(raised).__name__}: {raised}"
            else:
                raise AssertionError(f"no error for {case.input}")
    assert "\n" not in message.strip(), message
    return message.strip()


def check(case: Case, message: str) -> None:
    missing = [word for word in case.words if word not in message]
    assert not missing, f"{case.input}: the message lacks {missing}: {message}"


def _id(case: Case) -> str:
    return f"{case.area}: {case.input}"[:90]


def make_workspace(root: Path) -> Workspace:
    ws = Workspace(root)
    _workspace_extras(ws)
    return ws


try:
    import pytest
except ImportError:  # the CSV command needs no pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def ws(tmp_path_factory):
        return make_workspace(tmp_path_factory.mktemp("bad-inputs"))

    @pytest.mark.parametrize("case", CASES, ids=_id)
    def test_bad_input_gets_one_clear_line(case, ws):
        check(case, outcome(case, ws))

    def test_the_catalogue_covers_the_issue():
        areas = {case.area for case in CASES}
        assert {"config (build)", "config (load)", "relu_ize", "CLI relu-ize", "CLI convert", "resume", "publish"} <= areas
        assert len(CASES) >= 70 and len({_id(case) for case in CASES}) == len(CASES)


def write_csv(path: Path = CSV_PATH) -> int:
    """Run every case and write area, input, message (temporary paths shown as <tmp>); returns the count."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as folder:
        ws = make_workspace(Path(folder))
        rows = []
        for case in CASES:
            message = outcome(case, ws)
            check(case, message)
            rows.append((case.area, case.input, message.replace(str(ws.root), "<tmp>")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("area", "input", "message"))
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    print(f"{write_csv()} bad inputs written to {CSV_PATH}")
