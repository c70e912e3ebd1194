"""docs/results.md, generated from the results CSVs: the current tables by topic.

    python -m benchmarks.report            # rewrite docs/results.md
    python -m benchmarks.report --check    # exit 1 if docs/results.md is not what the CSVs give

Reads every benchmarks/results/<machine kind>.csv (harness.SCHEMA) and, where they exist, two data
files of other tools: architectures.csv and bad_inputs.csv. Of each thing measured (what, variant,
dtype, shape, device, metric) a table shows the latest row of its machine kind's file; under each
table stand the command, machine kind, device, date and commit it came from (numbered when a table
draws on several runs).
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import harness

DOCS = harness.ROOT / "docs" / "results.md"
DATA_FILES = {  # other tools' data, rendered as they are
    "architectures.csv": ("model_type", "model_class", "modality", "sites", "status", "reason", "transformers", "date"),
    "bad_inputs.csv": ("area", "input", "message"),
}
KEY = ("what", "variant", "dtype", "shape", "device", "metric")
SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"


# ---- reading -------------------------------------------------------------------------------------


@dataclass
class Results:
    """The latest row of each thing per machine kind, in the order the files hold them."""

    rows: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> Results:
        latest: dict[tuple, dict] = {}
        for path in sorted(Path(folder).glob("*.csv")):
            if path.name in DATA_FILES:
                continue
            for row in harness.read_rows(path):
                row["kind"] = path.stem
                latest.pop((path.stem, *(row[c] for c in KEY)), None)  # re-inserted: file order of the latest
                latest[(path.stem, *(row[c] for c in KEY))] = row
        return cls(list(latest.values()))

    def of(self, *whats: str, **match) -> list[dict]:
        return [r for r in self.rows if r["what"] in whats and all(r[k] == v for k, v in match.items())]


def groups(rows: Iterable[dict], *columns: str) -> dict[tuple, list[dict]]:
    """Rows by the values of `columns`, in order of first appearance."""
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault(tuple(r[c] for c in columns), []).append(r)
    return out


class Index:
    """Rows looked up by (variant, metric) or any other columns."""

    def __init__(self, rows: Iterable[dict], columns: Sequence[str] = ("variant", "metric")):
        self.columns = columns
        self.rows = {tuple(r[c] for c in columns): r for r in rows}

    def get(self, *key) -> dict | None:
        return self.rows.get(tuple(key))

    def value(self, *key) -> float | None:
        row = self.get(*key)
        return None if row is None else float(row["p50"])


# ---- formatting ----------------------------------------------------------------------------------


def num(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def short(value: float | None, digits: int = 1) -> str:
    """`digits` decimals, one more where they would round the value: 0.6 -> "0.6", 0.65 -> "0.65"."""
    if value is None:
        return "–"
    return num(value, digits if abs(round(value, digits) - value) < 1e-9 else digits + 1)


def spread(row: dict | None, digits: int = 2) -> str:
    """"p50 (p20–p80)", or p50 alone."""
    if row is None:
        return "–"
    text = num(float(row["p50"]), digits)
    if row["p20"] and row["p80"]:
        text += f" ({num(float(row['p20']), digits)}–{num(float(row['p80']), digits)})"
    return text


def mean_std(row: dict | None, digits: int = 4) -> str:
    """A seed aggregate: "mean ± std" (p80 = mean + std), or the value alone for one seed."""
    if row is None:
        return "–"
    mean = float(row["p50"])
    if not row["p80"]:
        return num(mean, digits)
    return f"{num(mean, digits)} ± {num(float(row['p80']) - mean, digits)}"


def ratio(a: float | None, b: float | None, digits: int = 3) -> str:
    return "–" if a is None or not b else num(a / b, digits)


def _source_key(row: dict) -> tuple:
    return row["command"], row["kind"], row["device"], row["date"], row["commit"]


def sources_of(rows: Iterable[dict | None]) -> list[tuple]:
    return list(dict.fromkeys(_source_key(r) for r in rows if r is not None))


def source_line(rows: Iterable[dict]) -> str:
    """Where rows that all come from one run came from."""
    (source,) = sources_of(rows)
    return "Source: " + _source(*source)


def table(headers: Sequence[str], body: Sequence[tuple[Sequence[str], Sequence[dict | None]]], align: str | None = None,
          cite: bool = True) -> str:
    """A Markdown table whose rows carry the result rows they show, then (`cite`) where those came
    from: one line, or numbered lines with the numbers on the table's rows."""
    sources = sources_of(r for _, used in body for r in used)
    marks = [sorted({sources.index(_source_key(r)) for r in used if r is not None}) for _, used in body]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |"]
    for (cells, _), keys in zip(body, marks, strict=True):
        cells = list(cells)
        if cite and len(sources) > 1:
            cells[0] += "".join(_superscript(k) for k in keys)
        lines.append("| " + " | ".join(cells) + " |")
    if cite and len(sources) == 1:
        lines += ["", "Source: " + _source(*sources[0])]
    elif cite and sources:
        lines += [""] + [f"{_superscript(i)} {_source(*s)}  " for i, s in enumerate(sources)]
        lines[-1] = lines[-1].rstrip()
    return "\n".join(lines)


