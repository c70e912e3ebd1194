"""The Multi-GPU section: throughput and scaling, θ across ranks, 1 vs N processes, the scripts."""

from __future__ import annotations

import re

from collections.abc import Iterable

from benchmarks.report.tables import Index, Results, groups, model_rank, num, ratio, table, topic

ENGINES = {"ddp": "DDP", "fsdp": "FSDP2", "zero2": "DeepSpeed ZeRO-2", "zero3": "DeepSpeed ZeRO-3"}
VARIANTS = (("kgelu", "θ outside the engine (default)"), ("kgelu-engine", "θ in the engine"), ("kgelu-learn", "no annealing"))


def _engine(tag: str) -> tuple[str, int]:
    """Launch tag → (engine, GPUs): ddp1, ddp2, fsdp1, fsdp2 (FSDP2 on 1 / 2 GPUs), zero2-1, …, zero3-2."""
    m = re.fullmatch(r"(zero[23])-(\d+)", tag) or re.fullmatch(r"([a-z]+?)(\d+)", tag)
    return (ENGINES.get(m.group(1), m.group(1)), int(m.group(2))) if m else (tag, 0)


def _one_gpu_tag(tag: str, tags: Iterable[str]) -> str:
    """The 1-GPU launch a tag's scaling is measured against: the same engine's, else DDP's."""
    engine, _ = _engine(tag)
    same = [t for t in tags if _engine(t) == (engine, 1)]
    return same[0] if same else "ddp1"


def _sync_cell(sync: Index, tag: str, shape: str) -> tuple[str, list]:
    checks, diff = sync.get(tag, shape, "theta_sync_checks"), sync.get(tag, shape, "theta_sync_max_diff")
    if _engine(tag)[1] < 2 or checks is None:
        return "—", []
    return f"{num(float(checks['p50']), 0)} checks, max Δθ {num(float(diff['p50']), 1) if diff else '–'}", [checks, diff]


def _resume_cell(exact: Index, tag: str) -> tuple[str, list]:
    same, star = exact.get(tag, "resume_lambda_identical"), exact.get(tag, "lambda_star_exact")
    if same is None:
        return "–", []
    weights = exact.get(tag, "resume_max_abs_weight_diff")
    text = "λ identical" if float(same["p50"]) == 1 else "**λ differs**"
    if weights is not None:
        text += f", weights Δ {_sci(float(weights['p50']), 3)}"
    if star is not None:
        text += ", λ* exact" if float(star["p50"]) == 1 else ", **λ* off**"
    return text, [same, weights, star]


def throughput_table(res: Results) -> list[str]:
    parts = []
    sync = Index(res.of("multi_gpu_sync"), ("variant", "shape", "metric"))
    exact = Index(res.of("multi_gpu_exactness"))
    for (kind,), rows in groups(res.of("multi_gpu_throughput"), "kind").items():
        idx = Index(rows, ("shape", "variant", "metric"))
        for (shape,), block in sorted(groups(rows, "shape").items(), key=lambda kv: model_rank(kv[0][0])):
            unit = next(r["metric"] for r in block if r["metric"].endswith("_per_s"))
            tags = list(dict.fromkeys(r["variant"].split("/")[0] for r in block))
            body = []
            for tag in sorted(tags, key=lambda t: (list(ENGINES.values()).index(_engine(t)[0]) if _engine(t)[0] in ENGINES.values() else 9,
                                                   _engine(t)[1])):
                k, g = (idx.get(shape, f"{tag}/{a}", unit) for a in ("kgelu", "gelu"))
                world = idx.value(shape, f"{tag}/kgelu", "world_size") or _engine(tag)[1]
                one = [idx.value(shape, f"{_one_gpu_tag(tag, tags)}/{a}", unit) for a in ("kgelu", "gelu")]
                scaling = (" / ".join(ratio(float(r["p50"]), world * b, 2) for r, b in zip((k, g), one, strict=True))
                           if world > 1 and k and g and all(one) else "—")
                sync_text, sync_rows = _sync_cell(sync, tag, shape)
                resume_text, resume_rows = _resume_cell(exact, tag)
                step = [idx.get(shape, f"{tag}/{a}", "step_ms") for a in ("kgelu", "gelu")]
                body.append(([shape.removesuffix(" per GPU"), _engine(tag)[0], str(int(world)),
                              f"{float(k['p50']):,.0f}".replace(",", " ") if k else "–", f"{float(g['p50']):,.0f}".replace(",", " ") if g else "–",
                              ratio(idx.value(shape, f"{tag}/kgelu", "step_ms"), idx.value(shape, f"{tag}/gelu", "step_ms"), 2),
                              scaling, sync_text, resume_text],
                             [k, g, *step, *sync_rows, *resume_rows]))
            unit_text = unit.replace("_per_s", "/s")
            parts.append(f"**Throughput** ({unit_text}, median step; every process's batch counted; resume: the tiny GPT-2 "
                         "run of the same launch, below):\n\n" + table(
                ["model", "engine", "GPUs", "λ-GELU", "GELU", "λ-GELU / GELU step time", "scaling efficiency λ-GELU / GELU",
                 "θ sync across ranks", "resume"], body, "lllrrrrll"))
            parts += _variants_table(idx, shape, tags)
    return parts


