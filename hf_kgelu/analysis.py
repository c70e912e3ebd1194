"""What ReLU buys downstream: activation sparsity per layer, and an ONNX graph with plain `Relu`.

`activation_sparsity(model, batches)` hooks every MLP activation (ReLU, λ-GELU or GELU modules)
and counts, over the real tokens / images of `batches` (padding left out):

- `zero_fraction`: outputs that are exactly 0 (what sparse kernels and pruning can skip);
- APoZ per channel (Average Percentage of Zeros, Hu et al. 2016, "Network Trimming"): the
  fraction of a channel's outputs that are 0. Every channel of a dense layer sees the same
  number of outputs, so the mean APoZ over channels equals `zero_fraction`; its spread says
  whether the zeros are spread out or concentrated in prunable channels
  (`dead_channels`: APoZ ≥ 0.99);
- `near_zero_fraction`: outputs with |f| < `near_zero`·scale, where scale is that layer's mean
  |output| on the same data (the GELU model's "almost zeros", which no kernel can skip).

`export_onnx(model, path, example)` writes an ONNX file with `torch.onnx.export` (TorchScript
exporter, dynamic batch dimension; the sequence length / image size of `example` is fixed) and
returns the operator types of its graph; `check_onnx(...)` runs it with onnxruntime against
PyTorch. Needs the `onnx` extra (`pip install onnx onnxruntime`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .data import LocalData
from .modeling.convert import gelu_module_classes
from .modeling.module import KGELU
from .modeling.sites import short_site_names

DEAD_APOZ = 0.99
DEFAULT_NEAR_ZERO = 1e-3


@dataclass
class LayerSparsity:
    """Activation statistics of one activation site over the data."""

    name: str
    activation: str
    channels: int
    outputs: int
    zero_fraction: float
    near_zero_fraction: float
    apoz_mean: float
    apoz_median: float
    apoz_max: float
    dead_channels: int
    mean_abs: float


@dataclass
class SparsityReport:
    """`activation_sparsity` over one model; `near_zero` is relative to each layer's mean |output|."""

    model: str
    near_zero: float
    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def zero_fraction(self) -> float:
        total = sum(layer.outputs for layer in self.layers)
        return sum(layer.zero_fraction * layer.outputs for layer in self.layers) / max(total, 1)

    @property
    def near_zero_fraction(self) -> float:
        total = sum(layer.outputs for layer in self.layers)
        return sum(layer.near_zero_fraction * layer.outputs for layer in self.layers) / max(total, 1)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["zero_fraction"], out["near_zero_fraction"] = self.zero_fraction, self.near_zero_fraction
        return out


