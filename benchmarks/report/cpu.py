"""The CPU path section: the CPU kernel against F.gelu per machine and dtype, compiler flags, annealing host time."""

from __future__ import annotations

import re

from benchmarks.report.tables import Index, Results, elements, groups, num, ratio, spread, table, topic

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
            body.append(([f"{elements(shape):,}".replace(",", " "), _threads(shape), num(gelu, 3),
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
                body.append(([f"{elements(shape):,}".replace(",", " "), f"`{variant}`", num(fwd, 0), num(bwd, 0),
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


def section(res: Results) -> str:
    intro = ("On CPU, `kgelu` runs a C kernel compiled at first use with the machine's compiler (`-O3 -march=native`, "
             "512-bit vectors on x86; float32, bfloat16 and float16, math in float32, per site or per channel): one pass "
             "forward, one backward giving dx and dλ together. torch.compile and export keep the torch path, which they "
             "can trace; without a compiler the torch path serves, with a warning. Against `F.gelu`, forward+backward "
             "through autograd, medians of interleaved rounds. Command: `python -m benchmarks.cpu` (`--threads`, `--dtype`, "
             "`--parts path,flags,annealing`).")
    return topic("CPU path", intro, cpu_tables(res))
