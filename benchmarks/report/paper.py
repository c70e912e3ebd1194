"""The Paper tables section (and scripts/reproduce.py's own report): Table I, Fig. 3, Table II, the τ × η grid."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from benchmarks.report.tables import Index, Results, groups, mean_std, num, source_line, sources_of, table, topic

PAPER_VARIANTS = {"gelu": "GELU", "relu": "ReLU", "kgelu-uniform": "λ-GELU, uniform init", "kgelu-increasing": "λ-GELU, increasing init",
                  "kgelu-decreasing": "λ-GELU, decreasing init", "kgelu-annealed": "λ-GELU, annealed (uniform init)"}
SWAP_VARIANTS = {"gelu": "GELU → ReLU (direct swap)", "kgelu-annealed": "λ-GELU annealed → ReLU",
                 "kgelu-uniform": "λ-GELU not annealed (uniform init) → ReLU"}
INIT_MODES = ("uniform", "increasing", "decreasing")
DEFAULT_CELL = ("0.1", "10")  # reproduce.py's (and KGeluTrainingArguments') τ and η


def _preset(command: str) -> str:
    m = re.search(r"--preset[ =](\w+)", command)
    return m.group(1) if m else "cpu"


def _setting(row: dict) -> tuple[str, str]:
    name, _, variant = row["variant"].partition("/")
    return name, variant


def _grid_cell(variant: str) -> tuple[str, str]:
    m = re.fullmatch(r"tau=([\d.e+-]+) eta=([\d.e+-]+)", variant)
    return m.group(1), m.group(2)


def _per_setting(rows: list[dict], idx: Index, what: str, name: str, variants: dict[str, str], prefix: str,
                 cells: Callable) -> tuple[str | None, list]:
    """One setting's table body: per variant that has the `prefix…` metric, its label and
    cells(get, metric), where get(m) is the variant's row of metric m. Also returns that metric."""
    metric = next((r["metric"] for r in rows if r["what"] == what and _setting(r)[0] == name and r["metric"].startswith(prefix)), None)
    body = []
    for variant, text in variants.items() if metric else ():
        get = functools.partial(idx.get, what, f"{name}/{variant}")
        if get(metric):
            body.append(([text, *cells(get, metric)], [get(metric)]))
    return metric, body


def paper_tables(rows: list[dict]) -> str:
    """The tables of one preset from its paper_* rows (also scripts/reproduce.py's own report)."""
    settings = {}  # name -> shape ("title — description"), in order
    for r in rows:
        settings.setdefault(_setting(r)[0], r["shape"])
    title = {name: shape.split(" — ")[0] for name, shape in settings.items()}
    idx = Index(rows, ("what", "variant", "metric"))
    one_run = len(sources_of(rows)) == 1
    out = [(source_line(rows) + "\n\n" if one_run else "") + "Sizes:\n\n"
           + "\n".join(f"- `{name}`: {shape.partition(' — ')[2]}" for name, shape in settings.items())]
    tab = functools.partial(table, cite=not one_run)  # one run: its source once, above

    out.append("#### Table I — training (mean ± std over seeds)\n\nBest validation score and the epoch it was reached; mean λ "
               "is the mean over sites of λ at the end of training for the learned runs (at the anneal switch for the "
               "annealed run); drift D is the mean over epoch boundaries of the mean |Δλ| per site between consecutive "
               "epochs (learning phase only).")
    for name in settings:
        score, body = _per_setting(rows, idx, "paper_table1", name, PAPER_VARIANTS, "best_val_", lambda get, m: [
            mean_std(get("seeds"), 0), mean_std(get(m)), mean_std(get("best_epoch"), 1), mean_std(get("mean_lambda"), 3),
            mean_std(get("drift"))])
        if body:
            out.append(f"**{title[name]}** (`{name}`)\n\n" + tab(
                ["run", "seeds", score.replace("_", " "), "epoch", "mean λ", "drift D"], body))

    out.append("#### Layerwise λ and robustness to the init profile (Fig. 3)\n\nλ per site at the end of training, mean over "
               "seeds, for the three init profiles (uniform λ = 1.05; increasing/decreasing: linear from 1.05 to 2.0 across "
               "depth), and Spearman ρ between the profiles of two init modes of the same seed (mean ± std over seeds; "
               "ρ = 1: same ranking of layers).")
    for name in settings:
        sites = list(dict.fromkeys(r["metric"].removeprefix("lambda ") for r in rows
                                   if r["what"] == "paper_fig3" and _setting(r)[0] == name))
        if not sites:
            continue
        body = [([f"`{site}`", *(mean_std(idx.get("paper_fig3", f"{name}/{m}", f"lambda {site}"), 3) for m in INIT_MODES)],
                 [idx.get("paper_fig3", f"{name}/{m}", f"lambda {site}") for m in INIT_MODES]) for site in sites]
        rho = []
        for pair in ("uniform vs increasing", "uniform vs decreasing", "increasing vs decreasing"):
            seeds = [r for r in rows if r["what"] == "paper_fig3_rho" and r["variant"] == f"{name}/{pair}"
                     and r["metric"].startswith("spearman_rho seed")]
            main = idx.get("paper_fig3_rho", f"{name}/{pair}", "spearman_rho")
            rho.append(([pair, mean_std(main, 3), ", ".join(num(float(r["p50"]), 2) for r in seeds)], [main]))
        out.append(f"**{title[name]}**\n\n" + tab(["site", *INIT_MODES], body) + "\n\n"
                   + tab(["Spearman ρ", "mean ± std", "per seed"], rho))

    out.append("#### Table II — ReLU substitution after training (mean ± std over seeds)\n\nThe validation score with the "
               "trained activation and after replacing every activation by ReLU, on the same data: the GELU model swapped "
               "directly, the λ-GELU model after annealing to λ* (ε = 0.005, gate-L1 bound: λ* ≈ 159.6; λ learned for the "
               "first 25 % of the steps, then annealed), and for reference the λ-GELU models that learned λ without annealing.")
    for name in settings:
        loss = any(r["metric"] == "change_val_loss" and _setting(r)[0] == name for r in rows if r["what"] == "paper_table2")
        original, body = _per_setting(rows, idx, "paper_table2", name, SWAP_VARIANTS, "original_", lambda get, m: [
            mean_std(get(m)), mean_std(get("after_relu_swap")), mean_std(get("change"))] + ([mean_std(get("change_val_loss"))] if loss else []))
        if body:
            headers = ["model", original.replace("_", " "), "after ReLU swap", "change"] + (["change of val loss"] if loss else [])
            out.append(f"**{title[name]}**\n\n" + tab(headers, body))

    grid = [r for r in rows if r["what"] == "paper_grid"]
    if grid:
        out.append(grid_tables(grid, idx, tab))
    return "\n\n".join(out)