def _superscript(index: int) -> str:
    return SUPERSCRIPTS[index] if index < len(SUPERSCRIPTS) else f"[{index + 1}]"


def _source(command: str, kind: str, device: str, date: str, commit: str) -> str:
    return (f"`{command}` on `{kind}` ({device}), {date}{' UTC' if ':' in date else ''}, "
            + (f"commit {commit}" if commit else "commit not recorded"))


def label(labels: dict[str, str], key: str) -> str:
    return labels.get(key, key)


def section(title: str, intro: str, parts: Iterable[str]) -> str:
    parts = [p for p in parts if p]
    body = "\n\n".join(parts) if parts else "_No rows yet._"
    return f"## {title}\n\n{intro}\n\n{body}"


# ---- kernel --------------------------------------------------------------------------------------

KERNEL_VARIANTS = {
    "gelu": "torch GELU", "relu": "ReLU", "naive": "naive λ-GELU (autograd)", "naive-compiled": "naive λ-GELU, torch.compile",
    "kgelu-site": "**λ-GELU, KGELU site (θ)**", "kgelu-site-channel": "λ-GELU, KGELU site, per-channel θ",
    "kgelu": "λ-GELU, `kgelu(x, λ)`", "kgelu-frozen": "λ-GELU, λ frozen", "kgelu-channel": "λ-GELU, per-channel λ",
    "kgelu-erfc": "λ-GELU, Φ by libdevice erfc", "kgelu-erf": "λ-GELU, Φ by ½(1+erf) (inexact tail)",
    "gelu-transposed": "GELU, transposed input", "kgelu-transposed": "λ-GELU, transposed input (in place)",
}
HOST_CASES = {
    "gelu": "`F.gelu`", "gelu-module": "`nn.GELU` module", "kgelu-site": "**`KGELU` module (C++ site path)**",
    "kgelu-site-python-launcher": "`KGELU` module, Python launcher", "kgelu-site-triton-launch": "`KGELU` module, Triton's launcher every call",
    "kgelu-theta": "`kgelu_theta(x, θ, τ)`", "kgelu": "`kgelu(x, λ)`", "kgelu-function": "`KGeluKernelFunction.apply(x, λ)`",
    "custom-op": "custom op `hf_kgelu::kgelu` (what torch.compile traces)", "softplus-in-torch": "λ = 1 + softplus(θ/τ) in torch, then `kgelu`",
    "torch-path": "torch path (`KGeluFunction`)", "naive": "naive λ-GELU (autograd)",
    "launcher-direct": "our forward launcher, direct launch", "launcher-triton": "our forward launcher, through Triton",
    "empty-like": "`torch.empty_like(x)`", "sum-of-4-partials": "`torch.sum` of 4 partials",
    "function-apply": "`autograd.Function.apply` (identity)", "gelu-forward": "`F.gelu` forward (no grad)",
}
MAIN_SHAPE = "8192x3072"


def _elements(shape: str) -> int:
    return math.prod(int(d) for d in re.findall(r"\d+", shape.split(" @")[0]))


