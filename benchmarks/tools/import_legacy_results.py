"""One-off: the raw results of the dated folders (benchmarks/results/*/) and the tables of the old
docs/results.md, as rows of the one schema in benchmarks/results/<machine kind>.csv.

Kept: the latest measurement of each thing (what, variant, dtype, shape, device, metric) per
machine kind, with its real date and the command that made it (commits were not recorded then).
Figures that exist only in prose are not converted (CHANGELOG.md carries them).

    PYTHONPATH=. python benchmarks/tools/import_legacy_results.py OLD_RESULTS_MD
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from benchmarks import harness

RAW = harness.RESULTS
H200, X2, EPYC = "nvidia-h200", "nvidia-h200-x2", "cpu-amd-epyc"
GPU = "NVIDIA H200"
EPYC_DEVICE, XEON_DEVICE = "AMD EPYC, 2 cores", "Intel Xeon, 16 cores"

KERNEL_VARIANTS = {
    "gelu": "gelu", "relu": "relu", "naive λ-GELU": "naive", "naive λ-GELU, torch.compile": "naive-compiled",
    "λ-GELU (ours), KGELU site (θ)": "kgelu-site", "λ-GELU (ours), KGELU per-channel θ": "kgelu-site-channel",
    "λ-GELU (ours)": "kgelu", "λ-GELU (ours), λ frozen": "kgelu-frozen", "λ-GELU (ours), per-channel": "kgelu-channel",
    "gelu, transposed input": "gelu-transposed", "λ-GELU (ours), transposed input": "kgelu-transposed",
    "λ-GELU (ours), libdevice erfc": "kgelu-erfc", "λ-GELU (ours), erf form": "kgelu-erf",
}
KERNEL_METRICS = {  # old column -> (metric, factor)
    "fwd_graph_ms": ("fwd_device_us", 1e3), "fwd_bwd_graph_ms": ("fwd_bwd_device_us", 1e3), "fwd_ms": ("fwd_us", 1e3),
    "bwd_ms": ("bwd_us", 1e3), "fwd_bwd_ms": ("fwd_bwd_us", 1e3), "saved_bytes_per_elem": ("saved_bytes_per_element", 1),
    "peak_extra_bytes_per_elem": ("peak_bytes_per_element", 1),
}
HOST_CASES = {
    "gelu (F.gelu)": "gelu", "gelu (nn.GELU module)": "gelu-module", "KGELU module (C++ site path)": "kgelu-site",
    "KGELU module, Python launcher": "kgelu-site-python-launcher", "KGELU module, Triton launches": "kgelu-site-triton-launch",
    "kgelu_theta(x, θ, τ)": "kgelu-theta", "kgelu(x, λ)": "kgelu", "KGeluKernelFunction.apply(x, λ)": "kgelu-function",
    "custom op hf_kgelu::kgelu": "custom-op", "λ = 1 + softplus(θ/τ) in torch, then kgelu": "softplus-in-torch",
    "torch path (KGeluFunction)": "torch-path", "naive λ-GELU (autograd)": "naive",
    "forward launcher, direct launch": "launcher-direct", "forward launcher, Triton launch": "launcher-triton",
    "torch.empty_like(x)": "empty-like", "torch.sum of 4 partials": "sum-of-4-partials",
    "autograd.Function.apply (identity)": "function-apply", "F.gelu forward (no grad)": "gelu-forward",
}
CPU_VARIANTS = {"gelu": "gelu", "kgelu": "kgelu", "kgelu, λ frozen": "kgelu-frozen", "KGELU module": "kgelu-site",
                "torch ops": "torch-path", "naive": "naive"}  # "foundation" (the first op) is history
STEP_SHAPES = {"gpt2": "gpt2-small 8x1024", "deit": "deit-small 64x224x224"}
STEP_METRICS = {"step_ms_median": "step_ms", "host_ms_median": "host_ms", "kernel_ms": "kernel_ms",
                "activation_kernel_ms": "activation_kernel_ms", "ratio_median": "ratio_vs_gelu", "step_peak_gib": "peak_gib"}
CHECKS = "bash benchmarks/run_gpu_checks.sh OUT"


class Rows:
    """Rows per machine kind, in the order measured."""

    def __init__(self):
        self.by_kind: dict[str, list[dict]] = {}

    def add(self, kind, what, variant, metric, value, *, dtype="", shape="", device, date, command, stats=None):
        stats = stats or harness.Stats(float(value))
        row = dict(what=what, variant=variant, dtype=dtype, shape=shape, device=device, metric=metric,
                   p50=harness._number(stats.p50), p20=harness._number(stats.p20), p80=harness._number(stats.p80),
                   commit="", date=date, command=command)
        harness.check_row(row)
        self.by_kind.setdefault(kind, []).append(row)

    def write(self, keep_all: set[tuple[str, str]]) -> None:
        """Per kind, the last row of each key; rows of the (what, date) pairs in keep_all are all kept."""
        for kind, rows in self.by_kind.items():
            key = lambda r: tuple(r[c] for c in ("what", "variant", "dtype", "shape", "device", "metric"))  # noqa: E731
            last = {key(r): i for i, r in enumerate(rows)}
            kept = [r for i, r in enumerate(rows) if last[key(r)] == i or (r["what"], r["date"]) in keep_all]
            path = RAW / f"{kind}.csv"
            path.unlink(missing_ok=True)
            harness.append_rows(path, kept)
            print(f"{path}: {len(kept)} rows (of {len(rows)})")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def finite(value: str) -> bool:
    return value not in ("", "nan") and float(value) == float(value)


# ---- GPU: kernel, host time, sweep, training step, gaps ------------------------------------------


def kernel_table(rows: Rows, path: Path, date: str, command: str) -> None:
    for r in read_csv(path):
        for column, (metric, factor) in KERNEL_METRICS.items():
            if finite(r[column]):
                rows.add(H200, "kernel", KERNEL_VARIANTS[r["variant"]], metric, float(r[column]) * factor, dtype=r["dtype"],
                         shape=f"{r['rows']}x3072", device=GPU, date=date, command=command)


def host_table(rows: Rows, path: Path, date: str, command: str) -> None:
    for r in read_csv(path):
        what = "kernel_host" if r["part"] == "forward+backward" else "kernel_host_piece"
        rows.add(H200, what, HOST_CASES[r["case"]], "host_us", r["host_us"], dtype="fp32", shape="64x64", device=GPU,
                 date=date, command=command)


def sweep_table(rows: Rows, path: Path, date: str, command: str) -> None:
    gelu_done = set()
    for r in read_csv(path):
        if r["dtype"] not in gelu_done:
            for metric in ("fwd", "fwd_bwd"):
                rows.add(H200, "kernel_sweep", "gelu", f"{metric}_device_us", r[f"gelu_{metric}_us"], dtype=r["dtype"],
                         shape="8192x3072", device=GPU, date=date, command=command)
            gelu_done.add(r["dtype"])
        for metric in ("fwd", "fwd_bwd"):
            rows.add(H200, "kernel_sweep", f"{r['layout']}: {r['change']}", f"{metric}_device_us", r[f"{metric}_us"],
                     dtype=r["dtype"], shape="8192x3072", device=GPU, date=date, command=command)


def step_table(rows: Rows, path: Path, date: str, command: str, compiled: bool = False) -> None:
    for r in read_csv(path):
        for column, metric in STEP_METRICS.items():
            if column in r and finite(r[column]) and not (metric == "activation_kernel_ms" and r["variant"] == "naive"):
                rows.add(H200, "train_step_compiled" if compiled else "train_step", r["variant"], metric, r[column], dtype="bf16",
                         shape=STEP_SHAPES[r["model"]], device=GPU, date=date, command=command)


def gaps_table(rows: Rows, log: Path, date: str, command: str) -> None:
    """The fifth session's gap runs: gelu, kgelu, gelu, kgelu (two rounds of each, interleaved)."""
    runs: dict[str, list[dict]] = {}
    for line in log.read_text().splitlines():
        m = re.match(r"(\w+): busy .* \(forward ([\d.]+)/([\d.]+)\s+backward ([\d.]+)/([\d.]+)\s+optimizer ([\d.]+)/([\d.]+)\)", line)
        if m:
            values = [float(v) for v in m.groups()[1:]]
            runs.setdefault(m.group(1), []).append(dict(zip(
                ["forward_busy_ms", "forward_idle_ms", "backward_busy_ms", "backward_idle_ms", "optimizer_busy_ms", "optimizer_idle_ms"],
                values, strict=True)))
    for variant, samples in runs.items():
        for metric in samples[0]:
            rows.add(H200, "step_gaps", variant, metric, None, dtype="bf16", shape=STEP_SHAPES["gpt2"], device=GPU, date=date,
                     command=command, stats=harness.Stats.of([s[metric] for s in samples]))