def _variants_table(idx: Index, shape: str, tags: list[str]) -> list[str]:
    """Where λ-GELU's time goes: its step over GELU's with θ outside / inside the engine / without annealing."""
    tags = [t for t in tags if idx.get(shape, f"{t}/kgelu-engine", "step_ms") or idx.get(shape, f"{t}/kgelu-learn", "step_ms")]
    if not tags:
        return []
    body = []
    for tag in tags:
        gelu = idx.value(shape, f"{tag}/gelu", "step_ms")
        cells = [ratio(idx.value(shape, f"{tag}/{v}", "step_ms"), gelu, 2) for v, _ in VARIANTS]
        body.append(([shape.removesuffix(" per GPU"), " × ".join(map(str, _engine(tag))), *cells],
                     [idx.get(shape, f"{tag}/{v}", "step_ms") for v, _ in VARIANTS]))
    return ["**Where λ-GELU's step goes** (its median step over GELU's, same launch): θ kept out of the engine and "
            "averaged in one all-reduce per step (`kgelu_theta_sync=\"auto\"`), θ synchronised by the engine "
            "(`\"engine\"`: DDP's buckets, one float32 FSDP2 unit per site), and θ learning throughout (no anneal "
            "schedule):\n\n" + table(["model", "engine × GPUs", *(text for _, text in VARIANTS)], body, "llrrr")]


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
                  ("resumed weights vs uninterrupted, largest abs difference", "resume_max_abs_weight_diff", 3),
                  ("λ* reached exactly, float32 (1 = yes)", "lambda_star_exact", 0),
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
             "GPT-2 small and DeiT-small, bf16, the optimizer steps 10–30 of each run timed one by one (median, expect a "
             "few percent of noise between runs). Command: `bash benchmarks/run_multi_gpu.sh OUT`: launches of "
             "`benchmarks.multi_gpu` per engine (DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3, the configs of "
             "`scripts/accelerate_configs/`) at 2 and 1 GPUs, then `--compare`; scaling efficiency is against the same "
             "engine on 1 GPU, else DDP on 1. By default θ is kept out of DDP and FSDP2 (a plain float32 tensor on every "
             "rank, one all-reduce of all θ gradients per step) and stays in DeepSpeed's optimizer in its own group, the "
             "forward computing with a float32 θ (docs/multi_gpu.md). The runs of 2026-11-30 predate that: under FSDP2 "
             "each site was its own float32 unit (one all-gather and reduction per site per step), today's "
             "`kgelu_theta_sync=\"engine\"`. On CPU, `tests/test_distributed.py` checks the same over gloo (DDP, FSDP2 "
             "through accelerate, DeepSpeed ZeRO-2 and ZeRO-3): θ identical across ranks at every logged step, float32, "
             "λ* exact, θ's gradient that of the global batch, the checkpoint written once, an exact resume.")
    return topic("Multi-GPU", intro, [*throughput_table(res), *exactness_tables(res), *scripts_table(res)])
