"""The annealing schedule: after a learned phase, λ moves linearly to a target λ*.

Steps count optimizer updates. With S total steps and an anneal start at the fraction a,
the switch step is s₀ = round(a·S) (halves up, at most S − 1 so at least one step anneals).
Optimizer steps 1..s₀ learn θ; at the end of step s₀ every θ is frozen and from then on

    λ_l(s) = λ_l(s₀) + (λ* − λ_l(s₀))·(s − s₀)/(S − s₀)        for s₀ < s ≤ S

is the hardness used during optimizer step s, so the last step trains at λ* and the trained
model ends exactly at λ*. The "geometric" shape moves log λ linearly instead,
λ_l(s) = λ_l(s₀)·(λ*/λ_l(s₀))^((s − s₀)/(S − s₀)): with λ* ≈ 160 the linear shape is at λ ≈ 17
after a tenth of the anneal (ReLU-like almost at once), the geometric one at λ ≈ 1.7, so the
network hardens evenly over the whole anneal (what a short conversion fine-tune needs). A site whose learned λ exceeds λ* moves down to it the same way.
Everything here is a pure function of the step, so a resumed run reproduces it bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..hardness import check_lambda

SHAPES = ("linear", "geometric")


def anneal_start_step(anneal_start: float, max_steps: int) -> int:
    """s₀ for an anneal start given as a fraction in [0, 1) of `max_steps` optimizer steps."""
    check_anneal_start(anneal_start)
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive number of optimizer steps, got {max_steps!r}")
    return min(math.floor(anneal_start * max_steps + 0.5), max_steps - 1)


def check_anneal_start(anneal_start: float) -> float:
    if not isinstance(anneal_start, (int, float)) or not math.isfinite(anneal_start) or not 0 <= anneal_start < 1:
        raise ValueError(
            f"anneal start must be a fraction of the optimizer steps in [0, 1), got {anneal_start!r} "
            "(None learns λ throughout without annealing)"
        )
    return float(anneal_start)


@dataclass(frozen=True)
class AnnealingSchedule:
    """The λ schedule of one run: switch at `start_step`, reach `target_lambda` at `max_steps`,
    linearly in λ ("linear", the paper's) or in log λ ("geometric")."""

    start_step: int
    max_steps: int
    target_lambda: float
    shape: str = "linear"

    def __post_init__(self):
        if not isinstance(self.max_steps, int) or self.max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {self.max_steps!r}")
        if not isinstance(self.start_step, int) or not 0 <= self.start_step < self.max_steps:
            raise ValueError(f"start_step must be an int in [0, max_steps), got {self.start_step!r} (max_steps={self.max_steps})")
        check_lambda(self.target_lambda, "target λ*")
        if self.shape not in SHAPES:
            raise ValueError(f"anneal shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")

    @classmethod
    def from_fraction(cls, anneal_start: float, max_steps: int, target_lambda: float, shape: str = "linear") -> AnnealingSchedule:
        return cls(anneal_start_step(anneal_start, max_steps), max_steps, float(target_lambda), shape)

    def is_annealing(self, step: int) -> bool:
        """Whether optimizer step `step` (1-based) runs with a scheduled, frozen λ."""
        return step > self.start_step

    def progress(self, step: int) -> float:
        """Fraction of the way from λ(s₀) to λ* at step `step`: 0 up to s₀, 1 from S on."""
        if step <= self.start_step:
            return 0.0
        return min(step - self.start_step, self.max_steps - self.start_step) / (self.max_steps - self.start_step)

    def lambda_at(
        self, step: int, start_lambda: torch.Tensor | float, target: torch.Tensor | float | None = None
    ) -> torch.Tensor | float:
        """λ(step) from the λ learned by the switch, computed in float64.

        `target` overrides λ* for one site (data-aware targets: a number, or one per channel).
        At step ≥ S the result is exactly the target (no rounding from the interpolation)."""
        target = self.target_lambda if target is None else target
        if isinstance(target, torch.Tensor) and not isinstance(start_lambda, torch.Tensor):
            start_lambda = torch.tensor(float(start_lambda), dtype=torch.float64)
        if step >= self.max_steps:
            if isinstance(target, torch.Tensor):
                return torch.broadcast_tensors(target.to(torch.float64), start_lambda.to(torch.float64))[0].clone()
            if isinstance(start_lambda, torch.Tensor):
                return torch.full_like(start_lambda, target, dtype=torch.float64)
            return target
        fraction = self.progress(step)
        if isinstance(target, torch.Tensor):
            target = target.to(torch.float64)
        if isinstance(start_lambda, torch.Tensor):
            start = start_lambda.to(torch.float64)
            if self.shape == "geometric":
                return start * torch.pow(target / start, fraction)
            return start + (target - start) * fraction
        if self.shape == "geometric":
            return float(start_lambda) * (target / float(start_lambda)) ** fraction
        return float(start_lambda) + (target - float(start_lambda)) * fraction