# ---- CPU path ------------------------------------------------------------------------------------


def cpu_table(rows: Rows, kind: str, device: str, path: Path, date: str, command: str) -> None:
    for r in read_csv(path):
        if r["variant"] in CPU_VARIANTS:
            threads = int(r["threads"])
            rows.add(kind, "cpu_path", CPU_VARIANTS[r["variant"]], "fwd_bwd_ms", r["fwd_bwd_ms"], dtype=r.get("dtype", "float32"),
                     shape=f"{r['elements']} @ {threads} thread{'s' if threads > 1 else ''}", device=device, date=date, command=command)


def flags_table(rows: Rows, kind: str, device: str, path: Path, date: str, command: str) -> None:
    """cpu_kernel_flags.py printed the best of 7 rounds: metrics *_us_min."""
    for line in path.read_text().splitlines()[2:]:
        gelu = re.match(r"\s*(\d+) F\.gelu, gelu_backward\s+(\d+)µs", line)
        if gelu:
            rows.add(kind, "cpu_kernel_flags", "gelu", "fwd_bwd_us_min", gelu.group(2), dtype="float32",
                     shape=f"{gelu.group(1)} @ 1 thread", device=device, date=date, command=command)
            continue
        m = re.match(r"\s*(\d+) (.+?)\s+(\d+)\s+(\d+)\s+[\d.]+$", line)
        for metric, value in (("fwd_us_min", m.group(3)), ("bwd_us_min", m.group(4))):
            rows.add(kind, "cpu_kernel_flags", m.group(2), metric, value, dtype="float32", shape=f"{m.group(1)} @ 1 thread",
                     device=device, date=date, command=command)


