"""λ-GELU op against torch's GELU and ReLU and the naive autograd version, on one CUDA device.

For each size and dtype: forward, backward and forward+backward time (median of
`triton.testing.do_bench`, which flushes the L2 cache before every run), the bytes saved for
backward per element, and the peak extra memory of one forward+backward per element. The
input is a (rows, 3072) matrix, GPT-2 small's MLP width; 8192 rows are 8×1024 tokens.

    python benchmarks/bench_kernel.py                      # the table and a CSV
    python benchmarks/bench_kernel.py --sweep              # launch-configuration sweep first
    python benchmarks/bench_kernel.py --rows 8192 --dtypes bf16 --csv out.csv

Prints a table and writes a CSV (default outputs/bench/bench_kernel.csv).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import sys

import torch
import torch.nn.functional as F

from bench_host import host_overhead  # the script's own folder is on sys.path
from choose_kernel_config import applies

WIDTH = 3072
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def naive_kgelu(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """What a user writes without the op: autograd saves every intermediate."""
    return x * 0.5 * (1.0 + torch.erf(lam * x * _INV_SQRT2))


def variants(rows: int, dtype: torch.dtype, compile_naive: bool):
    """name -> (make_input, fn(x, lam), lam or None, kernel CONFIG overrides while measured).
    make_input returns a fresh leaf. The alternative Φ forms of our kernel are timed where the
    naive version is compiled too (the target size)."""
    from hf_kgelu.functional import kgelu, kgelu_theta

    dev = "cuda"

    def dense():
        return torch.randn(rows, WIDTH, device=dev, dtype=dtype).requires_grad_()

    def transposed():  # the same elements, stored column-major: a non-contiguous view
        return torch.randn(WIDTH, rows, device=dev, dtype=dtype).t().detach().requires_grad_()

    lam = torch.tensor([1.7], device=dev, requires_grad=True)
    lam_frozen = torch.tensor([1.7], device=dev)
    lam_channels = torch.linspace(1.01, 20.0, WIDTH, device=dev).requires_grad_()
    theta = torch.tensor([0.07], device=dev, requires_grad=True)  # λ ≈ 1.7 at τ = 0.1
    theta_channels = torch.linspace(-0.3, 2.0, WIDTH, device=dev).requires_grad_()

    def module_path(x, t):  # what a KGELU site runs: λ = 1 + softplus(θ/τ) inside the kernel
        return kgelu_theta(x, t, 0.1)

    table = {
        "gelu": (dense, lambda x, _: F.gelu(x), None, {}),
        "relu": (dense, lambda x, _: F.relu(x), None, {}),
        "naive λ-GELU": (dense, naive_kgelu, lam, {}),
    }
    if compile_naive:
        table["naive λ-GELU, torch.compile"] = (dense, torch.compile(naive_kgelu, fullgraph=True), lam, {})
    table |= {
        "λ-GELU (ours), KGELU site (θ)": (dense, module_path, theta, {}),
        "λ-GELU (ours), KGELU per-channel θ": (dense, module_path, theta_channels, {}),
        "λ-GELU (ours)": (dense, kgelu, lam, {}),
        "λ-GELU (ours), λ frozen": (dense, kgelu, lam_frozen, {}),
        "λ-GELU (ours), per-channel": (dense, kgelu, lam_channels, {}),
        "gelu, transposed input": (transposed, lambda x, _: F.gelu(x), None, {}),
        "λ-GELU (ours), transposed input": (transposed, kgelu, lam, {}),
    }
    if compile_naive:
        table["λ-GELU (ours), libdevice erfc"] = (dense, kgelu, lam, {"cdf": "erfc"})
        table["λ-GELU (ours), erf form"] = (dense, kgelu, lam, {"cdf": "erf"})
    return table


def saved_bytes(fn, x, lam) -> int:
    """Bytes autograd keeps for backward (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, lam)
    return sum(seen.values())


def peak_extra_bytes(fn, x, lam, g) -> int:
    """Peak memory of one forward+backward above what was allocated before it."""
    x.grad = None
    if lam is not None and lam.requires_grad:
        lam.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn(x, lam).backward(g)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def time_variant(fn, x, lam, g, warmup_ms: int, rep_ms: int) -> dict[str, float]:
    """do_bench medians: each call timed alone after an L2 flush, host time included where the
    host is slower than the device."""
    from triton.testing import do_bench

    leaves = [x] + ([lam] if lam is not None and lam.requires_grad else [])

    def forward():
        fn(x, lam)

    def forward_backward():
        fn(x, lam).backward(g)

    out = fn(x, lam)

    def backward():
        out.backward(g, retain_graph=True)

    kw = dict(warmup=warmup_ms, rep=rep_ms, grad_to_none=leaves, return_mode="median")
    return {
        "fwd_ms": do_bench(forward, **kw),
        "bwd_ms": do_bench(backward, **kw),
        "fwd_bwd_ms": do_bench(forward_backward, **kw),
    }


