"""Host (CPU) time per λ-GELU call on one CUDA device, where a model with many small sites spends it.

On a tiny tensor the device idles and every microsecond is the host's: Python glue, autograd,
allocations and kernel launches. A GPT-2 small step has 12 sites, so on a slow host this, not the
kernels, decides the step-time ratio to GELU. Three parts:

1. forward+backward per call for GELU and for each λ-GELU path (the C++ site path, our Python
   launcher, and Triton's `kernel[grid]` each time: `hf_kgelu.kernels.kgelu.DIRECT_LAUNCH`);
2. the pieces: one kernel launch each way, one `torch.empty_like`, one autograd.Function call;
3. a cProfile of the `KGELU` forward+backward (the functions with the most own time).

Every case runs in interleaved rounds (host time drifts on a shared machine); the median round
is reported.

    python benchmarks/bench_host.py                 # tables, profile, CSV
    python benchmarks/bench_host.py --csv out.csv --calls 300 --rounds 7
"""

from __future__ import annotations

import argparse
import cProfile
import csv
import io
import os
import platform
import pstats
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _median_us(cases: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median over interleaved rounds of the host µs per call of each case (device synced
    before and after a round, so queued device work is not counted)."""
    for fn in cases.values():
        for _ in range(20):  # warm-up: compilation, caches
            fn()
    per_round = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            per_round[name].append((time.perf_counter() - t0) / calls * 1e6)
    return {name: statistics.median(times) for name, times in per_round.items()}


def _with_flag(module, name: str, value, fn):
    """fn run with `module.name` set to `value` (restored after it)."""

    def run():
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            fn()
        finally:
            setattr(module, name, saved)

    return run


def _with_direct_launch(enabled: bool, fn):
    from hf_kgelu.kernels import kgelu as kernel_module

    return _with_flag(kernel_module, "DIRECT_LAUNCH", enabled, fn)


def _with_python_launcher(fn):
    """fn with the C++ site path off: KGELU sites take the Python launcher."""
    from hf_kgelu import functional

    return _with_flag(functional, "_site_launcher_ready", False, fn)


def host_overhead(calls: int = 300, rounds: int = 5) -> list[dict]:
    """Host µs per forward+backward call on a 64×64 float32 tensor, per path."""
    from hf_kgelu import KGELU, functional
    from hf_kgelu.functional import KGeluKernelFunction, kgelu, kgelu_theta

    x = torch.randn(64, 64, device="cuda", requires_grad=True)
    g = torch.randn(64, 64, device="cuda")
    lam = torch.tensor([1.7], device="cuda", requires_grad=True)
    theta = torch.tensor([0.3], device="cuda", requires_grad=True)
    site = KGELU().cuda()
    site(x).backward(g)  # the first call loads (builds, once) the C++ site path
    gelu_module = torch.nn.GELU()

    def fwd_bwd(fn):
        return lambda: fn().backward(g)

    def naive(t, lam):
        return t * 0.5 * (1.0 + torch.erf(lam * t * 0.7071067811865476))

    cases = {
        "gelu (F.gelu)": fwd_bwd(lambda: F.gelu(x)),
        "gelu (nn.GELU module)": fwd_bwd(lambda: gelu_module(x)),
        "KGELU module (C++ site path)": fwd_bwd(lambda: site(x)),
        "KGELU module, Python launcher": _with_python_launcher(fwd_bwd(lambda: site(x))),
        "KGELU module, Triton launches": _with_direct_launch(False, fwd_bwd(lambda: site(x))),
        "kgelu_theta(x, θ, τ)": fwd_bwd(lambda: kgelu_theta(x, theta, 0.1)),
        "kgelu(x, λ)": fwd_bwd(lambda: kgelu(x, lam)),
        "KGeluKernelFunction.apply(x, λ)": fwd_bwd(lambda: KGeluKernelFunction.apply(x, lam)),
        "custom op hf_kgelu::kgelu": fwd_bwd(lambda: torch.ops.hf_kgelu.kgelu(x, lam)),
        "λ = 1 + softplus(θ/τ) in torch, then kgelu": fwd_bwd(lambda: kgelu(x, 1.0 + F.softplus(theta / 0.1))),
        "torch path (KGeluFunction)": fwd_bwd(lambda: functional.KGeluFunction.apply(x, lam)),
        "naive λ-GELU (autograd)": fwd_bwd(lambda: naive(x, lam)),
    }
    medians = _median_us(cases, calls, rounds)
    return [dict(part="forward+backward", case=name, host_us=us) for name, us in medians.items()]


def pieces(calls: int = 300, rounds: int = 5) -> list[dict]:
    """Host µs of the parts a λ-GELU call is made of."""
    from hf_kgelu.kernels import kgelu as kernel_module

    x = torch.randn(64, 64, device="cuda")
    theta = torch.tensor([0.3], device="cuda")

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, grad):
            return grad

    leaf = x.clone().requires_grad_(True)
    partials = torch.randn(4, device="cuda")
    cases = {
        "forward launcher, direct launch": lambda: kernel_module.kgelu_forward(x, theta, 0.1),
        "forward launcher, Triton launch": _with_direct_launch(False, lambda: kernel_module.kgelu_forward(x, theta, 0.1)),
        "torch.empty_like(x)": lambda: torch.empty_like(x),
        "torch.sum of 4 partials": lambda: partials.sum(0, keepdim=True),
        "autograd.Function.apply (identity)": lambda: Identity.apply(leaf),
        "F.gelu forward (no grad)": lambda: F.gelu(x),
    }
    medians = _median_us(cases, calls, rounds)
    return [dict(part="piece", case=name, host_us=us) for name, us in medians.items()]


def profile_calls(fn, calls: int, top: int = 25) -> str:
    """cProfile of `calls` calls of fn (device synced around them), the functions with the most
    own time: where a path's host time goes. bench_train_step.py uses it for whole steps."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    sync()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def profile_site(calls: int = 300) -> str:
    """cProfile of the KGELU forward+backward, after a warm-up."""
    from hf_kgelu import KGELU

    x = torch.randn(64, 64, device="cuda", requires_grad=True)
    g = torch.randn(64, 64, device="cuda")
    site = KGELU().cuda()
    for _ in range(20):
        site(x).backward(g)
    return profile_calls(lambda: site(x).backward(g), calls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--csv", default="outputs/bench/bench_host.csv")
    parser.add_argument("--no-profile", action="store_true", help="skip the cProfile listing")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_host.py needs a CUDA device (the host time in question is the time to launch on one)")
        return 2
    os.makedirs(os.path.dirname(os.path.abspath(args.csv)), exist_ok=True)
    rows = host_overhead(args.calls, args.rounds) + pieces(args.calls, args.rounds)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{torch.cuda.get_device_name()} · host {platform.processor() or platform.machine()} · torch {torch.__version__}")
    print(f"host µs per call, 64×64 float32, median of {args.rounds} interleaved rounds of {args.calls}:")
    for r in rows:
        print(f"  {r['part']:17} {r['case']:46} {r['host_us']:8.1f}")
    if not args.no_profile:
        print(profile_site(args.calls))
    print(f"CSV: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