def grid_tables(grid: list[dict], idx: Index, tab: Callable) -> str:
    name = _setting(grid[0])[0]
    cells = {_grid_cell(_setting(r)[1]) for r in grid}
    taus = sorted({t for t, _ in cells}, key=float)
    etas = sorted({e for _, e in cells}, key=float)

    def get(tau, eta, metric):
        return idx.get("paper_grid", f"{name}/tau={tau} eta={eta}", metric)

    def grid_table(metric, digits):
        body = [([f"τ = {tau}", *(mean_std(get(tau, eta, metric), digits) for eta in etas)], [get(tau, eta, metric) for eta in etas])
                for tau in taus]
        return tab(["", *(f"η = {eta}" for eta in etas)], body)

    score = next((r["metric"] for r in idx.rows.values() if r["what"] == "paper_table1" and r["variant"] == f"{name}/gelu"
                  and r["metric"].startswith("best_val_")), "best_val_score")
    score_text = score.replace("_", " ").replace("val", "validation")
    return (f"#### τ × η grid (§IV-A) on {name}\n\nλ-GELU (uniform init, λ learned throughout) for each temperature τ and θ "
            f"learning-rate multiplier η; GELU's {score_text} over the same seeds: "
            f"{mean_std(idx.get('paper_table1', f'{name}/gelu', score))}.\n\n"
            f"Drift D (mean over epochs; lower = steadier hardness):\n\n{grid_table('drift', 4)}\n\n"
            f"ΔBVS = {score_text} of λ-GELU − that of GELU, same seed:\n\n{grid_table('delta_bvs', 4)}\n\n"
            f"Mean λ at the end of training:\n\n{grid_table('mean_lambda', 3)}\n\n" + grid_reading(taus, etas, get))


def grid_reading(taus, etas, get: Callable) -> str:
    """Which cell has the best mean ΔBVS, and whether the default is within one seed std of it."""
    cells = [(t, e) for t in taus for e in etas if get(t, e, "delta_bvs")]
    default = get(*DEFAULT_CELL, "delta_bvs")
    if not cells or default is None:
        return ""
    mean = lambda t, e, m="delta_bvs": float(get(t, e, m)["p50"])  # noqa: E731
    best = max(cells, key=lambda c: mean(*c))
    std = float(default["p80"]) - float(default["p50"]) if default["p80"] else 0.0
    text = (f"Automatic reading: the best mean ΔBVS is at τ = {best[0]}, η = {best[1]} ({mean(*best):+.4f}); the default "
            f"τ = {DEFAULT_CELL[0]}, η = {DEFAULT_CELL[1]} has {mean(*DEFAULT_CELL):+.4f} (seed std {std:.4f}), drift "
            f"{mean(*DEFAULT_CELL, 'drift'):.4f} vs {mean(*best, 'drift'):.4f}. ")
    if best == DEFAULT_CELL or mean(*best) - mean(*DEFAULT_CELL) <= max(std, 1e-9):
        return text + "The default is within one seed standard deviation of the best cell: nothing here says it is wrong."
    return text + "The best cell beats the default by more than one seed standard deviation at this size."


def section(res: Results) -> str:
    intro = ("The paper's experiments on the offline data here (`scripts/reproduce.py`): per setting GELU, ReLU, λ-GELU "
             "from three init profiles (λ learned throughout) and λ-GELU annealed to λ*, over seeds; λ-GELU at τ = 0.1, "
             "η = 10 (θ at lr × η, no weight decay). `--update-docs` appends the rows to the machine kind's CSV and "
             "regenerates this file. Seed aggregates: the CSV's p50 is the mean over seeds, p20 / p80 the mean ∓ one "
             "standard deviation.")
    parts = []
    for (kind, preset), rows in groups([dict(r, preset=_preset(r["command"])) for r in res.of(
            "paper_table1", "paper_fig3", "paper_fig3_rho", "paper_table2", "paper_grid")], "kind", "preset").items():
        parts.append(f"### Preset `{preset}`\n\n" + paper_tables(rows))
    return topic("Paper tables", intro, parts)