def kernel_tables(res: Results) -> list[str]:
    parts = []
    for (kind,), rows in groups(res.of("kernel"), "kind").items():
        idx = Index(rows, ("dtype", "shape", "variant", "metric"))
        body = []
        for (dtype, shape), block in groups([r for r in rows if r["shape"] == MAIN_SHAPE], "dtype", "shape").items():
            gelu_f, gelu_fb = idx.value(dtype, shape, "gelu", "fwd_device_us"), idx.value(dtype, shape, "gelu", "fwd_bwd_device_us")
            for (variant,), vrows in groups(block, "variant").items():
                get = lambda m: idx.value(dtype, shape, variant, m)  # noqa: E731
                body.append(([dtype, label(KERNEL_VARIANTS, variant), num(get("fwd_device_us"), 1), num(get("fwd_bwd_device_us"), 1),
                              ratio(get("fwd_device_us"), gelu_f, 2), ratio(get("fwd_bwd_device_us"), gelu_fb, 3),
                              num(get("saved_bytes_per_element")), num(get("peak_bytes_per_element"))], vrows))
        parts.append(f"**At {MAIN_SHAPE.replace('x', ' × ')} ({_elements(MAIN_SHAPE) / 1e6:.1f} M elements)**, device time:\n\n" + table(
            ["dtype", "variant", "fwd µs", "f+b µs", "fwd / GELU", "f+b / GELU", "saved B/el", "peak B/el"], body, "llrrrrrr"))
        sizes = []
        for (shape,), block in groups(rows, "shape").items():
            cells, used = [f"{_elements(shape) / 1e6:.1f} M"], []
            for variant in ("kgelu-site", "kgelu-frozen", "kgelu-site-channel"):
                pair = []
                for dtype in ("bf16", "fp32"):
                    pair.append(ratio(idx.value(dtype, shape, variant, "fwd_bwd_device_us"), idx.value(dtype, shape, "gelu", "fwd_bwd_device_us")))
                    used += [idx.get(dtype, shape, variant, "fwd_bwd_device_us"), idx.get(dtype, shape, "gelu", "fwd_bwd_device_us")]
                cells.append(" / ".join(pair))
            sizes.append((cells, used))
        parts.append("**Forward+backward against GELU by size** (device time, bf16 / fp32):\n\n"
                     + table(["elements", "KGELU site (θ)", "λ frozen", "KGELU site, per-channel θ"], sizes))
    return parts


def host_tables(res: Results) -> list[str]:
    parts = []
    for what, title in (("kernel_host", "**Host time per forward+backward call**, 64 × 64 float32 (the device idles), µs, "
                                          "p50 (p20–p80) over interleaved rounds:"),
                        ("kernel_host_piece", "**The pieces of a call**, host µs:")):
        for (kind,), rows in groups(res.of(what), "kind").items():
            parts.append(f"{title}\n\n" + table(["case", "host µs"], [([label(HOST_CASES, r["variant"]), spread(r, 1)], [r]) for r in rows]))
    return parts


def sweep_table(res: Results) -> list[str]:
    parts = []
    for (kind,), rows in groups(res.of("kernel_sweep"), "kind").items():
        idx = Index(rows, ("dtype", "variant", "metric"))
        body = []
        for (dtype,), block in groups(rows, "dtype").items():
            for layout in ("site", "channel"):
                changes = {r["variant"].split(": ", 1)[1] for r in block if r["variant"].startswith(f"{layout}: ")}
                if "defaults" not in changes:
                    continue
                fb = {c: idx.value(dtype, f"{layout}: {c}", "fwd_bwd_device_us") for c in changes}
                best = min(changes - {"defaults"}, key=lambda c: fb[c], default=None)
                gelu = idx.value(dtype, "gelu", "fwd_bwd_device_us")
                body.append(([dtype, layout, ratio(fb["defaults"], gelu), f"`{best}`" if best else "–", ratio(fb.get(best), gelu)],
                             [idx.get(dtype, f"{layout}: defaults", "fwd_bwd_device_us"), idx.get(dtype, "gelu", "fwd_bwd_device_us")]))
        parts.append("**Launch configuration sweep** (`--parts sweep`, 8192 × 3072): forward+backward device time against GELU "
                     "with the defaults and with the best single change; `python -m benchmarks.kernel --choose` turns the last "
                     "sweep into `HF_KGELU_KERNEL_CONFIG`:\n\n"
                     + table(["dtype", "θ layout", "defaults", "best change", "with it"], body, "llrlr"))
    return parts


