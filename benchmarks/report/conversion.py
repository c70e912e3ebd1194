"""The Conversion section (and scripts/convert_benchmark.py's own report): recipes × budgets per model, the ReLU-compatibility trace, per-channel hardness, sparsity."""

from __future__ import annotations

import re

from benchmarks.report.tables import Index, Results, groups, label, mean_std, num, short, table, topic

RECIPES = {
    "gelu-pretrained": "GELU (pretrained)", "a": "(a) direct swap", "e0": "(e0) readout fit, no training",
    "gelu-control": "GELU control (fine-tuned, same budget)", "b": "(b) swap + FT", "b+kd": "(b+KD) swap + FT + distill",
    "c": "(c) anneal (linear) → relu_ize", "c-data": "(c-data) (c), data-aware targets", "d": "(d) anneal (geometric) + distill",
    "e": "**(e) readout fit + FT** (`hf-kgelu convert`'s default)", "e+kd": "(e+KD) readout fit + FT + distill",
}


def _steps(budget: str) -> int:
    m = re.search(r"(\d+) steps", budget)
    return int(m.group(1)) if m else 0


def conversion_tables(res: Results) -> list[str]:
    parts = []
    rows = res.of("conversion")
    for (kind, model), block in groups([dict(r, model=r["shape"].split(" | ")[0]) for r in rows], "kind", "model").items():
        metric = block[0]["metric"]
        idx = Index(block, ("variant", "shape"))
        budgets = sorted({r["shape"].split(" | ")[1] for r in block}, key=_steps)
        body = []
        for (variant,), vrows in groups(block, "variant").items():
            cells = [label(RECIPES, variant)]
            for budget in budgets:
                value = idx.value(variant, f"{model} | {budget}")
                control = idx.value("gelu-control", f"{model} | {budget}")
                relative = f" ({(value / control - 1) * 100:+.2f} %)" if metric == "perplexity" and value and control and variant != "gelu-control" else ""
                # several seeds: mean ± std (p80 = mean + std); one: the value
                cells.append(mean_std(idx.get(variant, f"{model} | {budget}"), 4) + relative if value is not None else "")
            body.append((cells, vrows))
        better = ("lower is better; percentages against the GELU control at the same budget" if metric == "perplexity"
                  else "higher is better")
        parts.append(f"**{model}** ({metric}, {better}):\n\n"
                     + table(["recipe", *budgets], body))
    trace = res.of("conversion_trace")
    if trace:
        idx = Index(trace, ("shape", "variant", "metric"))
        body = [([shape.split(" | ")[1], *(f"{num(idx.value(shape, v, 'perplexity'), 4)} ({idx.value(shape, v, 'mean_lambda'):.3g})"
                                           for v in ("c", "c-data"))], srows)
                for (shape,), srows in groups(trace, "shape").items()]
        parts.append("**How early the model is ReLU-compatible**: perplexity of the ReLU-swapped copy during the 10 % GPT-2 "
                     "anneal (mean λ), closed-form λ* against data-aware per-site targets (`kgelu_bound=\"data\"`, ε = 1 % of "
                     "each site's E|ReLU(x)|):\n\n" + table(["GPT-2", "(c) closed-form λ*", "(c-data) data-aware λ*"], body))
    return parts


def per_channel_table(res: Results) -> list[str]:
    rows = res.of("per_channel")
    if not rows:
        return []
    idx = Index(rows)
    body = [([variant.replace("/", ", ") + " λ*", num(idx.value(variant, "kgelu_accuracy"), 4), num(idx.value(variant, "relu_accuracy"), 4),
              num(idx.value(variant, "mean_lambda_learned"), 3), num(idx.value(variant, "channel_spread_at_switch"), 2)], vrows)
            for (variant,), vrows in groups(rows, "variant").items()]
    return [f"**Per-channel against layerwise hardness**, trained from scratch ({rows[0]['shape']}; λ learned for the first "
            "25 %, then annealed), accuracy on 2000 test images:\n\n"
            + table(["run", "λ-GELU acc.", "ReLU acc. (after `relu_ize`)", "mean λ learned", "largest channel spread of λ at the switch"], body)]


def sparsity_table(res: Results) -> list[str]:
    rows = res.of("sparsity")
    if not rows:
        return []
    idx = Index(rows)
    body = []
    for (variant,), vrows in groups(rows, "variant").items():
        get = lambda m: idx.value(variant, m)  # noqa: E731
        dead = get("relu_dead_channels")
        body.append(([variant.replace("/", " "), f"{short(get('relu_exact_zeros_pct'))} %", num(get("relu_apoz_max"), 3),
                      f"{num(dead, 0)}/{num(get('channels'), 0)}", f"{short(get('gelu_exact_zeros_pct'))} %",
                      f"{short(get('gelu_near_zero_pct'))} %"], vrows))
    return ["**What the ReLU models buy: sparsity** (`hf-kgelu analyze` on the models `hf-kgelu convert` made, against "
            "their GELU originals). APoZ: per channel, the fraction of its outputs that are 0; dead: channels with APoZ ≥ "
            "0.99; near zero: |f| < 10⁻³ × the layer's mean |f|:\n\n"
            + table(["layer", "ReLU: exact zeros", "ReLU: APoZ max", "ReLU: dead ch.", "GELU: exact zeros", "GELU: near zero"], body)]


def section(res: Results) -> str:
    intro = ("A pretrained GELU model turned into a ReLU model on a small fine-tuning budget, by each recipe of "
             "`convert_gelu_to_relu`: (a) swap; (b) swap then fine-tune (the rival); (b+KD) with distillation from the "
             "GELU original; (c) GELU → λ-GELU at λ = 1, fine-tune while λ anneals linearly to λ* ≈ 160, `relu_ize`; "
             "(c-data) with data-aware targets; (d) a geometric anneal with distillation; (e0) swap, then a training-free "
             "ridge least-squares re-fit of the linear layer that reads each activation, layer by layer; (e) (e0) then "
             "fine-tune like (b); (e+KD) with distillation. Models: a byte-level GPT-2 (3 × 96) pretrained on the Python "
             "docs, a DeiT (4 × 64) on FashionMNIST, and the real all-MiniLM-L6-v2 (metric: mean cosine to the "
             "original's embeddings on held-out text; every trained recipe distils, an encoder has no task loss). "
             "Budgets: 1 %, 3 %, 10 % of the pretraining steps (MiniLM: 5, 15, 50 steps). One seed: DeiT's differences "
             "are within one standard error (0.8 points on 2000 images). Command: `python scripts/convert_benchmark.py`.")
    return topic("Conversion", intro, [*conversion_tables(res), *per_channel_table(res), *sparsity_table(res)])
