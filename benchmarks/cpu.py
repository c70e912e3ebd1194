"""The CPU path of λ-GELU against torch's GELU, the CPU kernel's compiler flags, and the host time
the annealing callback spends per step.

Parts (--parts, default "path"):
  path       forward+backward through autograd on a float32 (or --dtype) tensor of each size:
               gelu          F.gelu (exact erf)
               kgelu         hf_kgelu's kgelu, λ learnable (the dλ reduction runs): the compiled CPU kernel
               kgelu-frozen  the same with λ not requiring grad (annealing, frozen θ)
               kgelu-site    the KGELU module a model runs (θ learnable, λ = 1 + softplus(θ/τ))
               torch-path    kgelu through the torch ops (HF_KGELU_FORCE_REFERENCE), λ learnable
               naive         x·½·(1 + erf(λx/√2)) with autograd
  flags      the CPU kernel built with other compiler flags (each into a temporary folder), one
             thread, raw forward and backward calls (per site, λ learning); "base" is the package's flags
  annealing  per site and step, the two ways a one-λ site can be set once annealing starts: "number"
             (λ(step) in float arithmetic, set_lambda(float): what the callback does) and "tensor" (the
             previous way: float64 tensor ops, set_lambda(tensor)); checks both write bitwise the same θ
Every part times its variants in interleaved rounds (benchmarks/harness.py).

    python -m benchmarks.cpu                                  # 1 thread, sizes 2^16, 2^20, 2^22
    python -m benchmarks.cpu --threads 2 --dtype bfloat16
    python -m benchmarks.cpu --parts flags --sizes 1048576 --flags "base;-mprefer-vector-width=256"
    python -m benchmarks.cpu --parts annealing                 # --annealing-device cuda: θ on a GPU
"""

from __future__ import annotations

import argparse
import ctypes
import math
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

from benchmarks import harness

FLAGS = "base;-mprefer-vector-width=256;-DKGELU_NEWTON_RECIPROCAL;-DKGELU_NEWTON_RECIPROCAL -mprefer-vector-width=256"
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def shape(elements: int, threads: int) -> str:
    return f"{elements} @ {threads} thread{'s' if threads > 1 else ''}"


def path(args, recorder: harness.Recorder) -> None:
    from hf_kgelu import KGELU
    from hf_kgelu.ops.cpu import load
    from hf_kgelu.ops import kgelu

    torch.set_num_threads(args.threads)
    if load() is None:
        print("note: the compiled CPU kernel is unavailable (see the warning); every kgelu row is the torch path")
    lam, frozen = torch.tensor([1.7], requires_grad=True), torch.tensor([1.7])
    site = KGELU(lambda_init=1.7)

    def torch_path(x):
        with harness.switches(torch_path=True):
            return kgelu(x, lam)

    variants = {
        "gelu": lambda x: F.gelu(x),
        "kgelu": lambda x: kgelu(x, lam),
        "kgelu-frozen": lambda x: kgelu(x, frozen),
        "kgelu-site": site,
        "torch-path": torch_path,
        "naive": lambda x: x * 0.5 * (1.0 + torch.erf(lam * x * _INV_SQRT2)),
    }
    dtype = getattr(torch, args.dtype)
    print(f"{'elements':>9} {'variant':13} {'f+b ms p50 (p20–p80)':>26} {'vs gelu':>8}")
    for n in (int(s) for s in args.sizes.split(",")):
        x, g = torch.randn(n, dtype=dtype, requires_grad=True), torch.randn(n, dtype=dtype)

        def case(fn):
            def run():
                x.grad = lam.grad = site.theta.grad = None
                return harness.wall_ms(lambda: fn(x).backward(g))
            return run

        samples = harness.interleave({name: case(fn) for name, fn in variants.items()}, args.rounds)
        gelu = harness.Stats.of(samples["gelu"]).p50
        for name, values in samples.items():
            stats = harness.Stats.of(values)
            recorder.add("cpu_path", name, "fwd_bwd_ms", stats, dtype=args.dtype, shape=shape(n, args.threads),
                         device=harness.cpu_description())
            print(f"{n:9d} {name:13} {stats.text('.3f'):>26} {stats.p50 / gelu:8.2f}", flush=True)


def build_library(flags: str, folder: str) -> ctypes.CDLL:
    """The CPU kernel compiled with the package's CFLAGS, then `flags` ("base": none)."""
    from hf_kgelu.ops import cpu as cpu_kernel

    target = f"{folder}/variant{abs(hash(flags))}.so"
    extra = [] if flags == "base" else flags.split()
    subprocess.run([*cpu_kernel._compiler(), *cpu_kernel.CFLAGS, *extra, "-o", target, str(cpu_kernel.SOURCE), "-lm"], check=True)
    return cpu_kernel._declare(ctypes.CDLL(target))