def graph_time(fn, make, lam, dtype, copies: int = 4, replays: int = 20) -> dict[str, float]:
    """Device time alone: `copies` calls on distinct inputs (together several times the L2)
    captured in one CUDA graph, replayed; milliseconds per call, forward and forward+backward."""
    xs = [make() for _ in range(copies)]
    gs = [torch.randn(x.shape, device="cuda", dtype=dtype) for x in xs]
    leaves = xs + ([lam] if lam is not None and lam.requires_grad else [])
    result = {}
    for mode in ("fwd", "fwd_bwd"):
        def body():
            for x, g in zip(xs, gs, strict=True):
                out = fn(x, lam)
                if mode == "fwd_bwd":
                    out.backward(g)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                for t in leaves:
                    t.grad = None
                body()
        torch.cuda.current_stream().wait_stream(side)
        for t in leaves:
            t.grad = None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            body()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
        result[f"{mode}_graph_ms"] = start.elapsed_time(end) / (replays * copies)
        del graph
    for t in leaves:
        t.grad = None
    return result


def sweep(rows: int, dtypes: list[str]) -> list[dict]:
    """Device time (CUDA-graph replays) of a KGELU site's forward and forward+backward (θ in the
    kernel; per site and per channel) with one CONFIG entry of the kernels changed at a time,
    against torch's GELU."""
    from hf_kgelu.functional import kgelu_theta
    from hf_kgelu.kernels import CONFIG

    default = dict(CONFIG)
    results = []
    for dname in dtypes:
        dtype = DTYPES[dname]

        def make():
            return torch.randn(rows, WIDTH, device="cuda", dtype=dtype).requires_grad_()

        ref = graph_time(lambda x, _: F.gelu(x), make, None, dtype)
        configs = [{}]
        # 16-bit and float32 tiles (each run only where it acts: choose_kernel_config.applies)
        configs += [dict(bwd_block=b, bwd_warps=w) for b, w in ((1024, 2), (2048, 4), (4096, 4))]
        configs += [dict(fwd_block=b, fwd_warps=w) for b, w in ((1024, 4), (2048, 2), (4096, 4))]
        configs += [dict(bwd_block_fp32=b, bwd_warps_fp32=w) for b, w in ((1024, 2), (1024, 4), (2048, 4), (4096, 8))]
        configs += [dict(fwd_block_fp32=b, fwd_warps_fp32=w) for b, w in ((512, 4), (1024, 4), (1024, 2), (2048, 8))]
        configs += [dict(channel_programs_per_sm=p) for p in (2, 8)]
        configs += [dict(channel_bwd_block=b, channel_bwd_warps=w) for b, w in ((1024, 8), (4096, 8))]
        configs += [dict(sum_max_cols=c) for c in (32, 64)]
        configs += [dict(sum_block=8192, sum_warps=8)]
        for layout, theta in (("site", torch.tensor([0.07], device="cuda", requires_grad=True)),
                              ("channel", torch.linspace(-0.3, 2.0, WIDTH, device="cuda").requires_grad_())):
            for change in configs:
                if not applies(change, dname, layout):
                    continue
                CONFIG.clear()
                CONFIG.update(default, **change)
                t = graph_time(lambda x, th: kgelu_theta(x, th, 0.1), make, theta, dtype)
                row = dict(dtype=dname, layout=layout, change=" ".join(f"{k}={v}" for k, v in change.items()) or "defaults",
                           fwd_us=t["fwd_graph_ms"] * 1e3, fwd_bwd_us=t["fwd_bwd_graph_ms"] * 1e3,
                           gelu_fwd_us=ref["fwd_graph_ms"] * 1e3, gelu_fwd_bwd_us=ref["fwd_bwd_graph_ms"] * 1e3,
                           fwd_vs_gelu=t["fwd_graph_ms"] / ref["fwd_graph_ms"],
                           fwd_bwd_vs_gelu=t["fwd_bwd_graph_ms"] / ref["fwd_bwd_graph_ms"])
                results.append(row)
                print(f"sweep {dname} {layout:7} {row['change']:36} fwd {row['fwd_us']:7.1f} us ({row['fwd_vs_gelu']:.3f}x gelu)  "
                      f"fwd+bwd {row['fwd_bwd_us']:7.1f} us ({row['fwd_bwd_vs_gelu']:.3f}x gelu)", flush=True)
    CONFIG.clear()
    CONFIG.update(default)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="256,2048,8192,32768", help="comma-separated row counts (× 3072 elements)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp16, fp32")
    parser.add_argument("--csv", default="outputs/bench/bench_kernel.csv")
    parser.add_argument("--compile-rows", default="8192", help="row counts at which to also time torch.compile of the naive version")
    parser.add_argument("--sweep", action="store_true", help="first sweep launch configurations at 8192 rows")
    parser.add_argument("--sweep-only", action="store_true")
    parser.add_argument("--warmup-ms", type=int, default=25)
    parser.add_argument("--rep-ms", type=int, default=100)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernel needs a CUDA device (the CPU path is measured by benchmarks/bench_cpu.py)", file=sys.stderr)
        return 2
    import triton

    dtypes = args.dtypes.split(",")
    compile_rows = {int(r) for r in args.compile_rows.split(",") if r}
    device = torch.cuda.get_device_name()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = f"# {device}, torch {torch.__version__}, triton {triton.__version__}, {platform.python_version()}, {stamp}"
    print(header, flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    if args.sweep or args.sweep_only:
        rows = sweep(8192, dtypes)
        with open(os.path.splitext(args.csv)[0] + "_sweep.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        if args.sweep_only:
            return 0

    records = []
    for dname in dtypes:
        dtype = DTYPES[dname]
        for rows in (int(r) for r in args.rows.split(",")):
            n = rows * WIDTH
            table = variants(rows, dtype, compile_naive=rows in compile_rows)
            gelu_times = None
            for name, (make, fn, lam, overrides) in table.items():
                from hf_kgelu.kernels import CONFIG

                default = dict(CONFIG)
                CONFIG.update(overrides)
                x = make()
                g = torch.randn(rows, WIDTH, device="cuda", dtype=dtype)
                times = time_variant(fn, x, lam, g, args.warmup_ms, args.rep_ms)
                # CUDA graphs and a compiled function's own graph capture do not mix here
                times |= ({"fwd_graph_ms": float("nan"), "fwd_bwd_graph_ms": float("nan")} if "compile" in name
                          else graph_time(fn, make, lam, dtype))
                # saved-tensor hooks and torch.compile do not mix: no figure for the compiled one
                saved = float("nan") if "compile" in name else saved_bytes(fn, x, lam)
                peak = peak_extra_bytes(fn, x, lam, g)
                if name == "gelu":
                    gelu_times = times
                rec = dict(
                    device=device, dtype=dname, rows=rows, elements=n, variant=name,
                    fwd_ms=times["fwd_ms"], bwd_ms=times["bwd_ms"], fwd_bwd_ms=times["fwd_bwd_ms"],
                    fwd_vs_gelu=times["fwd_ms"] / gelu_times["fwd_ms"],
                    fwd_bwd_vs_gelu=times["fwd_bwd_ms"] / gelu_times["fwd_bwd_ms"],
                    fwd_graph_ms=times["fwd_graph_ms"], fwd_bwd_graph_ms=times["fwd_bwd_graph_ms"],
                    fwd_graph_vs_gelu=times["fwd_graph_ms"] / gelu_times["fwd_graph_ms"],
                    fwd_bwd_graph_vs_gelu=times["fwd_bwd_graph_ms"] / gelu_times["fwd_bwd_graph_ms"],
                    saved_bytes_per_elem=saved / n, peak_extra_bytes_per_elem=peak / n,
                )
                records.append(rec)
                CONFIG.clear()
                CONFIG.update(default)
                del x, g
            torch.cuda.empty_cache()

    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    overhead = host_overhead()
    with open(os.path.splitext(args.csv)[0] + "_host.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(overhead[0]))
        writer.writeheader()
        writer.writerows(overhead)
    print(header)
    print("do_bench: median per call, L2 flushed before each (host time shows where it exceeds the device's);")
    print("graph: device time alone, CUDA-graph replays over 4 distinct inputs; B/el: bytes per element")
    print(f"{'dtype':5} {'elements':>11} {'variant':33} {'fwd µs':>8} {'bwd µs':>8} {'f+b µs':>8} "
          f"{'fwd/gelu':>8} {'f+b/gelu':>8} {'graph fwd':>9} {'graph f+b':>9} {'g.fwd/gelu':>10} {'g.f+b/gelu':>10} "
          f"{'saved B/el':>10} {'peak B/el':>9}")
    for r in records:
        print(f"{r['dtype']:5} {r['elements']:11d} {r['variant']:33} {r['fwd_ms'] * 1e3:8.1f} {r['bwd_ms'] * 1e3:8.1f} "
              f"{r['fwd_bwd_ms'] * 1e3:8.1f} {r['fwd_vs_gelu']:8.3f} {r['fwd_bwd_vs_gelu']:8.3f} "
              f"{r['fwd_graph_ms'] * 1e3:9.1f} {r['fwd_bwd_graph_ms'] * 1e3:9.1f} {r['fwd_graph_vs_gelu']:10.3f} "
              f"{r['fwd_bwd_graph_vs_gelu']:10.3f} {r['saved_bytes_per_elem']:10.2f} {r['peak_extra_bytes_per_elem']:9.2f}")
    print("host time per forward+backward call, 64×64 fp32 (device idle; benchmarks/bench_host.py has the parts):")
    for r in overhead:
        print(f"  {r['case']:45} {r['host_us']:7.1f} µs")
    print(f"CSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
