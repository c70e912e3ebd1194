"""Writes the example model cards beside this file: one per headline model, each the README.md
that the library's own flow writes for a tiny model of that kind (`make cards`, or
`python model_cards/examples/generate.py [OUTPUT_DIR]` from a checkout).

The models are built from configs and really trained (a few dozen steps, CPU, one thread), so
every number in a card is one the flow measured; they are float64, so that the rounding
differences between CPUs (vector widths, BLAS kernels) stay far below the digits a card prints. Repo ids, datasets and base models are fixed, illustrative metadata (what a
user passes in `CardDetails`). The output has no dates, paths or timings: regenerating gives the
same bytes (tests/test_model_cards.py checks that the committed cards are current).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
COMMAND = "make cards"
SEED = 0
STEPS = 40  # optimizer steps of every training run
CONVERSION_STEPS = 24
BLOCK = 32  # tokens (bytes) per causal-LM block
TEXT_CHARS = 24_000  # characters of Python docs the GPT-2 models read
SENTENCE = 24  # bytes per sentence of the encoder's data


def use_this_checkout() -> None:
    """Import hf_kgelu from this checkout, with the card templates of this checkout's model_cards/
    (an editable install elsewhere, or a wheel, would otherwise supply its own)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import hf_kgelu

    if Path(hf_kgelu.__file__).resolve().parent != ROOT / "hf_kgelu":
        raise RuntimeError(f"hf_kgelu was imported from {hf_kgelu.__file__}, not from this checkout ({ROOT})")
    templates = ROOT / "model_cards"
    loaded = sys.modules.get("hf_kgelu.model_cards")
    if loaded is not None and Path(loaded.__file__).resolve().parent == templates:
        return
    spec = importlib.util.spec_from_file_location("hf_kgelu.model_cards", templates / "__init__.py",
                                                  submodule_search_locations=[str(templates)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    hf_kgelu.model_cards = module


@dataclass(frozen=True)
class Example:
    filename: str
    made_from: str  # what the card was generated from, stated at its top
    make: Callable[[Path], Path]  # scratch folder → the published ReLU folder


# ---------------------------------------------------------------------------------------------
# Data: offline, small, fixed.

def _byte_blocks(chars: int = TEXT_CHARS):
    """Python documentation text (the stdlib's pydoc topics) as UTF-8 byte tokens, BLOCK-token blocks."""
    from hf_kgelu.data import byte_tokenizer, causal_lm_blocks, embedded_text

    return causal_lm_blocks(embedded_text()[:chars], byte_tokenizer, block_size=BLOCK, eval_fraction=0.1)


def _float64(dataset, rows: int | None = None):
    """`dataset` (a torch-formatted Dataset) with float64 `pixel_values`, first `rows` rows."""
    import torch
    from datasets import Dataset

    if rows is not None:
        dataset = dataset.select(range(min(rows, len(dataset))))
    columns = dataset[:]
    return Dataset.from_dict({"pixel_values": columns["pixel_values"].to(torch.float64).numpy(),
                              "labels": columns["labels"].numpy()}).with_format("torch")


def _args(output_dir: Path, steps: int, **kgelu):
    from hf_kgelu.training import KGeluTrainingArguments

    return KGeluTrainingArguments(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16, per_device_eval_batch_size=64,
        learning_rate=3e-3, weight_decay=0.01, warmup_steps=0.1, logging_steps=steps, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, seed=SEED, data_seed=SEED, dataloader_pin_memory=False, **kgelu,
    )


_ANNEAL = {"kgelu_lr_multiplier": 10.0, "kgelu_anneal_start": 0.5, "kgelu_tolerance": 0.005, "kgelu_bound": "gate_l1"}


def _build(model_class, config):
    import torch
    from transformers import set_seed

    set_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return model_class(config)
    finally:
        torch.set_default_dtype(previous)


def _train(scratch: Path, build, train, validation, steps: int, details, processor=None, gelu_twin: bool = False) -> Path:
    """Train a λ-GELU model (learned λ, then annealed), ReLU-ize and publish it; with `gelu_twin`, the
    paper's setting: a GELU model trained alike, whose direct swap the card's evaluation shows beside."""
    from hf_kgelu.checkpoint import train_and_relu_ize

    common = {"processing_class": processor, "log_lines": False, "write_report": False, "save_model": False}
    gelu = None
    if gelu_twin:
        gelu = build("gelu")
        train_and_relu_ize(gelu, _args(scratch / "gelu", steps), train, validation, substitution=False, **common)
    relu_dir = scratch / "relu"
    train_and_relu_ize(build("kgelu"), _args(scratch / "kgelu", steps, **_ANNEAL), train, validation, gelu_baseline=gelu,
                       relu_output_dir=relu_dir, details=details, **common)
    return relu_dir


# ---------------------------------------------------------------------------------------------
# The examples.

def _gpt2(activation: str, **extra):
    from transformers import GPT2LMHeadModel

    from hf_kgelu.presets import gpt2_config

    return _build(GPT2LMHeadModel, gpt2_config(vocab_size=256, n_positions=BLOCK, n_layer=4, n_embd=32, n_head=2,
                                               activation_function=activation, **extra))


def gpt2(scratch: Path) -> Path:
    from hf_kgelu.publishing import CardDetails

    blocks = _byte_blocks()
    details = CardDetails(usage_id="your-name/gpt2-small-relu", datasets=["Salesforce/wikitext"],
                          eval_dataset="wikitext-103 validation", license="mit")
    build = lambda activation: _gpt2(activation, **({"kgelu_init": "increasing"} if activation == "kgelu" else {}))
    return _train(scratch, build, blocks["train"], blocks["validation"], STEPS, details, gelu_twin=True)


def deit(scratch: Path) -> Path:
    from transformers import DeiTForImageClassification

    from hf_kgelu.data import digits_splits
    from hf_kgelu.presets import (
        DIGITS_LABELS,
        IMAGE_SIZE,
        RAW_PIXEL_MAX,
        deit_config,
        image_processor_for,
        label_maps,
    )
    from hf_kgelu.publishing import CardDetails

    splits = digits_splits(seed=SEED)
    train, validation = _float64(splits["train"], 640), _float64(splits["validation"], 192)
    processor = image_processor_for(IMAGE_SIZE["digits"], RAW_PIXEL_MAX["digits"])
    config = deit_config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, hidden_act="kgelu", kgelu_init="increasing",
                         **label_maps(DIGITS_LABELS))
    details = CardDetails(usage_id="your-name/deit-small-relu", base_model="facebook/deit-small-patch16-224",
                          datasets=["ylecun/mnist"], eval_dataset="mnist test", license="apache-2.0")
    return _train(scratch, lambda _: _build(DeiTForImageClassification, config), train, validation, STEPS, details, processor)


def mlp(scratch: Path) -> Path:
    from hf_kgelu.data import adult_splits
    from hf_kgelu.modeling.mlp import MLPForSequenceClassification
    from hf_kgelu.presets import label_maps, mlp_config
    from hf_kgelu.publishing import CardDetails

    splits = adult_splits()
    train, validation = _float64(splits["train"], 1024), _float64(splits["validation"], 512)
    config = mlp_config(num_features=train[0]["pixel_values"].shape[0], num_labels=2, hidden_act="kgelu",
                        kgelu_init="increasing", **label_maps(["<=50K", ">50K"]))
    details = CardDetails(usage_id="your-name/adult-mlp-relu", datasets=["scikit-learn/adult-census-income"],
                          eval_dataset="adult test", license="mit", pipeline_tag="tabular-classification")
    return _train(scratch, lambda _: _build(MLPForSequenceClassification, config), train, validation, STEPS, details)


def sentence_encoder(scratch: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    from hf_kgelu.checkpoint import Checkpoint, convert_checkpoint
    from hf_kgelu.conversion import ConversionConfig
    from hf_kgelu.data import embedded_text
    from hf_kgelu.publishing import CardDetails

    # all-MiniLM-L6-v2's shape, shrunk: 6 GELU layers, no task head; its MLPs scaled up so the swap costs something.
    config = BertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=64, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = _build(BertModel, config).eval()
    with torch.no_grad():
        for layer in encoder.encoder.layer:
            layer.output.dense.weight.mul_(10)
    lines = [line.strip() for line in embedded_text().splitlines() if len(line.strip()) >= SENTENCE]
    rows = [{"input_ids": torch.tensor(list(line.encode("utf-8"))[:SENTENCE]),
             "attention_mask": torch.ones(SENTENCE, dtype=torch.long)} for line in lines[:320]]
    source = Checkpoint(model=encoder, processor=None, folder=None, name="sentence-transformers/all-MiniLM-L6-v2")
    details = CardDetails(usage_id="your-name/all-MiniLM-L6-v2-relu", base_model="sentence-transformers/all-MiniLM-L6-v2",
                          datasets=["sentence-transformers/all-nli"], eval_dataset="all-nli sentences", license="apache-2.0")
    relu_dir = scratch / "relu"
    convert_checkpoint(source, relu_dir, data=rows[:256], evaluation=rows[256:], details=details,
                       config=ConversionConfig(steps=CONVERSION_STEPS, learning_rate=1e-3, batch_size=16, calibration_batches=4),
                       made_with="`hf_kgelu.convert_gelu_to_relu`", training_overrides={"use_cpu": True, "logging_strategy": "no"})
    return relu_dir


def direct_swap(scratch: Path) -> Path:
    from transformers import Trainer

    from hf_kgelu.checkpoint import relu_ize_checkpoint
    from hf_kgelu.data import LocalData
    from hf_kgelu.publishing import CardDetails

    blocks = _byte_blocks()
    model = _gpt2("gelu_new")  # GPT-2's own (tanh) GELU
    Trainer(model=model, args=_args(scratch / "gelu", STEPS), train_dataset=blocks["train"]).train()
    model.save_pretrained(scratch / "gpt2")
    blocks["validation"].save_to_disk(str(scratch / "validation"))
    details = CardDetails(usage_id="your-name/gpt2-relu-direct-swap", base_model="openai-community/gpt2",
                          datasets=["Salesforce/wikitext"], eval_dataset="wikitext-103 validation", license="mit")
    relu_dir = scratch / "relu"
    relu_ize_checkpoint(scratch / "gpt2", relu_dir, evaluation=LocalData(scratch / "validation"), include_gelu=True,
                        details=details)
    return relu_dir


TEXT = f"{TEXT_CHARS // 1000}k characters of Python docs"
EXAMPLES = (
    Example("gpt2-lambda-gelu-relu.md", f"a tiny GPT-2 (4 layers × 32, byte-level) trained {STEPS} steps on {TEXT} with "
            "λ-GELU (λ learned, then annealed), then relu_ize; beside it a GELU twin trained alike and swapped directly", gpt2),
    Example("deit-lambda-gelu-relu.md", f"a tiny DeiT (4 layers × 32) trained {STEPS} steps on sklearn digits with λ-GELU "
            "(λ learned, then annealed), then relu_ize", deit),
    Example("mlp-tabular-lambda-gelu-relu.md", f"the paper's 4×256 MLP (custom code) trained {STEPS} steps on 1,024 rows "
            "of UCI Adult with λ-GELU (λ learned, then annealed), then relu_ize", mlp),
    Example("bert-sentence-encoder-converted-relu.md", "a tiny 6-layer GELU BERT encoder, randomly initialised, converted "
            f"by convert_gelu_to_relu (readout fit, then {CONVERSION_STEPS} distillation steps on Python docs lines)",
            sentence_encoder),
    Example("gpt2-gelu-direct-swap-relu.md", f"a tiny GELU GPT-2 (4 layers × 32, byte-level) trained {STEPS} steps on "
            f"{TEXT}, saved, then swapped by relu_ize_checkpoint(include_gelu=True), i.e. "
            "`hf-kgelu relu-ize --include-gelu`", direct_swap),
)


def provenance(example: Example) -> str:
    text = (f"Example card generated by `{COMMAND}` (model_cards/examples/generate.py); do not edit by hand. Made from "
            f"{example.made_from}. The numbers are that tiny model's; the repo id, datasets and base model are "
            "illustrative metadata.")
    return "<!--\n" + textwrap.fill(text, width=100) + "\n-->\n\n"


def with_provenance(card: str, example: Example) -> str:
    """The card with the provenance comment first in its body, after the YAML front matter
    (the Hub reads metadata only from a card that starts with it)."""
    head, marker, body = card.partition("\n---\n")
    if not head.startswith("---\n") or not marker:
        raise ValueError(f"{example.filename}: the card does not start with YAML front matter")
    return head + marker + "\n" + provenance(example) + body.lstrip("\n")


def generate(output_dir: Path = HERE, names: list[str] | None = None) -> list[Path]:
    """Write the example cards (all, or those named) into `output_dir`; returns their paths."""
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only (before torch is imported): the same numbers anywhere
    use_this_checkout()
    import logging

    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    logging.getLogger("hf_kgelu").setLevel(logging.ERROR)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for example in EXAMPLES:
        if names and example.filename not in names:
            continue
        with tempfile.TemporaryDirectory(prefix="hf-kgelu-card-") as scratch:
            folder = example.make(Path(scratch))
            card = (folder / "README.md").read_text(encoding="utf-8")
        path = output_dir / example.filename
        path.write_text(with_provenance(card, example), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    output_dir = Path(argv[0]) if argv else HERE
    for path in generate(output_dir, argv[1:] or None):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
