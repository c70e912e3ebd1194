"""Training-free readout correction: swap each GELU for ReLU and re-fit the linear layer that reads it."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..metrics import MODEL_INPUT_KEYS
from ..modeling.convert import gelu_module_classes
from ..modeling.module import KGELU
from ..relu import ReluReport, relu_ize

logger = logging.getLogger(__name__)
MAX_ROWS = 32768  # rows per site the fit uses at most (its Gram matrix costs rows × width²)


def _activation_sites(model: nn.Module) -> list[tuple[str, nn.Module]]:
    kinds = (nn.GELU, KGELU, *gelu_module_classes())
    sites = [(name, module) for name, module in model.named_modules() if name and isinstance(module, kinds)]
    if not sites:
        raise ValueError(f"{type(model).__name__} has no GELU or λ-GELU activation to swap")
    return sites


def _model_inputs(batch: dict, device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v).to(device) for k, v in batch.items() if k in MODEL_INPUT_KEYS}


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the fit leaves padding out of the site input `x`: token rows with an attention mask."""
    return mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape


@torch.no_grad()
def readout_rows(model: nn.Module, batch: dict) -> dict[str, tuple[int, int]]:
    """{site: (rows, width)}: how many rows one batch gives each activation site's readout fit
    (padding left out, as `swap_with_readout_correction` leaves it out) and the site's input width."""
    sites = _activation_sites(model)
    inputs = _model_inputs(batch, next(model.parameters()).device)
    mask = inputs.get("attention_mask")
    counts: dict[str, tuple[int, int]] = {}

    def count(module, args, name):
        x = args[0]
        counts[name] = (int(mask.sum()) if _masked(x, mask) else x.numel() // x.shape[-1], x.shape[-1])

    handles = [m.register_forward_pre_hook(lambda m, a, name=name: count(m, a, name)) for name, m in sites]
    was_training = model.training
    try:
        model.eval()(**inputs)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return counts


def _linear_consumers(model: nn.Module, sites: list[tuple[str, nn.Module]], batch: dict) -> dict[str, nn.Module]:
    """For each activation site, the linear layer that reads its output (found by tracing one batch:
    the first Linear/Conv1D whose input is that very tensor; dropout in eval mode passes it through).
    A site read by something else first (BERT's MLM head: a LayerNorm) has no entry."""
    outputs: dict[int, str] = {}
    consumers: dict[str, nn.Module] = {}
    handles = []
    for name, module in sites:
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(id(o), name)))
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            def pre(m, inputs):
                name = outputs.get(id(inputs[0]))
                if name is not None and name not in consumers:
                    consumers[name] = m
            handles.append(module.register_forward_pre_hook(pre))
    try:
        model(**batch)
    finally:
        for handle in handles:
            handle.remove()
    return consumers


def _weight_in_out(layer: nn.Module) -> torch.Tensor:
    """The weight as (in_features, out_features): Conv1D stores it so, nn.Linear transposed."""
    return layer.weight.detach().double().t() if isinstance(layer, nn.Linear) else layer.weight.detach().double()


def _store_weight(layer: nn.Module, weight_in_out: torch.Tensor, bias: torch.Tensor) -> None:
    w = weight_in_out.t() if isinstance(layer, nn.Linear) else weight_in_out
    layer.weight.copy_(w.to(layer.weight.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(bias.to(layer.weight.dtype))
    else:
        layer.bias.copy_(bias.to(layer.bias.dtype))


@torch.no_grad()
def swap_with_readout_correction(
    model: nn.Module, batches: list[dict], *, mode: str = "least_squares", ridge: float = 1e-2, max_rows: int = MAX_ROWS,
) -> tuple[nn.Module, ReluReport]:
    """Swap every GELU (or λ-GELU) for ReLU and re-fit the linear layer that reads each activation so
    that it reproduces the original layer's output on real data, without any training.

    Sites are corrected in depth order; each sees the inputs produced by the already-corrected
    layers before it. A site that no linear layer reads directly is swapped without a fit. For a site with inputs X and its reader y = f(X)·W + b (f the original
    activation):
    - mode="bias": b += mean(f(X) − ReLU(X))·W (the first-order fix, as in data-free bias
      correction for quantization);
    - mode="least_squares": [W; b] = argmin ‖[ReLU(X), 1]·M − y‖² + ρ‖M − [W; b]‖², ρ = `ridge` ×
      the mean diagonal of the Gram matrix (pulls toward the original weights where data is thin).
    `batches` are dicts of model inputs (an `attention_mask` leaves padding out); at most
    `max_rows` rows per site are used. The model is not changed; returns (ReLU copy, report)."""
    if mode not in ("least_squares", "bias"):
        raise ValueError(f"mode must be 'least_squares' or 'bias', got {mode!r}")
    if not batches:
        raise ValueError("readout correction needs at least one batch of real inputs")
    work = copy.deepcopy(model).eval()
    sites = _activation_sites(work)
    device = next(work.parameters()).device
    batches = [_model_inputs(b, device) for b in batches]
    consumers = _linear_consumers(work, sites, batches[0])
    unread = [name for name, _ in sites if name not in consumers]
    if len(unread) == len(sites):
        raise ValueError("no linear layer reads any activation's output directly: there is no readout to fit")
    if unread:
        logger.warning("no linear layer reads %s directly: swapped for ReLU without a readout fit", ", ".join(unread))
    relu_hooks = []
    for name, site in sites:
        if name not in consumers:
            relu_hooks.append(site.register_forward_hook(lambda m, i, o: torch.relu(i[0])))
            continue
        rows: list[torch.Tensor] = []
        mask: dict[str, torch.Tensor | None] = {"m": None}

        def grab(module, inputs):
            x = inputs[0]
            m = mask["m"]
            x = x[m.bool()] if _masked(x, m) else x.reshape(-1, x.shape[-1])
            if sum(r.shape[0] for r in rows) < max_rows:
                rows.append(x.detach().double().cpu())

        handle = site.register_forward_pre_hook(grab)
        for batch in batches:
            mask["m"] = batch.get("attention_mask")
            work(**batch)
        handle.remove()
        x = torch.cat(rows)[:max_rows]
        reader = consumers[name]
        weight = _weight_in_out(reader).cpu()
        bias = reader.bias.detach().double().cpu() if reader.bias is not None else torch.zeros(weight.shape[1], dtype=torch.float64)
        original = site(x.to(device)).double().cpu()  # the activation being replaced, in float64
        relu = torch.relu(x)
        if mode == "bias":
            bias = bias + (original - relu).mean(0) @ weight
        else:
            target = original @ weight + bias
            features = torch.cat([relu, torch.ones(relu.shape[0], 1, dtype=torch.float64)], dim=1)
            gram = features.T @ features
            rho = ridge * gram.diagonal().mean()
            prior = torch.cat([weight, bias[None]], dim=0)
            solution = torch.linalg.solve(gram + rho * torch.eye(gram.shape[0], dtype=torch.float64),
                                          features.T @ target + rho * prior)
            weight, bias = solution[:-1], solution[-1]
        _store_weight(reader, weight.to(device), bias.to(device))
        # From here on this site computes ReLU, so the next sites see the corrected network's inputs.
        relu_hooks.append(site.register_forward_hook(lambda m, i, o: torch.relu(i[0])))
    for handle in relu_hooks:
        handle.remove()
    relu_model, report = relu_ize(work, inplace=True, include_gelu=True)
    return relu_model, report
