#!/usr/bin/env python
"""Train a DeiT/ViT image classifier with GELU, ReLU or λ-GELU; optionally ReLU-ize it at the end
and push the ReLU model (with its image processor and card) to the Hub.

Model: from a config (`--model_type deit|vit`, `--config_overrides hidden_size=64,...`) or a
checkpoint (`--model_name_or_path PATH`; its GELU weights load into λ-GELU sites). Data: the
built-ins `digits` (sklearn, 8×8) and `fashion_mnist` (Debian `dataset-fashion-mnist`, 28×28),
or `--dataset imagefolder --data_dir DIR` (DIR/train/<class>/*.png and DIR/validation/... or
DIR/test/...). An image processor configured for the data is saved with the model. Metric:
accuracy (exact), or `--metric NAME|PATH` (an `evaluate` metric or a local metric script).

    python scripts/run_image_classification.py --dataset digits --output_dir outputs/deit-digits \\
        --activation kgelu --num_train_epochs 20 --learning_rate 3e-3 --eval_strategy epoch --relu_ize_at_end
    accelerate launch scripts/run_image_classification.py ...   # same arguments, several GPUs
    python scripts/run_image_classification.py --model_name_or_path GELU_CHECKPOINT --convert_from_gelu readout_finetune \\
        --dataset fashion_mnist --max_steps 200 --output_dir outputs/deit-relu   # GELU → ReLU, docs/scripts.md
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    ViTConfig,
    ViTForImageClassification,
    set_seed,
)

import hf_kgelu  # noqa: F401  (registers "kgelu")
from hf_kgelu.data import FASHION_MNIST_LABELS, digits_splits, fashion_mnist_splits
from hf_kgelu.modeling import with_activation
from hf_kgelu.presets import (
    DIGITS_LABELS,
    IMAGE_SIZE,
    RAW_PIXEL_MAX,
    image_processor_for,
    label_maps,
)
from hf_kgelu.script_arguments import (
    ConversionArguments,
    parse_script_arguments,
    run_conversion,
    train_from_script,
)

logger = logging.getLogger(__name__)
DATASETS = ("digits", "fashion_mnist", "imagefolder")
# Explicit classes: AutoModelForImageClassification.from_config trips over DeiT's two heads
# when the config names no architecture.
ARCHITECTURES = {"deit": (DeiTConfig, DeiTForImageClassification), "vit": (ViTConfig, ViTForImageClassification)}


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "a checkpoint folder (or Hub id) to start from"})
    model_type: str = field(default="deit", metadata={"help": "architecture of a fresh model: deit or vit"})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "comma-separated config settings of a fresh model, e.g. hidden_size=64,num_hidden_layers=4,patch_size=4"},
    )
    image_processor_name: str | None = field(default=None, metadata={"help": "an image processor to use (default: the checkpoint's, or one made for the data)"})
    image_size: int = field(default=32, metadata={"help": "image side of a fresh model on imagefolder data (built-in sets fix their own)"})


@dataclass
class DataArguments:
    dataset: str = field(default="digits", metadata={"help": f"one of {', '.join(DATASETS)}"})
    data_dir: str | None = field(default=None, metadata={"help": "imagefolder root with train/ and validation/ (or test/) subfolders"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use the first N training images"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "use the first N evaluation images"})
    data_seed_split: int = field(default=0, metadata={"help": "seed of the digits train/validation split"})

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.dataset == "imagefolder" and not self.data_dir:
            raise ValueError("--dataset imagefolder needs --data_dir DIR (with DIR/train/<class>/... and DIR/validation/<class>/...)")


def _subset(dataset, limit):
    return dataset.select(range(min(limit, len(dataset)))) if limit else dataset


def load_builtin(data_args: DataArguments):
    """(train, eval, class names, image size, raw pixel max, data set name) of a built-in set."""
    if data_args.dataset == "digits":
        splits, labels, name = digits_splits(seed=data_args.data_seed_split), DIGITS_LABELS, "sklearn digits"
    else:
        limit = max(data_args.max_train_samples or 0, data_args.max_eval_samples or 0) or None
        splits, labels, name = fashion_mnist_splits(limit=limit), FASHION_MNIST_LABELS, "FashionMNIST"
    return (_subset(splits["train"], data_args.max_train_samples), _subset(splits["validation"], data_args.max_eval_samples),
            labels, IMAGE_SIZE[data_args.dataset], RAW_PIXEL_MAX[data_args.dataset], name)


def load_imagefolder(data_args: DataArguments):
    """(train, eval, class names, name) of an imagefolder, images still raw (PIL)."""
    from datasets import load_dataset

    splits = load_dataset("imagefolder", data_dir=data_args.data_dir)
    eval_split = next((s for s in ("validation", "test") if s in splits), None)
    if "train" not in splits or eval_split is None:
        raise ValueError(f"{data_args.data_dir} needs train/ and validation/ (or test/) subfolders of class folders; found {list(splits)}")
    labels = splits["train"].features["label"].names
    return _subset(splits["train"], data_args.max_train_samples), _subset(splits[eval_split], data_args.max_eval_samples), labels, data_args.data_dir


def with_processor(dataset, processor, num_channels: int):
    """Apply the image processor on the fly: raw images in, `pixel_values` and `labels` out."""
    mode = "L" if num_channels == 1 else "RGB"

    def transform(batch):
        images = [image.convert(mode) for image in batch["image"]]
        pixels = processor(images, return_tensors="pt", input_data_format="channels_last" if num_channels > 1 else None)["pixel_values"]
        if pixels.dim() == 3:  # grayscale images come back without a channel axis
            pixels = pixels.unsqueeze(1)
        return {"pixel_values": pixels, "labels": torch.as_tensor(batch["label"])}

    return dataset.with_transform(transform)


def build_model(model_args: ModelArguments, activation: str | None, labels: list[str], image_size: int, num_channels: int | None):
    maps = label_maps(labels)
    if model_args.model_name_or_path:
        config = AutoConfig.from_pretrained(model_args.model_name_or_path)
        resized = config.num_labels != len(labels)
        if resized:  # a new head for these classes; the rest of the checkpoint loads as is
            config.update({**maps, "num_labels": len(labels)})
        config = with_activation(config, activation) if activation else config  # None: the checkpoint's own
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=resized
        )
    if model_args.model_type not in ARCHITECTURES:
        raise ValueError(f"--model_type must be one of {', '.join(ARCHITECTURES)}, got {model_args.model_type!r}")
    config_class, model_class = ARCHITECTURES[model_args.model_type]
    defaults = dict(image_size=image_size, patch_size=4, num_channels=num_channels or 1, hidden_size=64, num_hidden_layers=4,
                    num_attention_heads=4, intermediate_size=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config = config_class(**defaults, **maps)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    if config.image_size != image_size:
        raise ValueError(f"the data has {image_size}×{image_size} images but the config says image_size={config.image_size}")
    return model_class(with_activation(config, activation))


def main(argv=None) -> int:
    model_args, data_args, conversion, run_args, training_args = parse_script_arguments(
        ModelArguments, DataArguments, ConversionArguments, args=argv
    )
    if conversion.convert_from_gelu and not model_args.model_name_or_path:
        raise ValueError("--convert_from_gelu converts a pretrained GELU checkpoint: pass it as --model_name_or_path PATH")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=training_args.get_process_log_level())
    set_seed(training_args.seed)
    processor = None
    if model_args.image_processor_name or model_args.model_name_or_path:
        try:
            processor = AutoImageProcessor.from_pretrained(model_args.image_processor_name or model_args.model_name_or_path)
        except OSError:
            if model_args.image_processor_name:
                raise
    if data_args.dataset == "imagefolder":
        train, evaluation, labels, dataset_name = load_imagefolder(data_args)
        channels = len(train[0]["image"].getbands())
        if processor is None:
            size = model_args.image_size
            if model_args.model_name_or_path:
                size = AutoConfig.from_pretrained(model_args.model_name_or_path).image_size
            processor = image_processor_for(size, 255.0, channels)
        size = processor.size.get("height") or processor.size.get("shortest_edge")
        train, evaluation = with_processor(train, processor, channels), with_processor(evaluation, processor, channels)
        training_args.remove_unused_columns = False  # the transform needs the raw "image" column
    else:
        train, evaluation, labels, size, raw_max, dataset_name = load_builtin(data_args)
        channels = 1
        processor = processor or image_processor_for(size, raw_max, 1)
    activation = None if conversion.convert_from_gelu else run_args.activation
    model = build_model(model_args, activation, labels, size, channels)
    if conversion.convert_from_gelu:
        run_conversion(model, training_args, run_args, conversion, train, evaluation, task="classification", processing_class=processor,
                       checkpoint=model_args.model_name_or_path, dataset_name=dataset_name)
        return 0
    train_from_script(
        model, training_args, run_args, train, evaluation, task="classification", processing_class=processor,
        dataset_name=dataset_name,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
