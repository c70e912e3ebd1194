"""Hardness λ: targets from a tolerance, init profiles across depth, profiles, drift, Spearman ρ."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .modules import DEFAULT_LAMBDA_INIT, check_lambda, check_tau, find_sites

# sup_x |x·Φ(λx) − ReLU(x)| = SUP_CONSTANT / λ (attained where the derivative of x·Φ(−|x|λ) vanishes).
ACT_SUP_CONSTANT = 0.169971
GATE_L1_CONSTANT = math.sqrt(2.0 / math.pi)

BOUNDS = ("gate_l1", "act_sup", "act_l1")
INIT_MODES = ("uniform", "increasing", "decreasing")
DEFAULT_LAMBDA_RANGE = (1.05, 2.0)


def _check_bound(bound: str) -> str:
    if bound not in BOUNDS:
        raise ValueError(f"unknown bound {bound!r}: choose one of {', '.join(BOUNDS)}")
    return bound


def target_lambda(tolerance: float, bound: str = "gate_l1") -> float:
    """λ* for a tolerance ε under a closed-form bound (all exact):

    gate_l1: ‖Φ(λ·) − H‖₁ = √(2/π)/λ;  act_sup: sup|xΦ(λx) − ReLU(x)| = 0.169971/λ;
    act_l1: ∫|xΦ(λx) − ReLU(x)|dx = 1/(2λ²).  A tolerance looser than GELU's own gives λ* = 1.
    """
    _check_bound(bound)
    if not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f"tolerance ε must be a finite number > 0, got {tolerance!r}")
    if bound == "gate_l1":
        lam = GATE_L1_CONSTANT / tolerance
    elif bound == "act_sup":
        lam = ACT_SUP_CONSTANT / tolerance
    else:
        lam = 1.0 / math.sqrt(2.0 * tolerance)
    return max(1.0, lam)


def tolerance_at(lam: float, bound: str = "gate_l1") -> float:
    """The ε that a hardness λ guarantees under `bound` (the inverse of `target_lambda`)."""
    _check_bound(bound)
    check_lambda(lam)
    if bound == "gate_l1":
        return GATE_L1_CONSTANT / lam
    if bound == "act_sup":
        return ACT_SUP_CONSTANT / lam
    return 1.0 / (2.0 * lam * lam)


def init_lambdas(
    num_sites: int,
    mode: str = "uniform",
    lambda_init: float = DEFAULT_LAMBDA_INIT,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
) -> list[float]:
    """Initial λ per site in depth order: one value, or linearly spaced up/down a range."""
    if mode not in INIT_MODES:
        raise ValueError(f"unknown init mode {mode!r}: choose one of {', '.join(INIT_MODES)}")
    check_lambda(lambda_init, "lambda_init")
    if len(lambda_range) != 2:
        raise ValueError(f"lambda_range must be (low, high), got {lambda_range!r}")
    low, high = (check_lambda(v, "lambda_range") for v in lambda_range)
    if low > high:
        raise ValueError(f"lambda_range must be (low, high) with low ≤ high, got {lambda_range!r}")
    if mode == "uniform" or num_sites <= 1:
        start = low if mode == "increasing" else high if mode == "decreasing" else lambda_init
        return [start] * num_sites
    step = (high - low) / (num_sites - 1)
    ramp = [low + i * step for i in range(num_sites)]
    return ramp if mode == "increasing" else ramp[::-1]


def _require_sites(model: nn.Module):
    sites = find_sites(model)
    if not sites:
        raise ValueError(
            f"{type(model).__name__} has no λ-GELU (KGELU) activation sites: build it from a config with "
            'hidden_act="kgelu" (GPT-2: activation_function="kgelu"), or convert a GELU model with '
            "hf_kgelu.convert_to_kgelu(model)"
        )
    return sites


def init_hardness(
    model: nn.Module,
    mode: str = "uniform",
    lambda_init: float = DEFAULT_LAMBDA_INIT,
    lambda_range: Sequence[float] = DEFAULT_LAMBDA_RANGE,
    tau: float | None = None,
) -> dict[str, float]:
    """Set every site's θ from an init profile (and optionally τ); returns the profile set."""
    sites = _require_sites(model)
    if tau is not None:
        check_tau(tau)
    values = init_lambdas(len(sites), mode, lambda_init, lambda_range)
    for (_, module), lam in zip(sites, values):
        if tau is not None:
            module.tau = float(tau)
        module.set_lambda(lam)
    return hardness_profile(model)


def hardness_profile(model: nn.Module, per_channel: bool = False) -> dict[str, float | torch.Tensor]:
    """λ of every site in depth order, keyed by the site's module name.

    Per-channel sites report their mean λ, or the whole λ tensor with `per_channel=True`.
    """
    profile: dict[str, float | torch.Tensor] = {}
    for name, module in _require_sites(model):
        lam = module.lam.detach().float().cpu()
        profile[name] = lam.clone() if per_channel and module.per_channel else lam.mean().item()
    return profile


def hardness_drift(previous: Mapping[str, float], current: Mapping[str, float]) -> float:
    """D: mean over sites of |λ_l(now) − λ_l(before)| (paper §IV-A)."""
    if set(previous) != set(current) or not current:
        raise ValueError("drift needs two profiles over the same, non-empty set of sites")
    return sum(abs(float(current[k]) - float(previous[k])) for k in current) / len(current)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ties share their average rank
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman_rho(a: Sequence[float] | Mapping[str, float], b: Sequence[float] | Mapping[str, float]) -> float:
    """Spearman ρ between two layerwise λ profiles (lists, or profiles over the same sites)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        if list(a) != list(b):
            raise ValueError("profiles must cover the same sites in the same order")
        a, b = list(a.values()), list(b.values())
    a, b = [float(v) for v in a], [float(v) for v in b]
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("Spearman ρ needs two sequences of the same length ≥ 2")
    ra, rb = _ranks(a), _ranks(b)
    mean = (len(a) - 1) / 2.0
    cov = sum((x - mean) * (y - mean) for x, y in zip(ra, rb))
    var_a = sum((x - mean) ** 2 for x in ra)
    var_b = sum((y - mean) ** 2 for y in rb)
    if var_a == 0 or var_b == 0:
        return float("nan")  # a constant profile has no ranking
    return cov / math.sqrt(var_a * var_b)
