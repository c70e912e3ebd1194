"""Data-aware annealing targets: the smallest λ per site that is ReLU-close on the site's real inputs.

The closed-form bounds (`hf_kgelu.hardness.target_lambda`) hold for every input distribution,
so they ask for λ* ≈ 160 at ε = 0.005. A trained layer only ever sees its own pre-activations
x, and for them the swap error has an exact form:

    |x·Φ(λx) − ReLU(x)| = |x|·Φ(−λ|x|)          (for x > 0: x − xΦ(λx) = xΦ(−λx))

which falls strictly as λ grows. So

    e(λ) = E_x[ |x|·Φ(−λ|x|) ]

is monotone in λ, and the smallest λ with e(λ) ≤ ε is found by bisection. ε is absolute, or
relative to the layer's output scale E|ReLU(x)| (the mean magnitude of what the ReLU layer will
emit): `relative=True`, the default, makes the target independent of the layer's scale. For
x ~ N(0, σ²) and large λ, e(λ)/E|ReLU(x)| → 1/(2λ²σ²): ε = 0.005 relative asks for λσ ≈ 10.

`PreActivationSampler` collects the inputs of every λ-GELU site with forward pre-hooks and keeps a
bounded, uniform sample per site (priority sampling: every value seen gets a random key and the
`max_values` largest keys stay), never all activations. A per-channel site keeps whole rows, so
it gets one target per channel (`per_channel=True`) or one for the site.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..hardness import ACT_SUP_CONSTANT
from ..modeling.module import KGELU
from ..modeling.sites import find_sites

DEFAULT_MAX_VALUES = 1 << 16
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


class PreActivationSampler:
    """Forward pre-hooks on λ-GELU sites that keep a bounded uniform sample of their inputs.

        with PreActivationSampler(find_sites(model)) as sampler:
            for batch in batches:
                model(**batch)
        samples = sampler.samples()   # {site name: (rows, channels) float64 tensor}

    A site with one λ keeps up to `max_values` single values (shape (n, 1)); a per-channel site
    keeps up to `max_values // channels` rows (at least 64) of its last dimension. The keys come
    from a generator seeded with `seed`, so the same batches give the same sample.
    """

    def __init__(self, sites: Sequence[tuple[str, KGELU]], max_values: int = DEFAULT_MAX_VALUES, seed: int = 0):
        if not sites:
            raise ValueError("no λ-GELU sites to sample: the model has no KGELU activation")
        if not isinstance(max_values, int) or max_values < 1:
            raise ValueError(f"max_values must be a positive int, got {max_values!r}")
        self.sites = list(sites)
        self.max_values = max_values
        self.generator = torch.Generator().manual_seed(seed)
        self._keys: dict[str, torch.Tensor] = {}
        self._rows: dict[str, torch.Tensor] = {}
        self.seen: dict[str, int] = {name: 0 for name, _ in self.sites}
        self._handles = []

    def _capacity(self, site: KGELU) -> int:
        channels = site.num_channels or 1
        return self.max_values if channels == 1 else max(64, self.max_values // channels)

    def _hook(self, name: str, site: KGELU) -> Callable:
        capacity = self._capacity(site)

        def hook(module, inputs):
            x = inputs[0].detach()
            rows = x.reshape(-1, site.num_channels) if site.per_channel else x.reshape(-1, 1)
            rows = rows.to(device="cpu", dtype=torch.float64)
            self.seen[name] += rows.shape[0]
            keys = torch.rand(rows.shape[0], generator=self.generator, dtype=torch.float64)
            if name in self._keys:
                keys = torch.cat([self._keys[name], keys])
                rows = torch.cat([self._rows[name], rows])
            if keys.numel() > capacity:
                keys, order = keys.topk(capacity)
                rows = rows[order]
            self._keys[name], self._rows[name] = keys, rows

        return hook

    def __enter__(self) -> PreActivationSampler:
        for name, site in self.sites:
            self._handles.append(site.register_forward_pre_hook(self._hook(name, site)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def samples(self) -> dict[str, torch.Tensor]:
        """{site name: sampled inputs as a float64 (rows, channels) tensor}, in depth order."""
        missing = [name for name, _ in self.sites if name not in self._rows]
        if missing:
            raise RuntimeError(
                f"λ-GELU site(s) {', '.join(missing[:3])} saw no input: run the model forward on at least one batch "
                "inside the `with PreActivationSampler(...)` block"
            )
        return {name: self._rows[name] for name, _ in self.sites}


def swap_error(samples: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """e(λ) = mean over rows of |x|·Φ(−λ|x|) = E|x·Φ(λx) − ReLU(x)|, per column of `samples`
    ((rows, channels); λ a number or one value per channel)."""
    magnitude = samples.abs()
    lam = torch.as_tensor(lam, dtype=samples.dtype)
    return (magnitude * 0.5 * torch.erfc(magnitude * lam * _INV_SQRT2)).mean(0)


def output_scale(samples: torch.Tensor) -> torch.Tensor:
    """E|ReLU(x)| per column: the mean magnitude of what the ReLU layer emits."""
    return samples.clamp_min(0).mean(0)


def smallest_lambda(
    samples: torch.Tensor,
    tolerance: float,
    *,
    relative: bool = True,
    per_channel: bool = False,
    iterations: int = 64,
) -> float | torch.Tensor:
    """The smallest λ ≥ 1 with e(λ) ≤ ε on `samples` (ε·E|ReLU(x)| when `relative`), by bisection
    on log λ. One λ for all columns (the error averaged over every value), or one per column with
    `per_channel`. A column that GELU (λ = 1) already meets gets λ = 1; an all-zero column too."""
    if not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f"tolerance ε must be a finite number > 0, got {tolerance!r}")
    samples = samples.to(torch.float64)
    if samples.dim() == 1:
        samples = samples[:, None]
    if samples.shape[0] == 0:
        raise ValueError("no samples to choose λ from")
    if not per_channel:
        samples = samples.reshape(-1, 1)
    budget = tolerance * (output_scale(samples) if relative else torch.ones(samples.shape[1], dtype=torch.float64))
    # sup_x |x·Φ(λx) − ReLU(x)| = 0.169971/λ bounds the mean, so this λ always meets a positive budget.
    ceiling = torch.where(budget > 0, ACT_SUP_CONSTANT / budget.clamp_min(1e-300), torch.ones_like(budget)).clamp_min(1.0) * 1.01
    low = torch.zeros_like(budget)  # log λ
    high = ceiling.log()
    done = swap_error(samples, torch.ones_like(budget)) <= budget  # GELU is already close enough
    for _ in range(iterations):
        middle = (low + high) / 2
        meets = swap_error(samples, middle.exp()) <= budget
        high = torch.where(meets, middle, high)
        low = torch.where(meets, low, middle)
    lam = torch.where(done, torch.ones_like(high), high.exp())
    return lam if per_channel else float(lam.item())


def data_aware_targets(
    model: nn.Module,
    batches: Iterable[Mapping] | Callable[[], None],
    tolerance: float,
    *,
    relative: bool = True,
    per_channel: bool = False,
    max_values: int = DEFAULT_MAX_VALUES,
    seed: int = 0,
    sites: Sequence[tuple[str, KGELU]] | None = None,
) -> dict[str, float | list[float]]:
    """Per-site annealing targets from `model`'s pre-activations on `batches`.

    `batches` are dicts of model inputs (already on the model's device), or a function that runs
    the forward passes itself. The model runs in eval mode under `no_grad` (its mode is restored).
    Returns {site name: λ} (with `per_channel`, per-channel sites get a list of λ per channel).
    """
    sites = list(sites) if sites is not None else find_sites(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), PreActivationSampler(sites, max_values=max_values, seed=seed) as sampler:
            if callable(batches):
                batches()
            else:
                for batch in batches:
                    model(**batch)
    finally:
        model.train(was_training)
    targets: dict[str, float | list[float]] = {}
    for (name, site), values in zip(sites, sampler.samples().values()):
        if per_channel and site.per_channel:
            targets[name] = smallest_lambda(values, tolerance, relative=relative, per_channel=True).tolist()
        else:
            targets[name] = smallest_lambda(values, tolerance, relative=relative)
    return targets