TARGETS = (  # label, what, variant, metric, baseline variant (None: the value itself), bound
    ("KGELU site forward ≤ 1.05 × GELU, bf16 / fp32 (25 M elements, device time)", "kernel", "kgelu-site", "fwd_device_us", "gelu", 1.05),
    ("KGELU site forward+backward ≤ 1.05 × GELU, bf16 / fp32", "kernel", "kgelu-site", "fwd_bwd_device_us", "gelu", 1.05),
    ("bytes saved for backward ≤ GELU's, bf16 / fp32", "kernel", "kgelu-site", "saved_bytes_per_element", "gelu", 1.0 + 1e-4),
)


def targets_table(res: Results) -> str:
    body = []
    for text, what, variant, metric, base, bound in TARGETS:
        rows = [res.of(what, variant=variant, metric=metric, dtype=d, shape=MAIN_SHAPE) for d in ("bf16", "fp32")]
        bases = [res.of(what, variant=base, metric=metric, dtype=d, shape=MAIN_SHAPE) for d in ("bf16", "fp32")]
        if not all(rows) or not all(bases):
            continue
        values = [float(r[0]["p50"]) / float(b[0]["p50"]) for r, b in zip(rows, bases, strict=True)]
        body.append(([text, " / ".join(num(v, 3) for v in values), "met" if max(values) <= bound else "**not met**"],
                     [r[0] for r in rows] + [b[0] for b in bases]))
    for (shape, what), rows in groups(res.of("train_step", "train_step_compiled", variant="kgelu", metric="ratio_vs_gelu"),
                                      "shape", "what").items():
        if shape.startswith("gpt2-small"):
            value = float(rows[0]["p50"])
            mode = "compiled" if what.endswith("compiled") else "eager"
            body.append(([f"GPT-2 small training step ≤ 1.02 × GELU's, {mode}", num(value, 3), "met" if value <= 1.02 else "**not met**"], rows))
    return "**Targets** (issue 5), from the tables here:\n\n" + table(["target", "measured", ""], body, "lrl") if body else ""


def kernel_section(res: Results) -> str:
    intro = ("The fused Triton λ-GELU kernels against torch's GELU on one GPU. A `KGELU` site runs `kgelu_theta(x, θ, τ)`: "
             "the kernels compute λ = 1 + softplus(θ/τ) and dθ themselves, one forward launch and, backward, one kernel "
             "plus a small fixed-order partial-sum kernel; a site with one θ on a contiguous input makes one call into "
             "the C++ site path. Device time: CUDA-graph replays over distinct inputs (several times the L2), the kernels "
             "alone; p50 of interleaved rounds. The input is (rows, 3072), GPT-2 small's MLP width; θ/λ require grad "
             "unless \"frozen\". Per-call times with the L2 flushed (`triton.testing.do_bench`: host time shows where "
             "it exceeds the device's) are in the CSV (metrics `fwd_us`, `bwd_us`, `fwd_bwd_us`). Command: "
             "`python -m benchmarks.kernel`; `python benchmarks/kernel_instructions.py` counts the kernels' SASS "
             "instructions per element (no GPU needed; `tests/test_kernel_gpu.py` keeps them within budget).")
    return section("Kernel", intro, [*kernel_tables(res), *host_tables(res), *sweep_table(res), targets_table(res)])


# ---- training step -------------------------------------------------------------------------------

STEP_VARIANTS = {"gelu": "GELU", "kgelu": "**λ-GELU (ours)**", "kgelu-torch": "λ-GELU, torch path", "naive": "naive λ-GELU",
                 "kgelu-triton-launch": "λ-GELU, Triton's launcher", "kgelu-python-launcher": "λ-GELU, Python site launcher"}
MODEL_ORDER = ("gpt2", "bert", "deit")


def _model_rank(shape: str) -> int:
    return next((i for i, m in enumerate(MODEL_ORDER) if shape.startswith(m)), len(MODEL_ORDER))


