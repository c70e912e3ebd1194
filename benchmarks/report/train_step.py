"""The Training step section: each model's step per variant, and where the device idles."""

from __future__ import annotations

from benchmarks.report.tables import Index, Results, groups, label, model_rank, num, ratio, spread, table, topic

STEP_VARIANTS = {"gelu": "GELU", "kgelu": "**λ-GELU (ours)**", "kgelu-torch": "λ-GELU, torch path", "naive": "naive λ-GELU",
                 "kgelu-triton-launch": "λ-GELU, Triton's launcher", "kgelu-python-launcher": "λ-GELU, Python site launcher",
                 "kgelu-op": "λ-GELU through the op (C++ site path off)"}


def step_tables(res: Results) -> list[str]:
    parts = []
    rows = res.of("train_step", "train_step_compiled")
    for (kind,), krows in groups(rows, "kind").items():
        idx = Index(krows, ("what", "shape", "variant", "metric"))
        body = []
        blocks = groups(krows, "shape", "what")
        for (shape, what) in sorted(blocks, key=lambda k: (model_rank(k[0]), k[1])):
            variants = sorted(groups(blocks[(shape, what)], "variant"), key=lambda v: list(STEP_VARIANTS).index(v[0])
                              if v[0] in STEP_VARIANTS else 99)
            gelu_peak = idx.value(what, shape, "gelu", "peak_gib")
            for (variant,) in variants:
                get = lambda m: idx.get(what, shape, variant, m)  # noqa: E731
                ratio_row = get("ratio_vs_gelu")
                body.append(([shape, "compiled" if what.endswith("compiled") else "eager", label(STEP_VARIANTS, variant),
                              num(idx.value(what, shape, variant, "step_ms")), num(idx.value(what, shape, variant, "host_ms")),
                              num(idx.value(what, shape, variant, "kernel_ms")), spread(ratio_row, 3),
                              num(idx.value(what, shape, variant, "peak_gib")),
                              ratio(idx.value(what, shape, variant, "peak_gib"), gelu_peak)],
                             [get("step_ms"), ratio_row, get("peak_gib")]))
        parts.append(table(["model, batch", "mode", "variant", "step ms", "host ms", "kernels ms", "step / GELU's, same round",
                            "peak GiB", "peak / GELU's"], body, "lllrrrrrr"))
    for (kind, shape), grows in groups(res.of("step_gaps"), "kind", "shape").items():
        idx = Index(grows)
        body = [([label(STEP_VARIANTS, v), *(f"{num(idx.value(v, f'{p}_busy_ms'))} / {num(idx.value(v, f'{p}_idle_ms'))}"
                                             for p in ("forward", "backward", "optimizer"))], vrows)
                for (v,), vrows in groups(grows, "variant").items()]
        parts.append(f"**Where the device idles** ({shape}, `--gaps`): device busy / idle ms per step in each phase, p50 "
                     "of interleaved rounds (a marker kernel starts each phase):\n\n"
                     + table(["variant", "forward", "backward", "optimizer"], body))
    return parts


def section(res: Results) -> str:
    intro = ("One training step of models built from configs (benchmarks/models.py): bf16 autocast, fused AdamW. All "
             "variants of a model are in memory and run in interleaved rounds, one step of each per round in a rotating "
             "order; \"step / GELU's\" is taken per round: p50 (p20–p80). A step ends synchronised, as a Trainer step "
             "does when it reads the loss, so host time shows wherever it exceeds the device's. Host ms: the time to "
             "issue the step. Kernels: device time in kernels per step (torch.profiler). Peak: memory above the "
             "resting allocation of weights and optimizer state. Command: `python -m benchmarks.train_step` (GPT-2 "
             "small, BERT-base, DeiT-small in one call; `--compile`, `--variants`, `--gaps`).")
    return topic("Training step", intro, step_tables(res))