# ---- multi-GPU -----------------------------------------------------------------------------------


def multi_gpu(rows: Rows, folder: Path, date: str, command: str) -> None:
    shapes = {"gpt2": "gpt2-small 8x1024 per GPU", "deit": "deit-small 64x224x224 per GPU"}
    summary = json.loads((folder / "summary.json").read_text())
    for tag in ("ddp1", "ddp2", "fsdp2"):
        run = json.loads((folder / f"{tag}.json").read_text())
        for r in run["throughput"]:
            shape, variant = shapes[r["model"]], f"{tag}/{r['activation']}"
            unit = r["unit"].replace("/s", "_per_s")
            for metric, value in ((unit, r["throughput"]), ("step_ms", r["step_ms"]), ("peak_gib", r["peak_mem_gib"]),
                                  ("world_size", r["world_size"])):
                rows.add(X2, "multi_gpu_throughput", variant, metric, value, dtype="bf16", shape=shape, device=GPU, date=date,
                         command=command)
            if "sync" in r:
                sync = {"theta_sync_checks": len(r["sync"]["checked_steps"]), "theta_sync_max_diff": r["sync"]["last_diff"],
                        "anneal_switch_step": r["sync"]["switch_step"], "theta_local_numel": r["theta_local_numel"]}
                for metric, value in sync.items():
                    if value is not None:
                        rows.add(X2, "multi_gpu_sync", tag, metric, value, dtype="bf16", shape=shape, device=GPU, date=date,
                                 command=command)
        ex = run["exactness"]
        figures = {"anneal_switch_step": ex["first"]["switch_step"], "theta_sync_checks": len(ex["first"]["checked_steps"]),
                   "theta_local_numel": ex["first"]["theta_local_numel"],
                   "resume_lambda_identical": float(summary["exactness"][tag]["resume_lambda_identical"])}
        figures |= {f"saves_rank{i}": n for i, n in enumerate(ex["saves_per_rank"])}
        figures["max_rel_lambda_diff_vs_1gpu"] = summary["exactness"][tag]["max_rel_lambda_diff_vs_ddp1"]
        figures["max_abs_weight_diff_vs_1gpu"] = summary["exactness"][tag]["max_abs_weight_diff_vs_ddp1"]
        figures["max_abs_weight"] = summary["exactness"][tag]["max_abs_weight"]
        for metric, value in figures.items():
            rows.add(X2, "multi_gpu_exactness", tag, metric, value, dtype="bf16", shape="gpt2 2x64, global batch 16, 24 steps",
                     device=GPU, date=date, command=command)


