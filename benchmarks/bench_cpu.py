"""CPU path of λ-GELU against torch's GELU: forward+backward time and the ratio to F.gelu.

Variants, all forward+backward through autograd on a float32 (or --dtype) tensor:
  gelu               F.gelu (exact erf)
  kgelu              hf_kgelu's kgelu, λ learnable (the dλ reduction runs): the compiled CPU
                     kernel (hf_kgelu.cpu_kernel)
  kgelu, λ frozen    the same with λ not requiring grad (annealing, frozen θ)
  KGELU module       the activation site a model runs (θ learnable, λ = 1 + softplus(θ/τ))
  torch ops          kgelu through the torch-op path (HF_KGELU_FORCE_REFERENCE), λ learnable
  foundation         the op as first written (kept here verbatim for the before/after figure)
  naive              x·½·(1 + erf(λx/√2)) with autograd

The variants are timed in interleaved rounds (the machine may be shared) and the median is
reported.

    python benchmarks/bench_cpu.py                   # 1 thread, sizes 2^16, 2^20, 2^22
    python benchmarks/bench_cpu.py --threads 2 --sizes 1048576 --rounds 30
    python benchmarks/bench_cpu.py --dtype bfloat16

Prints a table and writes a CSV (default outputs/bench/bench_cpu.csv).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class FoundationKGelu(torch.autograd.Function):
    """The foundation's torch path (commit bbfdeca), for the before/after comparison."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.save_for_backward(x, lam)
        xc = x.float()
        return (torch.erfc(xc * lam * -_INV_SQRT2).mul_(0.5)).mul_(xc).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, lam = ctx.saved_tensors
        xc, g = x.float(), grad_out.float()
        z = xc * lam
        density = torch.exp(-0.5 * z * z).mul_(_INV_SQRT_2PI)
        gate = torch.erfc(z * -_INV_SQRT2).mul_(0.5)
        grad_x = (gate.add_(z * density)).mul_(g).to(x.dtype)
        grad_lam = (g * xc * xc * density).sum().reshape(lam.shape)
        return grad_x, grad_lam


def naive(x, lam):
    return x * 0.5 * (1.0 + torch.erf(lam * x * _INV_SQRT2))


def _torch_ops_path(fn):
    """fn run with the torch-op path forced (as HF_KGELU_FORCE_REFERENCE=1 does)."""
    from hf_kgelu import functional

    def run(x):
        saved, functional.FORCE_REFERENCE = functional.FORCE_REFERENCE, True
        try:
            return fn(x)
        finally:
            functional.FORCE_REFERENCE = saved

    return run


def main(argv=None) -> int:
    from hf_kgelu import KGELU
    from hf_kgelu.cpu_kernel import load
    from hf_kgelu.functional import kgelu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="65536,1048576,4194304")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--csv", default="outputs/bench/bench_cpu.csv")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    lam = torch.tensor([1.7], requires_grad=True)
    frozen = torch.tensor([1.7])
    site = KGELU(lambda_init=1.7)
    if load() is None:
        print("note: the compiled CPU kernel is unavailable (see the warning); every kgelu row is the torch path")
    variants = {
        "gelu": lambda x: F.gelu(x),
        "kgelu": lambda x: kgelu(x, lam),
        "kgelu, λ frozen": lambda x: kgelu(x, frozen),
        "KGELU module": site,
        "torch ops": _torch_ops_path(lambda x: kgelu(x, lam)),
        "foundation": lambda x: FoundationKGelu.apply(x, lam),
        "naive": lambda x: naive(x, lam),
    }
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    dtype = getattr(torch, args.dtype)
    header = (f"# CPU {platform.processor() or platform.machine()}, {args.dtype}, {args.threads} thread(s), "
              f"capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, {stamp}")
    print(header, flush=True)
    records = []
    for n in (int(s) for s in args.sizes.split(",")):
        x = torch.randn(n, dtype=dtype, requires_grad=True)
        g = torch.randn(n, dtype=dtype)
        samples = {name: [] for name in variants}
        for fn in variants.values():  # warm-up
            fn(x).backward(g)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                x.grad = lam.grad = site.theta.grad = None
                t0 = time.perf_counter()
                fn(x).backward(g)
                samples[name].append(time.perf_counter() - t0)
        gelu_ms = statistics.median(samples["gelu"]) * 1e3
        for name in variants:
            ms = statistics.median(samples[name]) * 1e3
            records.append(dict(elements=n, dtype=args.dtype, threads=args.threads, variant=name, fwd_bwd_ms=ms,
                                min_ms=min(samples[name]) * 1e3, vs_gelu=ms / gelu_ms))
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    print(f"{'elements':>9} {'variant':16} {'f+b ms':>8} {'min ms':>8} {'vs gelu':>8}")
    for r in records:
        print(f"{r['elements']:9d} {r['variant']:16} {r['fwd_bwd_ms']:8.3f} {r['min_ms']:8.3f} {r['vs_gelu']:8.2f}")
    print(f"CSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
