"""Pick kernel CONFIG entries from a `bench_kernel.py --sweep-only` CSV and print them as the
JSON that HF_KGELU_KERNEL_CONFIG takes.

Each sweep row changes one entry group from the defaults. Per group, the value with the lowest
forward+backward time relative to the defaults' of the same dtype and layout (forward time for
the forward's own entries), averaged with the per-site layout weighted 2:1 over per-channel,
wins if it beats the defaults by more than `--margin`. An entry is judged only on the dtypes and
layouts it acts on (`applies`).

    python benchmarks/choose_kernel_config.py outputs/gpu/bench_kernel_sweep.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict


def parse_change(text: str) -> dict:
    if text == "defaults":
        return {}
    out = {}
    for item in text.split():
        key, value = item.split("=", 1)
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def applies(keys, dtype: str, layout: str) -> bool:
    """Whether changing these CONFIG entries can change the kernels' time for this dtype and
    layout: `channel_*` and `sum_max_cols` act on the per-channel layout alone, `bwd_*` (the
    per-site tile) on the per-site layout alone, `*_fp32` on float32 alone and the other tile
    entries (`fwd_*`, `bwd_*`) on 16-bit inputs alone."""
    for key in keys:
        if (key.startswith("channel_") or key == "sum_max_cols") and layout != "channel":
            return False
        if key.startswith("bwd_") and layout != "site":
            return False
        if key.startswith(("fwd_", "bwd_")) and key.endswith("_fp32") != (dtype == "fp32"):
            return False
    return True


def choose(rows: list[dict], margin: float) -> dict:
    """Per entry group, the value whose time relative to the defaults' (same dtype and layout)
    has the lowest weighted mean, if that mean is below 1 − margin."""
    defaults = {(r["dtype"], r["layout"]): r for r in rows if r["change"] == "defaults"}
    relative: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        keys = parse_change(r["change"])
        base = defaults.get((r["dtype"], r["layout"]))
        if not keys or base is None or not applies(keys, r["dtype"], r["layout"]):
            continue
        metric = "fwd_vs_gelu" if all(k.startswith("fwd_") for k in keys) else "fwd_bwd_vs_gelu"
        weight = 2 if r["layout"] == "site" else 1
        relative[r["change"]] += [float(r[metric]) / float(base[metric])] * weight
    groups: dict[tuple, list[str]] = defaultdict(list)
    for change in relative:
        groups[tuple(sorted(parse_change(change)))].append(change)
    chosen: dict = {}
    for changes in groups.values():
        best = min(changes, key=lambda c: statistics.mean(relative[c]))
        if statistics.mean(relative[best]) < 1 - margin:
            chosen.update(parse_change(best))
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--margin", type=float, default=0.01, help="relative improvement a change must bring")
    args = parser.parse_args(argv)
    with open(args.csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    print(json.dumps(choose(rows, args.margin)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
