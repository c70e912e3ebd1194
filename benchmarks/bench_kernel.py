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

WIDTH = 3072
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def naive_kgelu(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """What a user writes without the op: autograd saves every intermediate."""
    return x * 0.5 * (1.0 + torch.erf(lam * x * _INV_SQRT2))


def variants(rows: int, dtype: torch.dtype, compile_naive: bool):
    """name -> (make_input, fn(x, lam), lam or None). make_input returns a fresh leaf."""
    from hf_kgelu.functional import kgelu

    dev = "cuda"

    def dense():
        return torch.randn(rows, WIDTH, device=dev, dtype=dtype).requires_grad_()

    def transposed():  # the same elements, stored column-major: a non-contiguous view
        return torch.randn(WIDTH, rows, device=dev, dtype=dtype).t().detach().requires_grad_()

    lam = torch.tensor([1.7], device=dev, requires_grad=True)
    lam_frozen = torch.tensor([1.7], device=dev)
    lam_channels = torch.linspace(1.01, 20.0, WIDTH, device=dev).requires_grad_()
    table = {
        "gelu": (dense, lambda x, _: F.gelu(x), None),
        "relu": (dense, lambda x, _: F.relu(x), None),
        "naive λ-GELU": (dense, naive_kgelu, lam),
    }
    if compile_naive:
        table["naive λ-GELU, torch.compile"] = (dense, torch.compile(naive_kgelu, fullgraph=True), lam)
    return table | {
        "λ-GELU (ours)": (dense, kgelu, lam),
        "λ-GELU (ours), λ frozen": (dense, kgelu, lam_frozen),
        "λ-GELU (ours), per-channel": (dense, kgelu, lam_channels),
        "gelu, transposed input": (transposed, lambda x, _: F.gelu(x), None),
        "λ-GELU (ours), transposed input": (transposed, kgelu, lam),
    }


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


def sweep(rows: int, dtypes: list[str], warmup_ms: int, rep_ms: int) -> list[dict]:
    """Times our forward and backward over launch configurations (CONFIG of the kernels)."""
    from hf_kgelu.functional import kgelu
    from hf_kgelu.kernels import CONFIG

    from triton.testing import do_bench

    default = dict(CONFIG)
    results = []
    for dname in dtypes:
        x = torch.randn(rows, WIDTH, device="cuda", dtype=DTYPES[dname]).requires_grad_()
        g = torch.randn_like(x)
        lam = torch.tensor([1.7], device="cuda", requires_grad=True)
        ref_fb = do_bench(lambda: F.gelu(x).backward(g), warmup=warmup_ms, rep=rep_ms, grad_to_none=[x], return_mode="median")
        ref_f = do_bench(lambda: F.gelu(x), warmup=warmup_ms, rep=rep_ms, return_mode="median")
        for exact_tail in (True, False):
            for block in (1024, 2048, 4096):
                for warps in (4, 8, 16):
                    if block // (32 * warps) < 2:
                        continue
                    CONFIG.update(default, fwd_block=block, fwd_warps=warps, bwd_block=block, bwd_warps=warps, exact_tail=exact_tail)
                    kw = dict(warmup=warmup_ms, rep=rep_ms, grad_to_none=[x, lam], return_mode="median")
                    fwd = do_bench(lambda: kgelu(x, lam), **kw)
                    fb = do_bench(lambda: kgelu(x, lam).backward(g), **kw)
                    row = dict(dtype=dname, exact_tail=exact_tail, block=block, warps=warps, fwd_ms=fwd, fwd_bwd_ms=fb,
                               fwd_vs_gelu=fwd / ref_f, fwd_bwd_vs_gelu=fb / ref_fb)
                    results.append(row)
                    print(f"sweep {dname} exact_tail={exact_tail!s:5} block={block:5d} warps={warps:2d}  "
                          f"fwd {fwd * 1e3:7.1f} us ({fwd / ref_f:.3f}x gelu)  fwd+bwd {fb * 1e3:7.1f} us ({fb / ref_fb:.3f}x gelu)",
                          flush=True)
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
        rows = sweep(8192, dtypes, args.warmup_ms, args.rep_ms)
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
            for name, (make, fn, lam) in table.items():
                x = make()
                g = torch.randn(rows, WIDTH, device="cuda", dtype=dtype)
                times = time_variant(fn, x, lam, g, args.warmup_ms, args.rep_ms)
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
                    saved_bytes_per_elem=saved / n, peak_extra_bytes_per_elem=peak / n,
                )
                records.append(rec)
                del x, g
            torch.cuda.empty_cache()

    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    print(header)
    print(f"{'dtype':5} {'elements':>11} {'variant':33} {'fwd µs':>8} {'bwd µs':>8} {'f+b µs':>8} "
          f"{'fwd/gelu':>8} {'f+b/gelu':>8} {'saved B/el':>10} {'peak B/el':>9}")
    for r in records:
        print(f"{r['dtype']:5} {r['elements']:11d} {r['variant']:33} {r['fwd_ms'] * 1e3:8.1f} {r['bwd_ms'] * 1e3:8.1f} "
              f"{r['fwd_bwd_ms'] * 1e3:8.1f} {r['fwd_vs_gelu']:8.3f} {r['fwd_bwd_vs_gelu']:8.3f} "
              f"{r['saved_bytes_per_elem']:10.2f} {r['peak_extra_bytes_per_elem']:9.2f}")
    print(f"CSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