def flags(args, recorder: harness.Recorder) -> None:
    from hf_kgelu.ops import cpu as cpu_kernel

    torch.set_num_threads(1)
    f32 = cpu_kernel._DTYPE_CODES[torch.float32]
    version = subprocess.run([*cpu_kernel._compiler(), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"# {version}; 1 thread; µs per call, p50 of {args.rounds} interleaved rounds")
    with tempfile.TemporaryDirectory() as folder:
        libraries = {f: build_library(f, folder) for f in args.flags.split(";")}
        for n in (int(s) for s in args.sizes.split(",")):
            x, g = torch.randn(n), torch.randn(n)
            y, dx, dlam = torch.empty(n), torch.empty(n), torch.empty(1)
            calls = max(5, int(2e7 // n))

            def timed(fn):
                return lambda: harness.wall_ms(fn, calls) * 1e3

            cases = {("gelu", "fwd_bwd_us"): timed(lambda: (F.gelu(x), torch.ops.aten.gelu_backward(g, x)))}
            for name, lib in libraries.items():
                cases[(name, "fwd_us")] = timed(lambda lib=lib: lib.kgelu_site_forward(x.data_ptr(), y.data_ptr(), n, 1.7, f32, 1))
                cases[(name, "bwd_us")] = timed(lambda lib=lib: lib.kgelu_site_backward(
                    g.data_ptr(), x.data_ptr(), dx.data_ptr(), dlam.data_ptr(), n, 1.7, f32, 1))
            stats = {key: harness.Stats.of(v) for key, v in harness.interleave(cases, args.rounds).items()}
            for (name, metric), value in stats.items():
                recorder.add("cpu_kernel_flags", name, metric, value, dtype="float32", shape=shape(n, 1),
                             device=harness.cpu_description())
            gelu = stats[("gelu", "fwd_bwd_us")].p50
            print(f"{n:9d} {'F.gelu + gelu_backward':55} {'':>8} {'':>8} {gelu:8.0f} µs")
            for name in libraries:
                fwd, bwd = stats[(name, "fwd_us")].p50, stats[(name, "bwd_us")].p50
                print(f"{n:9d} {name:55} {fwd:8.0f} {bwd:8.0f} {(fwd + bwd) / gelu:8.2f}× gelu", flush=True)


def annealing(args, recorder: harness.Recorder) -> int:
    from hf_kgelu import KGELU
    from hf_kgelu.training.schedule import AnnealingSchedule

    sites = [KGELU().to(args.annealing_device) for _ in range(args.sites)]
    schedule = AnnealingSchedule(start_step=0, max_steps=args.steps + 1, target_lambda=159.577, shape="geometric")
    start = [1.5 + 0.1 * i for i in range(args.sites)]

    def by_number(step):
        for site, lam0 in zip(sites, start, strict=True):
            site.set_lambda(schedule.lambda_at(step, lam0))

    def by_tensor(step):
        for site, lam0 in zip(sites, start, strict=True):
            site.set_lambda(schedule.lambda_at(step, torch.tensor([lam0], dtype=torch.float64)).reshape(site.theta.shape))

    def all_steps(way):
        return lambda: harness.wall_ms(lambda: [way(step) for step in range(1, args.steps + 1)]) / args.steps

    samples = harness.interleave({"number": all_steps(by_number), "tensor": all_steps(by_tensor)}, args.rounds)
    mismatches = 0
    for step in range(1, args.steps + 1):
        by_number(step)
        thetas = [site.theta.detach().clone() for site in sites]
        by_tensor(step)
        mismatches += sum(not torch.equal(a, site.theta.detach()) for a, site in zip(thetas, sites, strict=True))
    where = f"{args.sites} sites on {args.annealing_device}, {args.steps} steps"
    device = harness.cpu_description() if args.annealing_device == "cpu" else harness.device_name()
    print(f"# {where}, {args.rounds} interleaved rounds\n{'way':8} {'µs per site':>20} {'ms per step':>20}")
    for name, values in samples.items():
        per_step = harness.Stats.of(values)
        per_site = per_step.scaled(1e3 / args.sites)
        recorder.add("annealing_host", name, "us_per_site", per_site, shape=where, device=device)
        recorder.add("annealing_host", name, "ms_per_step", per_step, shape=where, device=device)
        print(f"{name:8} {per_site.text():>20} {per_step.text('.3f'):>20}")
    recorder.add("annealing_host", "number-vs-tensor", "theta_mismatches", mismatches, shape=where, device=device)
    print(f"θ written differently by the two ways: {mismatches} of {args.steps * args.sites}")
    return 0 if mismatches == 0 else 1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="path", help="comma-separated: path, flags, annealing")
    parser.add_argument("--sizes", default="65536,1048576,4194304", help="path, flags: elements")
    parser.add_argument("--threads", type=int, default=1, help="path: torch threads")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="path")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds")
    parser.add_argument("--flags", default=FLAGS, help="flags: ';'-separated extra compiler flags ('base': none)")
    parser.add_argument("--sites", type=int, default=12, help="annealing: one-λ sites")
    parser.add_argument("--steps", type=int, default=200, help="annealing: steps per round")
    parser.add_argument("--annealing-device", default="cpu", help="annealing: where θ lives")
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - {"path", "flags", "annealing"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from path, flags, annealing")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    recorder = harness.Recorder.from_args(args, "benchmarks.cpu", argv)
    print(f"# {harness.cpu_description()}, capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"{recorder.date} UTC", flush=True)
    parts = args.parts.split(",")
    status = 0
    if "path" in parts:
        path(args, recorder)
    if "flags" in parts:
        flags(args, recorder)
    if "annealing" in parts:
        status = annealing(args, recorder)
    recorder.save()
    return status


if __name__ == "__main__":
    sys.exit(main())