def step_tables(res: Results) -> list[str]:
    parts = []
    rows = res.of("train_step", "train_step_compiled")
    for (kind,), krows in groups(rows, "kind").items():
        idx = Index(krows, ("what", "shape", "variant", "metric"))
        body = []
        blocks = groups(krows, "shape", "what")
        for (shape, what) in sorted(blocks, key=lambda k: (_model_rank(k[0]), k[1])):
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


def step_section(res: Results) -> str:
    intro = ("One training step of models built from configs (benchmarks/models.py): bf16 autocast, fused AdamW. All "
             "variants of a model are in memory and run in interleaved rounds, one step of each per round in a rotating "
             "order; \"step / GELU's\" is taken per round: p50 (p20–p80). A step ends synchronised, as a Trainer step "
             "does when it reads the loss, so host time shows wherever it exceeds the device's. Host ms: the time to "
             "issue the step. Kernels: device time in kernels per step (torch.profiler). Peak: memory above the "
             "resting allocation of weights and optimizer state. Command: `python -m benchmarks.train_step` (GPT-2 "
             "small, BERT-base, DeiT-small in one call; `--compile`, `--variants`, `--gaps`).")
    return section("Training step", intro, step_tables(res))


# ---- multi-GPU -----------------------------------------------------------------------------------

ENGINES = {"ddp": "DDP", "fsdp": "FSDP2"}


def _engine(tag: str) -> tuple[str, int]:
    m = re.fullmatch(r"([a-z]+?)(\d+)", tag)
    return (ENGINES.get(m.group(1), m.group(1)), int(m.group(2))) if m else (tag, 0)


def throughput_table(res: Results) -> list[str]:
    parts = []
    for (kind,), rows in groups(res.of("multi_gpu_throughput"), "kind").items():
        idx = Index(rows, ("shape", "variant", "metric"))
        body = []
        for (shape,), block in sorted(groups(rows, "shape").items(), key=lambda kv: _model_rank(kv[0][0])):
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


def multi_gpu_section(res: Results) -> str:
    intro = ("`KGeluTrainer` (λ-GELU, annealing included) against the stock `Trainer` (GELU) under `accelerate launch`: "
             "GPT-2 small and DeiT-small, bf16, one timed window of optimizer steps 10–30 per cell (expect a few percent of "
             "noise). Command: `bash benchmarks/run_multi_gpu.sh OUT` (three launches of `benchmarks.multi_gpu`: DDP with 1 "
             "process, DDP with 2, FSDP2 with 2; then `--compare`). Under FSDP2 each λ-GELU site is its own float32 unit "
             "whose θ every rank holds whole (a bf16 all-gather would round θ; empty shards of a one-element θ share data "
             "pointer 0), so every step runs one more tiny all-gather and reduction per site. On CPU, "
             "`tests/test_distributed.py` checks the same over gloo: θ identical across ranks at every logged step, λ "
             "bit-identical between 2 × 4 DDP and 1 × 8, the checkpoint written once, an exact resume.")
    return section("Multi-GPU", intro, [*throughput_table(res), *exactness_tables(res), *scripts_table(res)])


# ---- CPU path ------------------------------------------------------------------------------------

CPU_VARIANTS = {"kgelu": "**kgelu (λ learns)**", "kgelu-frozen": "λ frozen", "kgelu-site": "KGELU site (θ)",
                "torch-path": "torch path", "naive": "naive"}


def _threads(shape: str) -> str:
    m = re.search(r"@ (\d+)", shape)
    return m.group(1) if m else "–"


