"""The Multi-GPU section: throughput and scaling, θ across ranks, 1 vs N processes, the scripts."""

from __future__ import annotations

import re

from benchmarks.report.tables import Index, Results, groups, model_rank, num, ratio, table, topic

ENGINES = {"ddp": "DDP", "fsdp": "FSDP2"}


def _engine(tag: str) -> tuple[str, int]:
    m = re.fullmatch(r"([a-z]+?)(\d+)", tag)
    return (ENGINES.get(m.group(1), m.group(1)), int(m.group(2))) if m else (tag, 0)


def throughput_table(res: Results) -> list[str]:
    parts = []
    for (kind,), rows in groups(res.of("multi_gpu_throughput"), "kind").items():
        idx = Index(rows, ("shape", "variant", "metric"))
        body = []
        for (shape,), block in sorted(groups(rows, "shape").items(), key=lambda kv: model_rank(kv[0][0])):
            unit = next(r["metric"] for r in block if r["metric"].endswith("_per_s"))
            for tag in dict.fromkeys(r["variant"].split("/")[0] for r in block):
                k, g = (idx.get(shape, f"{tag}/{a}", unit) for a in ("kgelu", "gelu"))
                world = idx.value(shape, f"{tag}/kgelu", "world_size") or _engine(tag)[1]
                one = [idx.value(shape, f"ddp1/{a}", unit) for a in ("kgelu", "gelu")]
                scaling = (" / ".join(ratio(float(r["p50"]), world * b, 2) for r, b in zip((k, g), one, strict=True))
                           if world > 1 and k and g and all(one) else "—")
                engine = _engine(tag)[0]
                body.append(([shape.removesuffix(" per GPU"), engine, str(int(world)),
                              f"{float(k['p50']):,.0f}".replace(",", " ") if k else "–", f"{float(g['p50']):,.0f}".replace(",", " ") if g else "–",
                              scaling, ratio(idx.value(shape, f"{tag}/kgelu", "step_ms"), idx.value(shape, f"{tag}/gelu", "step_ms"), 2)],
                             [k, g]))
            unit_text = unit.replace("_per_s", "/s")
            parts.append(f"**Throughput** ({unit_text}; every process's batch counted):\n\n" + table(
                ["model", "engine", "GPUs", "λ-GELU", "GELU", "scaling efficiency λ-GELU / GELU", "λ-GELU / GELU step time"], body, "lllrrrr"))
            body = []
    return parts


def exactness_tables(res: Results) -> list[str]:
    parts = []
    sync = res.of("multi_gpu_sync")
    if sync:
        idx = Index(sync, ("variant", "shape", "metric"))
        body = [([_engine(tag)[0] + f" × {_engine(tag)[1]}", shape.removesuffix(" per GPU"), num(idx.value(tag, shape, "theta_sync_checks"), 0),
                  num(idx.value(tag, shape, "theta_sync_max_diff"), 1), num(idx.value(tag, shape, "anneal_switch_step"), 0),
                  num(idx.value(tag, shape, "theta_local_numel"), 0)], rows)
                for (tag, shape), rows in groups(sync, "variant", "shape").items()]
        parts.append("**θ in the timed runs** (the λ-GELU run of each launch): θ compared across ranks by "
                     "`check_theta_sync` at logged steps, and the step annealing started on:\n\n"
                     + table(["engine", "model", "θ checks", "largest θ difference", "anneal switch step", "θ numel per rank"], body))
    rows = res.of("multi_gpu_exactness")
    idx = Index(rows)
    tags = [t for (t,) in groups(rows, "variant") if t != "ddp1"]  # each against ddp1
    if tags:
        checks = (("θ compared across ranks, every step", "theta_sync_checks", 0), ("anneal switch step", "anneal_switch_step", 0),
                  ("`save_pretrained` calls, rank 0 / rank 1", None, 0), ("resumed λ identical to uninterrupted (1 = yes)", "resume_lambda_identical", 0),
                  ("weights vs 1 GPU, largest abs difference", "max_abs_weight_diff_vs_1gpu", 3), ("largest \\|w\\|", "max_abs_weight", 1),
                  ("λ vs 1 GPU, largest relative difference", "max_rel_lambda_diff_vs_1gpu", 7))
        body = []
        for text, metric, digits in checks:
            if metric is None:
                cells = [f"{num(idx.value(t, 'saves_rank0'), 0)} / {num(idx.value(t, 'saves_rank1'), 0)}" for t in tags]
                used = [idx.get(t, "saves_rank0") for t in tags]
            else:
                cells = [_sci(idx.value(t, metric), digits) for t in tags]
                used = [idx.get(t, metric) for t in tags]
            body.append(([text, *cells], used))
        parts.append("**1 vs N processes, exactly** (a tiny annealed GPT-2, global batch 16 split over the processes, 24 "
                     "steps, a checkpoint at 12 and a resume from it), against the 1-process run:\n\n"
                     + table(["check", *(" × ".join(map(str, _engine(t))) for t in tags)], body))
    return parts