def script_runs(rows: Rows, path: Path, dtype: str, date: str, command: str) -> None:
    for pair, r in json.loads(path.read_text()).items():
        if "error" in r:
            continue
        figures = {
            "relu_config": float(r["relu_act"] == "relu"), "max_abs_weight_diff": r["max_abs_weight_diff"],
            "max_abs_weight": r["max_abs_weight"], "max_abs_logit_diff": r["max_abs_logit_diff"],
            "max_abs_logit": r["max_abs_logit"], "argmax_agreement": r["argmax_agreement"],
            "reference_score": r["final_score"][0], "score": r["final_score"][1],
            "reference_after_swap": r["after_swap"][0], "after_swap": r["after_swap"][1],
            "max_rel_lambda_learned_diff": r["max_rel_lambda_learned_diff"], "max_rel_lambda_final_diff": r["max_rel_lambda_final_diff"],
            "reference_anneal_step": r["anneal_step"][0], "anneal_step": r["anneal_step"][1],
            "theta_sync_checks": r["theta_sync_logged"], "theta_sync_max_diff": r["theta_sync_max_diff"],
            "checkpoints": len(r["checkpoints"]),
        }
        for metric, value in figures.items():
            if value is not None:
                rows.add(X2, "multi_gpu_scripts", pair, metric, value, dtype=dtype, shape="tiny model, global batch 16, 24 steps",
                         device=GPU, date=date, command=command)


# ---- tables of the old docs/results.md (no raw files: their outputs/ folders were not kept) -------