def cpu_tables(res: Results) -> list[str]:
    parts = []
    rows = res.of("cpu_path")
    for (kind, device, dtype), block in groups(rows, "kind", "device", "dtype").items():
        idx = Index(block, ("shape", "variant", "metric"))
        variants = [v for v in CPU_VARIANTS if any(r["variant"] == v for r in block)]
        body = []
        for (shape,), srows in groups(block, "shape").items():
            gelu = idx.value(shape, "gelu", "fwd_bwd_ms")
            body.append(([f"{_elements(shape):,}".replace(",", " "), _threads(shape), num(gelu, 3),
                          *(ratio(idx.value(shape, v, "fwd_bwd_ms"), gelu, 2) + "×" for v in variants)], srows))
        parts.append(f"**{device}, {dtype}** (forward+backward; GELU's ms, the others as multiples of it):\n\n"
                     + table(["elements", "threads", "GELU ms", *(CPU_VARIANTS[v] for v in variants)], body))
    for (kind, device), block in groups(res.of("cpu_kernel_flags"), "kind", "device").items():
        idx = Index(block, ("shape", "variant", "metric"))
        suffix = "" if any(r["metric"] == "fwd_us" for r in block) else "_min"
        body = []
        for (shape,), srows in groups(block, "shape").items():
            gelu = idx.value(shape, "gelu", f"fwd_bwd_us{suffix}")
            for (variant,), vrows in groups([r for r in srows if r["variant"] != "gelu"], "variant").items():
                fwd, bwd = idx.value(shape, variant, f"fwd_us{suffix}"), idx.value(shape, variant, f"bwd_us{suffix}")
                body.append(([f"{_elements(shape):,}".replace(",", " "), f"`{variant}`", num(fwd, 0), num(bwd, 0),
                              ratio(None if fwd is None or bwd is None else fwd + bwd, gelu, 2)], vrows))
        statistic = "best of the rounds" if suffix else "p50 of interleaved rounds"
        parts.append(f"**Compiler flags of the CPU kernel on {device}** (`--parts flags`: one thread, raw calls, per site, "
                     f"λ learning; µs, {statistic}; \"base\" is the package's flags):\n\n"
                     + table(["elements", "extra flags", "fwd µs", "bwd µs", "f+b / GELU's"], body, "llrrr"))
    for (kind, shape), block in groups(res.of("annealing_host"), "kind", "shape").items():
        idx = Index(block)
        body = [([way, spread(idx.get(way, "us_per_site"), 1), spread(idx.get(way, "ms_per_step"), 3)], [idx.get(way, "us_per_site")])
                for way in ("number", "tensor") if idx.get(way, "us_per_site")]
        mismatches = idx.value("number-vs-tensor", "theta_mismatches")
        parts.append(f"**The annealing callback's host time** ({shape}; `--parts annealing`): setting one-λ sites by float "
                     "arithmetic and one `fill_` (\"number\", what the callback does) against float64 tensor ops (\"tensor\", "
                     f"before). θ written differently by the two ways: {num(mismatches, 0)}.\n\n"
                     + table(["way", "µs per site", "ms per step"], body))
    return parts


def cpu_section(res: Results) -> str:
    intro = ("On CPU, `kgelu` runs a C kernel compiled at first use with the machine's compiler (`-O3 -march=native`, "
             "512-bit vectors on x86; float32, bfloat16 and float16, math in float32, per site or per channel): one pass "
             "forward, one backward giving dx and dλ together. torch.compile and export keep the torch path, which they "
             "can trace; without a compiler the torch path serves, with a warning. Against `F.gelu`, forward+backward "
             "through autograd, medians of interleaved rounds. Command: `python -m benchmarks.cpu` (`--threads`, `--dtype`, "
             "`--parts path,flags,annealing`).")
    return section("CPU path", intro, cpu_tables(res))


# ---- paper tables --------------------------------------------------------------------------------

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
        block = [r for r in rows if r["what"] == "paper_table1" and _setting(r)[0] == name]
        score = next((r["metric"] for r in block if r["metric"].startswith("best_val_")), None)
        if not score:
            continue
        body = []
        for variant, text in PAPER_VARIANTS.items():
            get = lambda m: idx.get("paper_table1", f"{name}/{variant}", m)  # noqa: E731
            if get(score):
                body.append(([text, num(idx.value("paper_table1", f"{name}/{variant}", "seeds"), 0), mean_std(get(score)),
                              mean_std(get("best_epoch"), 1), mean_std(get("mean_lambda"), 3), mean_std(get("drift"))], [get(score)]))
        out.append(f"**{title[name]}** (`{name}`)\n\n" + tab(
            ["run", "seeds", score.replace("_", " ").replace("best val", "best val"), "epoch", "mean λ", "drift D"], body))

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
        block = [r for r in rows if r["what"] == "paper_table2" and _setting(r)[0] == name]
        original = next((r["metric"] for r in block if r["metric"].startswith("original_")), None)
        if not original:
            continue
        loss = any(r["metric"] == "change_val_loss" for r in block)
        body = []
        for variant, text in SWAP_VARIANTS.items():
            get = lambda m: idx.get("paper_table2", f"{name}/{variant}", m)  # noqa: E731
            if get(original):
                cells = [text, mean_std(get(original)), mean_std(get("after_relu_swap")), mean_std(get("change"))]
                body.append((cells + ([mean_std(get("change_val_loss"))] if loss else []), [get(original)]))
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


