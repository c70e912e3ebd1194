"""The CPU kernel built with other compiler flags, timed against F.gelu on this machine.

`hf_kgelu.cpu_kernel` compiles `kgelu_cpu.c` with CFLAGS (-O3 -march=native ...). Which vector
width and which reciprocal are fastest depends on the CPU (a 512-bit division issues every
~5 cycles on one core design and every ~16 on another), so this builds each variant into a
temporary folder and times one thread's forward and backward (per site, λ learning). "base" is
the flags the package uses; later flags override earlier ones.

    python benchmarks/cpu_kernel_flags.py
    python benchmarks/cpu_kernel_flags.py --sizes 1048576 --variants "base;-mprefer-vector-width=256"
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_kgelu import cpu_kernel  # noqa: E402

VARIANTS = "base;-mprefer-vector-width=256;-DKGELU_NEWTON_RECIPROCAL;-DKGELU_NEWTON_RECIPROCAL -mprefer-vector-width=256"


def build(extra: str, folder: str) -> ctypes.CDLL:
    target = os.path.join(folder, f"variant{abs(hash(extra))}.so")
    flags = [] if extra == "base" else extra.split()
    subprocess.run([*cpu_kernel._compiler(), *cpu_kernel.CFLAGS, *flags, "-o", target, str(cpu_kernel.SOURCE), "-lm"], check=True)
    return cpu_kernel._declare(ctypes.CDLL(target))


def best_us(fn, n: int) -> float:
    reps = max(5, int(2e7 // n))
    fn()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="65536,1048576")
    parser.add_argument("--variants", default=VARIANTS, help="';'-separated extra flags ('base': none)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compiler = cpu_kernel._compiler()
    version = subprocess.run([*compiler, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    print(f"# {cpu_name()}; {version}; 1 thread; µs, best of 7")
    print(f"{'elements':>9} {'variant':55} {'fwd':>8} {'bwd':>8} {'f+b / gelu':>10}")
    with tempfile.TemporaryDirectory() as folder:
        libraries = {extra: build(extra, folder) for extra in args.variants.split(";")}
        for n in (int(s) for s in args.sizes.split(",")):
            x, g = torch.randn(n), torch.randn(n)
            y, dx, dlam = torch.empty(n), torch.empty(n), torch.empty(1)
            gelu = best_us(lambda: F.gelu(x), n) + best_us(lambda: torch.ops.aten.gelu_backward(g, x), n)
            print(f"{n:9d} {'F.gelu, gelu_backward':55} {'':>8} {'':>8} {gelu:8.0f}µs")
            for extra, lib in libraries.items():
                f32 = cpu_kernel._DTYPE_CODES[torch.float32]
                fwd = best_us(lambda: lib.kgelu_site_forward(x.data_ptr(), y.data_ptr(), n, 1.7, f32, 1), n)
                bwd = best_us(lambda: lib.kgelu_site_backward(g.data_ptr(), x.data_ptr(), dx.data_ptr(), dlam.data_ptr(), n, 1.7, f32, 1), n)
                print(f"{n:9d} {extra:55} {fwd:8.0f} {bwd:8.0f} {(fwd + bwd) / gelu:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