def md_tables(text: str) -> list[list[list[str]]]:
    """Every Markdown table of `text`: rows of cells, header first, the rule dropped."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.strip().startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def mean_std(cell: str) -> harness.Stats:
    """"m ± s" -> the seeds convention (p20/p80 = m ∓ s); "m" alone -> one value."""
    parts = [float(p) for p in cell.split("±")]
    if len(parts) == 1:
        return harness.Stats(parts[0])
    mean, std = parts
    return harness.Stats(mean, mean - std, mean + std)


def section(text: str, start: str, end: str) -> str:
    return text[text.index(start): text.index(end)]


def paper_tables(rows: Rows, old: str) -> None:
    block = section(old, "<!-- reproduce:cpu:begin -->", "<!-- reproduce:cpu:end -->")
    command = re.search(r"Command: `([^`]+)`", block).group(1)
    date = re.search(r"` — [^,]+, (\d{4}-\d\d-\d\d)", block).group(1)
    describe = dict(re.findall(r"^- `([\w-]+)`: (.+)$", block, re.M))
    titles = dict((name, title) for title, name in re.findall(r"^\*\*(.+?)\*\* \(`([\w-]+)`\)$", block, re.M))
    shapes = {name: f"{titles[name]} — {describe[name]}" for name in titles}
    by_title = {title: name for name, title in titles.items()}
    labels = {"GELU": "gelu", "ReLU": "relu", "λ-GELU, uniform init": "kgelu-uniform", "λ-GELU, increasing init": "kgelu-increasing",
              "λ-GELU, decreasing init": "kgelu-decreasing", "λ-GELU, annealed (uniform init)": "kgelu-annealed",
              "GELU → ReLU (direct swap)": "gelu", "λ-GELU annealed → ReLU": "kgelu-annealed",
              "λ-GELU not annealed (uniform init) → ReLU": "kgelu-uniform"}

    def add(what, name, variant, metric, stats):
        rows.add(EPYC, what, f"{name}/{variant}", metric, None, dtype="float32", shape=shapes[name], device=EPYC_DEVICE, date=date,
                 command=command, stats=stats)

    parts = re.split(r"^#### ", block, flags=re.M)
    for part in parts[1:]:
        heading = part.splitlines()[0]
        for title_block in re.split(r"^\*\*", part, flags=re.M)[1:]:
            title = title_block.split("**")[0]
            name = by_title[title]
            tables = md_tables(title_block)
            if heading.startswith("Table I "):
                (header, *body), = tables
                score = "best_val_" + header[2].removeprefix("best val ")
                for label, seeds, best, epoch, lam, drift in body:
                    for metric, cell in (("seeds", seeds), (score, best), ("best_epoch", epoch), ("mean_lambda", lam), ("drift", drift)):
                        if cell != "–":
                            add("paper_table1", name, labels[label], metric, mean_std(cell))
            elif heading.startswith("Layerwise"):
                (header, *body), (_, *rho) = tables
                for site, *cells in body:
                    for mode, cell in zip(header[1:], cells, strict=True):
                        add("paper_fig3", name, mode, f"lambda {site.strip('`')}", mean_std(cell))
                for pair, cell, per_seed in rho:
                    add("paper_fig3_rho", name, pair, "spearman_rho", mean_std(cell))
                    for seed, value in enumerate(per_seed.split(", ")):
                        add("paper_fig3_rho", name, pair, f"spearman_rho seed {seed}", harness.Stats(float(value)))
            elif heading.startswith("Table II"):
                (header, *body), = tables
                metrics = ["original_" + header[1].removeprefix("original "), "after_relu_swap", "change", "change_val_loss"]
                for label, *cells in body:
                    for metric, cell in zip(metrics, cells):
                        add("paper_table2", name, labels[label], metric, mean_std(cell))
        if heading.startswith("τ × η grid"):
            setting = heading.split(" on ")[1].strip()
            for metric, (header, *body) in zip(("drift", "delta_bvs", "mean_lambda"), md_tables(part), strict=True):
                for tau_cell, *cells in body:
                    for eta_cell, cell in zip(header[1:], cells, strict=True):
                        variant = f"tau={tau_cell.split('= ')[1]} eta={eta_cell.split('= ')[1]}"
                        add("paper_grid", setting, variant, metric, mean_std(cell))


CONVERSION_COMMAND = "python scripts/convert_benchmark.py --output-dir outputs/convert_benchmark"
CONVERSION_DATE = "2026-11-29 19:31"
RECIPES = {  # old label prefix -> recipe id
    "GELU control": "gelu-control", "(b) ": "b", "(b+KD)": "b+kd", "(c) ": "c", "(c-data)": "c-data", "(d) ": "d",
    "**(e)": "e", "(e) ": "e", "(e+KD)": "e+kd", "**(e+KD)": "e+kd",
}


def recipe_id(label: str) -> str:
    return next(v for k, v in RECIPES.items() if label.startswith(k))


def conversion_tables(rows: Rows, old: str) -> None:
    text = section(old, "## Converting pretrained GELU models", "### The issue's goals")
    models = {"### GPT-2": ("GPT-2", "perplexity"), "### DeiT": ("DeiT", "accuracy"), "### all-MiniLM": ("MiniLM", "cosine")}
    fixed = {"GPT-2": {"gelu-pretrained": 5.1283, "a": 5.6869, "e0": 5.1757},  # the same run's fixed rows, given in prose
             "DeiT": {"gelu-pretrained": 0.8370, "a": 0.8290, "e0": 0.8365},
             "MiniLM": {"a": 0.4890, "e0": 0.9816}}
    for heading, (model, metric) in models.items():
        part = text[text.index(heading):]
        (header, *body), *_ = md_tables(part)
        budgets = [re.sub(r"\s+", " ", h) for h in header[1:]]
        for recipe, value in fixed[model].items():
            rows.add(EPYC, "conversion", recipe, metric, value, dtype="float32", shape=f"{model} | no training",
                     device=EPYC_DEVICE, date=CONVERSION_DATE, command=CONVERSION_COMMAND)
        for label, *cells in body:
            for budget, cell in zip(budgets, cells, strict=True):
                rows.add(EPYC, "conversion", recipe_id(label), metric, float(cell.strip("*").split()[0]), dtype="float32",
                         shape=f"{model} | {budget}", device=EPYC_DEVICE, date=CONVERSION_DATE, command=CONVERSION_COMMAND)
    trace_part = section(old, "### Data-aware targets vs the closed-form bound", "### Per-channel")
    (header, *body), = md_tables(trace_part)
    for step, closed, data in body:
        for recipe, cell in (("c", closed), ("c-data", data)):
            score, lam = re.match(r"([\d.]+) \(([\d.]+)\)", cell).groups()
            for metric, value in (("perplexity", score), ("mean_lambda", lam)):
                rows.add(EPYC, "conversion_trace", recipe, metric, value, dtype="float32", shape=f"GPT-2 | step {step} of 200",
                         device=EPYC_DEVICE, date=CONVERSION_DATE, command=CONVERSION_COMMAND)


def per_channel_table(rows: Rows, old: str) -> None:
    part = section(old, "### Per-channel vs layerwise hardness", "### Downstream value")
    (header, *body), = md_tables(part)
    names = {"layerwise, closed-form λ*": "layerwise/closed-form", "layerwise, data-aware λ*": "layerwise/data-aware",
             "per-channel, closed-form λ*": "per-channel/closed-form", "per-channel, data-aware λ*": "per-channel/data-aware"}
    for label, acc, relu, lam, spread, _final in body:
        for metric, cell in (("kgelu_accuracy", acc), ("relu_accuracy", relu), ("mean_lambda_learned", lam),
                             ("channel_spread_at_switch", spread)):
            if cell != "–":
                rows.add(EPYC, "per_channel", names[label], metric, cell, dtype="float32",
                         shape="DeiT 4x64 on 12 000 FashionMNIST images, 600 steps", device=EPYC_DEVICE, date="2026-11-29 19:44",
                         command="python scripts/per_channel_compare.py --output-dir outputs/per_channel")


def sparsity_table(rows: Rows, old: str) -> None:
    part = section(old, "### Downstream value", "### One command")
    (header, *body), = md_tables(part)
    for layer, zeros, apoz, dead, gelu_zeros, gelu_near in body:
        layer = layer.strip("*")
        model, _, name = layer.partition(" ")
        dead_count, channels = dead.split("/")
        figures = {"relu_exact_zeros_pct": zeros, "relu_apoz_max": apoz, "relu_dead_channels": dead_count, "channels": channels,
                   "gelu_exact_zeros_pct": gelu_zeros, "gelu_near_zero_pct": gelu_near}
        for metric, cell in figures.items():
            cell = cell.strip("*").replace(" %", "")
            if cell:
                rows.add(EPYC, "sparsity", f"{model}/{name}", metric, cell, dtype="float32",
                         shape="GPT-2 3x96 bytes, 16x16 blocks of 64" if model == "GPT-2" else "all-MiniLM-L6-v2, 8x16 blocks of 48",
                         device=EPYC_DEVICE, date="2026-11-29",
                         command=f"hf-kgelu analyze outputs/{'gpt2' if model == 'GPT-2' else 'minilm'}-relu --compare ORIGINAL ...")


def main(argv=None) -> int:
    old = Path((argv or sys.argv[1:])[0]).read_text()
    rows = Rows()
    s3, s4, s5 = (RAW / f"h200-2026-11-29-s{i}" for i in (3, 4, 5))
    s6 = RAW / "h200-2026-11-30-s6"
    kernel_cmd = "python3 benchmarks/bench_kernel.py --rows 256,2048,8192,32768"
    # nvidia-h200, in the order measured
    sweep_table(rows, s4 / "bench_kernel_sweep.csv", "2026-11-29 22:55", "python3 benchmarks/bench_kernel.py --sweep-only")
    step_table(rows, s4 / "train_step_gpt2_compile.csv", "2026-11-29 22:59",
               "python3 benchmarks/bench_train_step.py --model gpt2 --compile --variants gelu,kgelu --steps 150", compiled=True)
    step_table(rows, s3 / "train_step_deit_compile.csv", "2026-11-29",
               "python3 benchmarks/bench_train_step.py --model deit --compile --steps 40 --variants gelu,kgelu", compiled=True)
    gaps_table(rows, s5 / "tests_host_gaps_train_cpu_log.txt", "2026-11-29",
               "python3 benchmarks/step_gaps.py --model gpt2 --variants gelu,kgelu,gelu,kgelu --steps 5")
    step_table(rows, s5 / "train_step_gpt2.csv", "2026-11-29 23:40", "python3 benchmarks/bench_train_step.py --model gpt2 --steps 150")
    step_table(rows, s5 / "train_step_deit.csv", "2026-11-29 23:41", "python3 benchmarks/bench_train_step.py --model deit")
    for path, threads, date in (("bench_cpu_8t.csv", 8, "2026-11-29 23:54"), ("bench_cpu_1t_final.csv", 1, "2026-11-30 00:25"),
                                ("bench_cpu_bf16_1t_final.csv", 1, "2026-11-30 00:25")):
        rounds = 21 if threads == 8 else 11
        dtype = " --dtype bfloat16" if "bf16" in path else ""
        cpu_table(rows, H200, XEON_DEVICE, s5 / path, date, f"python3 benchmarks/bench_cpu.py --threads {threads} --rounds {rounds}{dtype}")
    flags_table(rows, H200, XEON_DEVICE, s5 / "cpu_kernel_flags.txt", "2026-11-29", "python3 benchmarks/cpu_kernel_flags.py --sizes 65536,1048576,4194304")
    kernel_table(rows, s6 / "bench_kernel.csv", "2026-11-30 01:13", kernel_cmd)
    host_table(rows, s6 / "bench_host.csv", "2026-11-30", "python3 benchmarks/bench_host.py")
    gpt2_cmd = "python3 benchmarks/bench_train_step.py --model gpt2 --variants gelu,kgelu,kgelu-python-launcher --steps {}"
    step_table(rows, s6 / "train_step_gpt2.csv", "2026-11-30 01:17", gpt2_cmd.format(150))
    step_table(rows, s6 / "train_step_gpt2_300.csv", "2026-11-30 01:19", gpt2_cmd.format(300))
    step_table(rows, s6 / "train_step_deit.csv", "2026-11-30",
               "python3 benchmarks/bench_train_step.py --model deit --variants gelu,kgelu,kgelu-python-launcher --steps 100")
    # nvidia-h200-x2
    scripts = "bash benchmarks/run_scripts_multi_gpu.sh OUT"
    script_runs(rows, RAW / "h200x2-2026-11-29-s2" / "scripts_bf16_summary.json", "bf16", "2026-11-29 20:52", scripts)
    script_runs(rows, RAW / "h200x2-2026-11-29-s2" / "scripts_fp32_summary.json", "fp32", "2026-11-29 21:06",
                f'ONLY="clm-1 clm-ddp2 image-1 image-ddp2" LAUNCH_EXTRA="--mixed_precision no" {scripts}')
    multi_gpu(rows, RAW / "h200x2-2026-11-29-s5", "2026-11-30 00:05", "bash benchmarks/run_multi_gpu.sh OUT")
    # cpu-amd-epyc (the 2-core dev machine)
    conversion_tables(rows, old)
    per_channel_table(rows, old)
    sparsity_table(rows, old)
    paper_tables(rows, old)
    epyc = RAW / "cpu-2026-11-29-s5"
    flags_table(rows, EPYC, EPYC_DEVICE, epyc / "cpu_kernel_flags.txt", "2026-11-29", "python3 benchmarks/cpu_kernel_flags.py --sizes 65536,1048576,4194304")
    for path, threads, dtype, date, rounds in (("bench_cpu_1t.csv", 1, "", "2026-11-30 00:05", 21), ("bench_cpu_2t.csv", 2, "", "2026-11-30 00:05", 21),
                                               ("bench_cpu_bf16_1t.csv", 1, "bfloat16", "2026-11-30 00:18", 11),
                                               ("bench_cpu_fp16_1t.csv", 1, "float16", "2026-11-30 00:18", 11)):
        cpu_table(rows, EPYC, EPYC_DEVICE, epyc / path, date,
                  f"python3 benchmarks/bench_cpu.py --threads {threads} --rounds {rounds}" + (f" --dtype {dtype}" if dtype else ""))
    for line in (epyc / "bench_annealing_host.txt").read_text().splitlines():
        m = re.match(r"(number|tensor)\s+([\d.]+)\s+([\d.]+)$", line)
        if m:
            for metric, value in (("us_per_site", m.group(2)), ("ms_per_step", m.group(3))):
                rows.add(EPYC, "annealing_host", m.group(1), metric, value, shape="12 sites on cpu, 200 steps", device=EPYC_DEVICE,
                         date="2026-11-30 00:32", command="python3 benchmarks/bench_annealing_host.py")
    rows.add(EPYC, "annealing_host", "number-vs-tensor", "theta_mismatches", 0, shape="12 sites on cpu, 200 steps",
             device=EPYC_DEVICE, date="2026-11-30 00:32", command="python3 benchmarks/bench_annealing_host.py")
    # README cites both eager GPT-2 runs of 2026-11-30 (1.010 and 1.013): keep the first as well
    rows.write(keep_all={("train_step", "2026-11-30 01:17")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
