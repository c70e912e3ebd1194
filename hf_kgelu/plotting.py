"""`plot_hardness`: λ of every site over the optimizer steps of a run, anneal start marked."""

from __future__ import annotations

import os
from pathlib import Path

from .training.history import read_history


def plot_hardness(run: str | os.PathLike | dict, out_png: str | os.PathLike | None = None, title: str | None = None) -> Path:
    """Draw λ per site against optimizer steps from a run folder, a checkpoint folder, a
    `hardness_history.json` or an already-loaded history dict, and save it as a PNG.

    The overview has a logarithmic y axis (learned λ near 1 and λ* in the hundreds share one
    plot); with annealing, a linear panel beside it shows the learned phase alone. The switch
    step s₀ is a dashed vertical line and λ* a dotted horizontal one (one per site, in its colour,
    with data-aware targets). Per-channel sites
    show their mean with the min–max band. `out_png` defaults to `hardness.png` beside the
    history file. Returns the PNG's path.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, safe in threads and on servers
    import matplotlib.pyplot as plt

    if isinstance(run, dict):
        history, folder = run, Path(".")
    else:
        history = read_history(run)
        folder = Path(run) if Path(run).is_dir() else Path(run).parent
    out = Path(out_png) if out_png is not None else folder / "hardness.png"
    steps = history.get("steps", [])
    if not steps:
        raise ValueError("the hardness history has no recorded steps to plot")
    sites = list(history.get("sites") or steps[-1]["lambda"])

    start, target = history.get("anneal_start_step"), history.get("target_lambda")
    site_targets = history.get("target_lambdas") or {}
    learned = [e for e in steps if start is not None and e["step"] <= start]
    # A second panel on a linear scale shows the learned profile that the log-scale overview flattens.
    panels = 2 if len(learned) >= 2 else 1
    figure, all_axes = plt.subplots(1, panels, figsize=(8 + 5 * (panels - 1), 4.5), dpi=120, squeeze=False)
    overview = all_axes[0][-1]
    colors = plt.get_cmap("viridis")
    for axes, entries, full in ((overview, steps, True), (all_axes[0][0], learned, False))[:panels]:
        for index, site in enumerate(sites):
            points = [(e["step"], e["lambda"][site]) for e in entries if site in e.get("lambda", {})]
            if not points:
                continue
            x, y = zip(*points)
            color = colors(index / max(1, len(sites) - 1))
            axes.plot(x, y, color=color, linewidth=1.4, label=site if full else None)
            if full and site in site_targets:  # data-aware runs: each site has its own λ*
                axes.axhline(site_targets[site], color=color, linestyle=":", linewidth=0.9)
            if history.get("per_channel", {}).get(site):
                low = [e["lambda_min"][site] for e in entries if site in e.get("lambda_min", {})]
                high = [e["lambda_max"][site] for e in entries if site in e.get("lambda_max", {})]
                if len(low) == len(x) == len(high):
                    axes.fill_between(x, low, high, color=color, alpha=0.15, linewidth=0)
        if start is not None:
            axes.axvline(start, color="black", linestyle="--", linewidth=1, label=f"anneal start (step {start})" if full else None)
        axes.set_xlabel("optimizer step")
        axes.set_ylabel("hardness λ")
        axes.grid(True, which="both", alpha=0.25)
    if target is not None and not site_targets:
        overview.axhline(target, color="gray", linestyle=":", linewidth=1, label=f"λ* = {target:.4g}")
    overview.set_yscale("log")
    overview.set_title(title or "λ-GELU hardness per site")
    overview.legend(fontsize="small", ncol=1 + len(sites) // 12, loc="best")
    if panels == 2:
        all_axes[0][0].set_title("learned phase (up to the anneal start)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out)
    plt.close(figure)
    return out
