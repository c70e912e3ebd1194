"""Hardness λ, pure math: λ↔θ, the checks, targets λ* from a tolerance ε, init profiles across depth,
drift between profiles, Spearman ρ. Nothing here touches a model (that is `hf_kgelu.modeling.sites`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from .ops import lambda_from_theta  # noqa: F401  (λ(θ) is the op's; θ(λ) is below)

DEFAULT_TAU = 0.1
DEFAULT_LAMBDA_INIT = 1.05

# sup_x |x·Φ(λx) − ReLU(x)| = SUP_CONSTANT / λ (attained where the derivative of x·Φ(−|x|λ) vanishes).
ACT_SUP_CONSTANT = 0.169971
GATE_L1_CONSTANT = math.sqrt(2.0 / math.pi)


def is_finite_number(value) -> bool:
    """A finite int or float (a bool is not a number here: `True` as τ is a mistake)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_tau(tau: float) -> float:
    if not is_finite_number(tau) or tau <= 0:
        raise ValueError(f"τ (tau) must be a finite number > 0, got {tau!r}")
    return float(tau)


def check_lambda(value: float, what: str = "λ") -> float:
    if not is_finite_number(value) or value < 1:
        raise ValueError(f"{what} must be a finite number ≥ 1 (λ = 1 is GELU, λ → ∞ is ReLU), got {value!r}")
    return float(value)


def theta_from_lambda(lam: torch.Tensor | float, tau: float) -> torch.Tensor | float:
    """θ = τ·log(expm1(λ − 1)), computed stably for λ − 1 from 1e-30 up to 1e30.

    For large y = λ − 1, log(expm1(y)) = y + log1p(−e^{−y}) avoids the overflow of expm1.
    A number gives a number (no tensor, so it works under a meta-device context); a tensor
    gives a float32 tensor on the same device.
    """
    if not isinstance(lam, torch.Tensor):
        y = float(lam) - 1.0
        if not math.isfinite(y) or y <= 0:
            raise ValueError(f"λ must be finite and > 1 to be represented by a finite θ (λ = 1 is GELU), got {lam!r}")
        return tau * (y + math.log1p(-math.exp(-y)) if y > 20.0 else math.log(math.expm1(y)))
    y = lam.detach().to(torch.float64) - 1.0
    if not torch.isfinite(y).all() or (y <= 0).any():
        raise ValueError("λ must be finite and > 1 to be represented by a finite θ (λ = 1 is GELU)")
    log_expm1 = torch.where(y > 20.0, y + torch.log1p(-torch.exp(-y)), torch.log(torch.expm1(y)))
    return (tau * log_expm1).to(torch.float32)


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
