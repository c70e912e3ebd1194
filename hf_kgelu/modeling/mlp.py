"""The paper's tabular MLP as a transformers model: `MLPConfig` + `MLPForSequenceClassification`.

Four hidden layers of 256 units, each `Linear → activation (→ dropout)`, then a linear head;
the activation is read from `config.hidden_act` through `ACT2FN`, so `hidden_act="kgelu"`
gives λ-GELU sites (`mlp.layers.i.act`) and `relu_ize` turns them into ReLU like in any
transformers model. Inputs are dense feature vectors passed as `pixel_values` (the key that
`hf_kgelu.data` and `hf_kgelu.metrics` use for dense inputs), shape (batch, num_features) or
(batch, …) flattened.

The name follows transformers' convention for "features → class logits" so that the Auto
classes and `hf_kgelu.metrics.infer_task` recognise it. Importing this module registers
model_type "kgelu_mlp" with `AutoConfig` and `AutoModelForSequenceClassification`.

Stock transformers has no MLP class: a process that loads a saved MLP needs this module.
Either import `hf_kgelu` (which imports it), or load with `trust_remote_code=True`: the saved
folder carries a copy of this file (it imports only torch and transformers) and an `auto_map`
in config.json, so `AutoModelForSequenceClassification.from_pretrained(folder,
trust_remote_code=True)` builds a ReLU-ized MLP in a process without hf_kgelu.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PreTrainedConfig,
    PreTrainedModel,
)
from transformers import initialization as hf_init
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput

MLP_MODEL_TYPE = "kgelu_mlp"


class MLPConfig(PreTrainedConfig):
    """A feed-forward classifier: `num_hidden_layers` layers of `hidden_size` units.

    Defaults are the paper's: 4 layers × 256 units. `num_features` is the input width
    (784 for flattened FashionMNIST, 104 for encoded UCI Adult)."""

    model_type = MLP_MODEL_TYPE

    def __init__(
        self,
        num_features: int = 784,
        hidden_size: int = 256,
        num_hidden_layers: int = 4,
        hidden_act: str = "gelu",
        dropout: float = 0.0,
        **kwargs,
    ):
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int (the input width), got {num_features!r}")
        if not isinstance(num_hidden_layers, int) or num_hidden_layers < 1:
            raise ValueError(f"num_hidden_layers must be a positive int, got {num_hidden_layers!r}")
        self.num_features = num_features
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.hidden_act = hidden_act
        self.dropout = dropout
        super().__init__(**kwargs)  # num_labels / id2label are PreTrainedConfig's


class MLPLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, hidden_act: str, dropout: float):
        super().__init__()
        self.dense = nn.Linear(in_features, out_features)
        self.act = ACT2FN[hidden_act]  # a fresh module per lookup: every layer owns its activation
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.dense(hidden)))


class MLPStack(nn.Module):
    def __init__(self, config: MLPConfig):
        super().__init__()
        widths = [config.num_features] + [config.hidden_size] * config.num_hidden_layers
        self.layers = nn.ModuleList(
            MLPLayer(widths[i], widths[i + 1], config.hidden_act, config.dropout) for i in range(config.num_hidden_layers)
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            hidden = layer(hidden)
        return hidden


class MLPPreTrainedModel(PreTrainedModel):
    config_class = MLPConfig
    base_model_prefix = "mlp"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module):
        # He init: std 0.02 (transformers' default) starves a deep ReLU-family MLP of signal.
        if isinstance(module, nn.Linear):
            hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # torch's own nn.Linear init
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features)
                hf_init.uniform_(module.bias, -bound, bound)


class MLPForSequenceClassification(MLPPreTrainedModel):
    """MLP + linear classification head; cross-entropy loss when `labels` are given."""

    def __init__(self, config: MLPConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.mlp = MLPStack(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    # No **kwargs: the Trainer would then pass num_items_in_batch and stop scaling the loss for
    # gradient accumulation, which this mean-reduced loss needs.
    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None):
        if pixel_values.dim() > 2:
            pixel_values = pixel_values.flatten(1)
        if pixel_values.shape[-1] != self.config.num_features:
            raise ValueError(
                f"the MLP expects {self.config.num_features} features per example, got {pixel_values.shape[-1]}: "
                "set MLPConfig(num_features=...) to the width of your data"
            )
        hidden = self.mlp(pixel_values.to(self.classifier.weight.dtype))
        logits = self.classifier(hidden)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


def register_mlp() -> None:
    """Make "kgelu_mlp" loadable through `AutoConfig` / `AutoModelForSequenceClassification`. Idempotent."""
    try:
        AutoConfig.register(MLP_MODEL_TYPE, MLPConfig)
    except ValueError:  # already registered (this module imported twice, e.g. via remote code)
        pass
    try:
        AutoModelForSequenceClassification.register(MLPConfig, MLPForSequenceClassification)
    except ValueError:
        pass
    # save_pretrained then copies this file beside the weights and writes an auto_map, so a
    # process without hf_kgelu can load the folder with trust_remote_code=True.
    MLPConfig.register_for_auto_class()
    MLPForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


register_mlp()
