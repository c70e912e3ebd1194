"""The command-line arguments the scripts share (`scripts/run_*.py`), read with transformers'
`HfArgumentParser` beside `KGeluTrainingArguments`, and the scripts' conversion entry point."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import (
    Checkpoint,
    HubTarget,
    TrainResult,
    convert_checkpoint,
    train_and_relu_ize,
)
from .checkpoint.report import print_summary
from .checkpoint.train import RELU_DIRNAME
from .cli import METRIC_HELP
from .conversion import METHODS, ConversionConfig
from .modeling.config import ACTIVATIONS
from .modeling.convert import activation_of
from .publishing.card import CardDetails
from .training import KGeluTrainingArguments


@dataclass
class RunArguments:
    """The command-line options every script shares (read with `HfArgumentParser` beside
    `KGeluTrainingArguments`, whose `--push_to_hub`/`--hub_model_id`/`--hub_token`/
    `--hub_private_repo` here publish the ReLU model, never the λ-GELU checkpoints)."""

    activation: str = field(default="kgelu", metadata={"help": "activation to train with: gelu, relu or kgelu"})
    relu_ize_at_end: bool = field(
        default=False,
        metadata={"help": "after training, swap the activations for ReLU and save that model (with its card and the "
                          "substitution report) in relu_output_dir; a GELU model gets the direct swap"},
    )
    relu_output_dir: str | None = field(default=None, metadata={"help": "where the ReLU model goes (default: OUTPUT_DIR/relu_model)"})
    overwrite_relu_output: bool = field(default=False, metadata={"help": "replace an existing non-empty relu_output_dir"})
    substitution: bool = field(default=True, metadata={"help": "measure the metric before/after the ReLU swap on the eval set"})
    metric: str | None = field(default=None, metadata={"help": METRIC_HELP + "; used by the evaluations, the final score "
                                                               "and the substitution report (training runs only)"})

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    def relu_dir(self, output_dir: str, push_to_hub: bool) -> str | None:
        if self.relu_output_dir:
            return self.relu_output_dir
        return os.path.join(output_dir, RELU_DIRNAME) if self.relu_ize_at_end or push_to_hub else None


@dataclass
class ConversionArguments:
    """`--convert_from_gelu METHOD` of run_clm.py and run_image_classification.py (`run_conversion`)."""

    convert_from_gelu: str | None = field(
        default=None,
        metadata={"help": "instead of training: convert the GELU checkpoint --model_name_or_path into a ReLU model with this "
                          "recipe (readout_finetune, the best; readout; anneal; swap_finetune; swap) on the training data, for "
                          "--max_steps (or --num_train_epochs) optimizer steps, and save it in relu_output_dir (--activation is "
                          "not used; see hf-kgelu convert)"},
    )
    convert_calibration_batches: int | None = field(
        default=None, metadata={"help": "--convert_from_gelu: batches for the readout fit (default: chosen from the data, "
                                        "8 rows per unknown of each readout's least-squares fit)"}
    )
    convert_distill: bool = field(
        default=False, metadata={"help": "--convert_from_gelu: add distillation from the GELU original to the task loss"}
    )

    def __post_init__(self):
        if self.convert_from_gelu is not None:
            if self.convert_from_gelu not in METHODS:
                raise ValueError(f"--convert_from_gelu must be one of {', '.join(METHODS)}, got {self.convert_from_gelu!r}")


def parse_script_arguments(*dataclass_types, args: Sequence[str] | None = None):
    """`HfArgumentParser` over `dataclass_types` + `RunArguments` + `KGeluTrainingArguments`;
    a single `.json`/`.yaml` argument is read as a file of all arguments (the transformers way)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((*dataclass_types, RunArguments, KGeluTrainingArguments))
    argv = list(sys.argv[1:] if args is None else args)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(os.path.abspath(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return parser.parse_yaml_file(os.path.abspath(argv[0]))
    return parser.parse_args_into_dataclasses(args=argv)


def conversion_steps(args, num_train_rows: int) -> int:
    """The optimizer steps the Trainer would take under `args`: `max_steps`, else the epochs' worth."""
    if args.max_steps and args.max_steps > 0:
        return int(args.max_steps)
    batches = math.ceil(num_train_rows / args.per_device_train_batch_size)
    per_epoch = max(batches // args.gradient_accumulation_steps, 1)
    return max(1, math.ceil(args.num_train_epochs * per_epoch))


def run_conversion(model, args, run_args: RunArguments, conversion: ConversionArguments, train_dataset, eval_dataset, *,
                   task: str, data_collator=None, processing_class=None, checkpoint: str | None = None,
                   dataset_name: str | None = None, script: str | None = None) -> str:
    """`--convert_from_gelu METHOD`: convert the GELU `model` (loaded from `checkpoint`) with the steps,
    learning rate, batch size and seed of the TrainingArguments `args` on `train_dataset`, print GELU
    vs ReLU on `eval_dataset`, and publish the ReLU folder (the same `hf-kgelu convert` writes) in
    `--relu_output_dir` (default OUTPUT_DIR/relu_model), pushed with `--push_to_hub`. Returns the folder."""
    method = conversion.convert_from_gelu
    if run_args.metric is not None:
        raise ValueError("--metric applies to training runs: --convert_from_gelu reports the task's built-in metric")
    if activation_of(model) != "gelu":
        raise ValueError(f"--convert_from_gelu needs a GELU checkpoint, but --model_name_or_path builds a {activation_of(model)} "
                         "model: train a λ-GELU model with --relu_ize_at_end instead, or give a GELU checkpoint")
    if args.world_size > 1:
        raise ValueError("--convert_from_gelu runs in one process (a small budget): launch the script with python, not accelerate")
    hub = None
    if args.push_to_hub:
        if not args.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (--hub_model_id NAMESPACE/NAME): the repo the ReLU model goes to")
        hub = HubTarget(args.hub_model_id, private=bool(args.hub_private_repo), token=args.hub_token)
    overrides = {"gradient_accumulation_steps": args.gradient_accumulation_steps, "bf16": args.bf16, "fp16": args.fp16,
                 "dataloader_num_workers": args.dataloader_num_workers, "disable_tqdm": args.disable_tqdm}
    if args.use_cpu:
        overrides["use_cpu"] = True
    config = ConversionConfig(
        method=method, steps=conversion_steps(args, len(train_dataset)), learning_rate=args.learning_rate,
        batch_size=args.per_device_train_batch_size, seed=args.seed, calibration_batches=conversion.convert_calibration_batches,
        distill=True if conversion.convert_distill else None, task=task,
        bound=getattr(args, "kgelu_bound", "gate_l1"), tolerance=getattr(args, "kgelu_tolerance", 0.005),
        target_lambda=getattr(args, "kgelu_target_lambda", None),
    )
    folder = Path(checkpoint) if checkpoint and Path(checkpoint).is_dir() else None
    source = Checkpoint(model=model, processor=processing_class, folder=folder, name=checkpoint or type(model).__name__)
    script = script or Path(sys.argv[0]).name
    published = convert_checkpoint(
        source, run_args.relu_output_dir or os.path.join(args.output_dir, RELU_DIRNAME), data=train_dataset, config=config,
        evaluation=eval_dataset, data_collator=data_collator, made_with=f"`{script} --convert_from_gelu {method}`",
        details=CardDetails(datasets=[dataset_name] if dataset_name else ()), hub=hub,
        overwrite=run_args.overwrite_relu_output, training_overrides=overrides, log=lambda line: print(line, flush=True),
    )
    print(f"ReLU model: {published.folder}" + (f" (pushed to {published.url})" if published.url else ""), flush=True)
    return str(published.folder)


def train_from_script(model, training_args, run_args: RunArguments, train_dataset, eval_dataset, *, task: str,
                      dataset_name: str | None = None, base_model: str | None = None, **kwargs) -> TrainResult:
    """The scripts' training run: `train_and_relu_ize` with the shared options, then the summary lines."""
    result = train_and_relu_ize(
        model, training_args, train_dataset, eval_dataset, task=task, substitution=run_args.substitution,
        relu_output_dir=run_args.relu_dir(training_args.output_dir, training_args.push_to_hub),
        overwrite_relu_output=run_args.overwrite_relu_output, resume_from_checkpoint=training_args.resume_from_checkpoint,
        metric=run_args.metric, details=CardDetails(datasets=[dataset_name] if dataset_name else (), base_model=base_model), **kwargs,
    )
    if training_args.process_index == 0:
        print_summary(result)
    return result