def _sci(value: float | None, digits: int) -> str:
    if value is None:
        return "–"
    if value and abs(value) < 10 ** -min(digits, 3):
        return f"{value:.1e}"
    return num(value, digits)


def scripts_table(res: Results) -> list[str]:
    rows = res.of("multi_gpu_scripts")
    if not rows:
        return []
    idx = Index(rows, ("variant", "dtype", "metric"))
    body = []
    for (pair, dtype), used in groups(rows, "variant", "dtype").items():
        get = lambda m: idx.value(pair, dtype, m)  # noqa: E731
        digits = 2 if pair.startswith("clm") else 3
        body.append(([pair, dtype, "relu" if get("relu_config") == 1 else "**not relu**", _sci(get("max_abs_weight_diff"), 3),
                      _sci(get("max_abs_logit_diff"), 3), f"{num(get('reference_score'), digits)} → {num(get('score'), digits)}",
                      f"{num(get('reference_after_swap'), digits)} → {num(get('after_swap'), digits)}",
                      f"{num(get('reference_anneal_step'), 0)} / {num(get('anneal_step'), 0)}",
                      f"{num(get('theta_sync_checks'), 0)}, {num(get('theta_sync_max_diff'), 1)}", num(get("checkpoints"), 0)], used))
    return ["**The example scripts as users launch them** (`bash benchmarks/run_scripts_multi_gpu.sh OUT`): run_clm.py "
            "(GPT-2 2×64, pydoc text) and run_image_classification.py (DeiT 2×64, digits), 1 process against 2 (DDP, FSDP2) at "
            "global batch 16, 24 steps, anneal start 0.25, a checkpoint at 12, `--relu_ize_at_end`; the final ReLU folders "
            "loaded by stock transformers (metric: perplexity for clm, accuracy for image):\n\n"
            + table(["run vs reference", "precision", "ReLU config", "weights, largest abs diff", "logits, largest abs diff",
                     "metric (ref → run)", "after the swap", "anneal step", "θ sync checks, largest diff", "checkpoints"], body,
                    "llllrrrrrr")]


def section(res: Results) -> str:
    intro = ("`KGeluTrainer` (λ-GELU, annealing included) against the stock `Trainer` (GELU) under `accelerate launch`: "
             "GPT-2 small and DeiT-small, bf16, one timed window of optimizer steps 10–30 per cell (expect a few percent of "
             "noise). Command: `bash benchmarks/run_multi_gpu.sh OUT` (three launches of `benchmarks.multi_gpu`: DDP with 1 "
             "process, DDP with 2, FSDP2 with 2; then `--compare`). Under FSDP2 each λ-GELU site is its own float32 unit "
             "whose θ every rank holds whole (a bf16 all-gather would round θ; empty shards of a one-element θ share data "
             "pointer 0), so every step runs one more tiny all-gather and reduction per site. On CPU, "
             "`tests/test_distributed.py` checks the same over gloo: θ identical across ranks at every logged step, λ "
             "bit-identical between 2 × 4 DDP and 1 × 8, the checkpoint written once, an exact resume.")
    return topic("Multi-GPU", intro, [*throughput_table(res), *exactness_tables(res), *scripts_table(res)])