def activation_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The MLP activation modules of a model (ReLU, λ-GELU, GELU family), in depth order."""
    kinds = (nn.ReLU, KGELU, *gelu_module_classes())
    return [(name, module) for name, module in model.named_modules() if name and isinstance(module, kinds)]


# Near-zeros need the layer's scale, known only after the last batch: count log10 |f| in bins of
# 0.01 decade (the threshold is then exact to 2.3 %), exact zeros in the first bin.
_LOG_LOW, _LOG_HIGH, _BINS = -30.0, 10.0, 4000


class _Counter:
    def __init__(self, channels: int):
        self.zero_per_channel = torch.zeros(channels, dtype=torch.float64)
        self.rows = 0
        self.abs_sum = 0.0
        self.histogram = torch.zeros(_BINS, dtype=torch.float64)

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().float().reshape(-1, values.shape[-1]).cpu()
        self.zero_per_channel += (values == 0).sum(0).double()
        self.rows += values.shape[0]
        magnitude = values.abs()
        self.abs_sum += float(magnitude.double().sum())
        logs = magnitude.clamp_min(10**_LOG_LOW).log10().clamp_max(_LOG_HIGH - 1e-6)
        self.histogram += torch.histc(logs, bins=_BINS, min=_LOG_LOW, max=_LOG_HIGH).double()


@torch.no_grad()
def activation_sparsity(
    model: nn.Module,
    batches: Iterable[Mapping],
    *,
    near_zero: float = DEFAULT_NEAR_ZERO,
    max_batches: int | None = None,
    name: str | None = None,
) -> SparsityReport:
    """Sparsity of every MLP activation's output over `batches` (dicts of model inputs; an
    `attention_mask` leaves padded positions out). See the module docstring for the quantities."""
    sites = activation_modules(model)
    if not sites:
        raise ValueError(f"{type(model).__name__} has no ReLU, λ-GELU or GELU activation module to analyse")
    counters: dict[str, _Counter] = {}
    mask_holder: dict[str, torch.Tensor | None] = {"mask": None}

    def hook_for(site_name):
        def hook(module, inputs, output):
            values = output
            mask = mask_holder["mask"]
            if mask is not None and values.dim() == 3 and values.shape[:2] == mask.shape:
                values = values[mask.bool()]
            if site_name not in counters:
                counters[site_name] = _Counter(values.shape[-1])
            counters[site_name].add(values)

        return hook

    handles = [module.register_forward_hook(hook_for(site_name)) for site_name, module in sites]
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            inputs = {k: torch.as_tensor(v).to(device) for k, v in batch.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
            mask_holder["mask"] = inputs.get("attention_mask")
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not counters:
        raise ValueError("no batch reached the activations: pass at least one batch of model inputs")
    upper_edges = torch.linspace(_LOG_LOW, _LOG_HIGH, _BINS + 1, dtype=torch.float64)[1:]
    layers = []
    for site_name, module in sites:
        counter = counters.get(site_name)
        if counter is None:
            continue
        outputs = counter.rows * counter.zero_per_channel.numel()
        apoz = counter.zero_per_channel / max(counter.rows, 1)
        mean_abs = counter.abs_sum / max(outputs, 1)
        threshold = torch.log10(torch.tensor(max(near_zero * mean_abs, 10**_LOG_LOW), dtype=torch.float64))
        below = counter.histogram[upper_edges <= threshold].sum()
        zeros = float(counter.zero_per_channel.sum())
        layers.append(LayerSparsity(
            name=site_name, activation=type(module).__name__, channels=counter.zero_per_channel.numel(), outputs=outputs,
            zero_fraction=zeros / max(outputs, 1), near_zero_fraction=float(below) / max(outputs, 1),
            apoz_mean=float(apoz.mean()), apoz_median=float(apoz.median()), apoz_max=float(apoz.max()),
            dead_channels=int((apoz >= DEAD_APOZ).sum()), mean_abs=mean_abs,
        ))
    return SparsityReport(model=name or type(model).__name__, near_zero=near_zero, layers=layers)


def sparsity_table(reports: list[SparsityReport]) -> str:
    """A Markdown table: one row per layer, the columns of each report side by side."""
    names = short_site_names([layer.name for layer in reports[0].layers])
    heads = ["layer"]
    for report in reports:
        heads += [f"{report.model}: exact zeros", "APoZ mean / max", "dead ch.", f"|f| < {report.near_zero:g}·scale"]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    for index, short in enumerate(names):
        cells = [short]
        for report in reports:
            layer = report.layers[index] if index < len(report.layers) else None
            if layer is None:
                cells += ["–"] * 4
                continue
            cells += [f"{layer.zero_fraction:.1%}", f"{layer.apoz_mean:.3f} / {layer.apoz_max:.3f}",
                      f"{layer.dead_channels}/{layer.channels}", f"{layer.near_zero_fraction:.1%}"]
        lines.append("| " + " | ".join(cells) + " |")
    total = ["**all**"]
    for report in reports:
        total += [f"**{report.zero_fraction:.1%}**", "", "", f"**{report.near_zero_fraction:.1%}**"]
    lines.append("| " + " | ".join(total) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# ONNX


def export_onnx(model: nn.Module, path: str | os.PathLike, example: Mapping[str, torch.Tensor], opset: int = 17) -> list[str]:
    """Export `model` (called with the keyword inputs of `example`) to the ONNX file `path`, with
    a dynamic batch dimension; returns the operator types of the graph, in node order."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(example)
    model = model.eval()

    class Wrapped(nn.Module):  # positional inputs, first output only (logits / last_hidden_state)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            out = self.inner(**dict(zip(names, args)), return_dict=True)
            return out[0] if isinstance(out, tuple) else next(iter(out.values()))

    dynamic = {name: {0: "batch"} for name in names}
    with warnings.catch_warnings():  # the tracer's notes on Python-side shape checks: expected, not actionable
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(Wrapped(model), tuple(example[n] for n in names), str(path), input_names=names,
                          output_names=["output"], dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    graph = onnx.load(str(path)).graph
    return [node.op_type for node in graph.node]


def check_onnx(model: nn.Module, path: str | os.PathLike, inputs: Mapping[str, torch.Tensor]) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's first output on `inputs`."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {name: inputs[name].cpu().numpy() for name in (i.name for i in session.get_inputs())}
    onnx_out = session.run(None, feeds)[0]
    with torch.no_grad():
        torch_out = model.eval()(**inputs, return_dict=True)
        torch_out = next(iter(torch_out.values())).float().cpu().numpy()
    return float(np.abs(onnx_out - torch_out).max())


# ----------------------------------------------------------------------------------------------
# The `hf-kgelu analyze` command


NONLINEAR_OPS = ("Relu", "Erf", "Gelu", "Tanh", "Sigmoid", "Softmax")


def _export_and_check(model: nn.Module, path, batch: Mapping) -> list[str]:
    """Export to ONNX with `batch` as the example, run onnxruntime on it, and describe the result."""
    names = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")
    example = {k: torch.as_tensor(v) for k, v in batch.items() if k in names}
    if "input_ids" in example and "attention_mask" not in example:
        # without a mask, transformers' mask code looks for packed sequences with aten::diff, which ONNX lacks
        example["attention_mask"] = torch.ones_like(example["input_ids"])
    ops = export_onnx(model, path, example)
    difference = check_onnx(model, path, example)
    counts = ", ".join(f"{op} ×{ops.count(op)}" for op in NONLINEAR_OPS if op in ops)
    return [f"\nONNX: {path} — {len(ops)} nodes; nonlinear operators: {counts or 'none'}",
            f"onnxruntime vs PyTorch on one batch: max |difference| = {difference:.3g}"]


def analyze_checkpoints(
    checkpoints: list[str | os.PathLike],
    data: LocalData,
    *,
    batch_size: int = 16,
    max_batches: int = 16,
    near_zero: float = DEFAULT_NEAR_ZERO,
    onnx_path: str | os.PathLike | None = None,
) -> tuple[list[SparsityReport], list[str]]:
    """`activation_sparsity` of each checkpoint (its own architecture class and tokenizer) over the same
    `data`; with `onnx_path`, the first is also exported and checked. Returns (reports, ONNX lines)."""
    from .checkpoint import load_checkpoint
    from .metrics import iter_batches

    reports, onnx_lines = [], []
    data = replace(data, max_blocks=max_batches * batch_size)
    for index, checkpoint in enumerate(checkpoints):
        source = load_checkpoint(checkpoint)
        rows, _ = data.rows(source.tokenizer)
        sites = activation_modules(source.model)
        kinds = sorted({type(m).__name__ for _, m in sites})
        reports.append(activation_sparsity(source.model, iter_batches(rows, batch_size), near_zero=near_zero,
                                           max_batches=max_batches, name=f"{Path(checkpoint).name} ({'/'.join(kinds)})"))
        if index == 0 and onnx_path is not None:
            onnx_lines = _export_and_check(source.model, onnx_path, next(iter(iter_batches(rows, batch_size))))
    return reports, onnx_lines