def paper_section(res: Results) -> str:
    intro = ("The paper's experiments on the offline data here (`scripts/reproduce.py`): per setting GELU, ReLU, λ-GELU "
             "from three init profiles (λ learned throughout) and λ-GELU annealed to λ*, over seeds; λ-GELU at τ = 0.1, "
             "η = 10 (θ at lr × η, no weight decay). `--update-docs` appends the rows to the machine kind's CSV and "
             "regenerates this file. Seed aggregates: the CSV's p50 is the mean over seeds, p20 / p80 the mean ∓ one "
             "standard deviation.")
    parts = []
    for (kind, preset), rows in groups([dict(r, preset=_preset(r["command"])) for r in res.of(
            "paper_table1", "paper_fig3", "paper_fig3_rho", "paper_table2", "paper_grid")], "kind", "preset").items():
        parts.append(f"### Preset `{preset}`\n\n" + paper_tables(rows))
    return section("Paper tables", intro, parts)


# ---- conversion ----------------------------------------------------------------------------------

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
                cells.append(num(value, 4) + relative if value is not None else "")
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


def conversion_section(res: Results) -> str:
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
    return section("Conversion", intro, [*conversion_tables(res), *per_channel_table(res), *sparsity_table(res)])


# ---- other tools' data ---------------------------------------------------------------------------


def data_section(folder: Path, name: str, title: str, intro: str) -> str:
    path = folder / name
    if not path.exists():
        return ""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in DATA_FILES[name] if c not in (reader.fieldnames or ())]
        if missing:
            raise harness.SchemaError(f"{path}: columns {missing} missing (expected {', '.join(DATA_FILES[name])})")
        rows = list(reader)
    columns = list(DATA_FILES[name])
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(r[c].replace("|", "\\|").replace("\n", " ") for c in columns) + " |" for r in rows]
    return f"## {title}\n\n{intro} (`benchmarks/results/{name}`, {len(rows)} rows).\n\n" + "\n".join(lines)


# ---- the document --------------------------------------------------------------------------------


def render(folder: Path = harness.RESULTS) -> str:
    res = Results.load(folder)
    machines = {kind: " / ".join(dict.fromkeys(r["device"] for r in rows)) for (kind,), rows in groups(res.rows, "kind").items()}
    sections = [kernel_section(res), step_section(res), multi_gpu_section(res), cpu_section(res), paper_section(res),
                conversion_section(res),
                data_section(folder, "architectures.csv", "Architectures",
                             "Which transformers architectures take λ-GELU sites, found by introspection"),
                data_section(folder, "bad_inputs.csv", "Bad inputs", "What each area says to input it refuses")]
    sections = [s for s in sections if s]
    titles = [s.splitlines()[0].removeprefix("## ") for s in sections]
    head = ("# Results\n\nGenerated by `python -m benchmarks.report` (or `make results`) from `benchmarks/results/*.csv`: "
            "do not edit by hand (`tests/test_benchmarks.py` fails when this file and the CSVs disagree). One CSV per "
            "machine kind, one row per figure (schema: `benchmarks/harness.py`); each table names the command, machine and "
            "date it came from. How the figures got here, session by session: `CHANGELOG.md`.\n\n"
            "Sections: " + ", ".join(f"[{t}](#{t.lower().replace(' ', '-')})" for t in titles) + ".\n\n"
            "Machines: " + "; ".join(f"`{kind}` ({devices})" for kind, devices in machines.items()) + ".")
    return "\n\n".join([head, *sections]) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=harness.RESULTS, help="folder of the CSVs")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--check", action="store_true", help="exit 1 if --out differs from what the CSVs give")
    args = parser.parse_args(argv)
    text = render(args.results)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run python -m benchmarks.report", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
