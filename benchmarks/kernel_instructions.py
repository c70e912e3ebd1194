"""Machine instructions per element of the λ-GELU kernels, compiled for an H100/H200 (sm_90)
without a GPU: Triton compiles the kernels with the specialisation a real launch gets (16-byte
aligned pointers, an element count divisible by 16) and its bundled `nvdisasm` lists the SASS.

At 2 bytes per element a kernel that issues more instructions per element than the H200 can
issue in the time its bytes take to move is bound by instruction issue, not memory; this
counts them. It prints, per kernel, dtype and tile: instructions per element (all, and of the
special-function unit, MUFU: exp2 and reciprocals), and the order in which the kernel issues
its loads (L: a 16-byte load, l: a narrower one), exponentials (e) and stores (S).

    pip install triton==3.6.0     # CPU machines too: compiling needs no GPU
    python benchmarks/kernel_instructions.py
    # another version of the kernels, e.g. an earlier commit's:
    git show 0a4f8ae:hf_kgelu/kernels/kgelu.py > /tmp/kgelu_old.py
    python benchmarks/kernel_instructions.py --module /tmp/kgelu_old.py
    python benchmarks/kernel_instructions.py --per-channel --order
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_kernels(path: str | None):
    if path is None:
        from hf_kgelu.ops import triton_kernels as kgelu

        return kgelu
    spec = importlib.util.spec_from_file_location("kgelu_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHANNELS = 3072  # per channel: GPT-2 small's MLP width, as in benchmarks/kernel.py


def launch_config(kernels) -> dict:
    """The kernels module's launch configuration (older modules called it CONFIG)."""
    return getattr(kernels, "DEFAULT_CONFIG", None) or kernels.CONFIG


def launch_tile(config: dict, kind: str, dtype: str) -> tuple[int, int]:
    """(elements, warps) per program that the launchers pick for `kind` ("fwd"/"bwd") and dtype."""
    suffix = "_fp32" if dtype == "fp32" and f"{kind}_block_fp32" in config else ""  # (older: no per-dtype tiles)
    return config[kind + "_block" + suffix], config[kind + "_warps" + suffix]


def column_tile(config: dict, n_cols: int, block: int) -> tuple[int, int]:
    """(rows, columns) of a per-channel tile, as the launcher picks them."""
    block_c = min(1 << (n_cols - 1).bit_length(), config["max_block_c"])
    return max(1, block // block_c), block_c


def compile_sm90(kernel, dtype: str, constexprs: dict, warps: int):
    """The kernel compiled for sm_90: pointers `*dtype` (λ/θ and partials float32), floats fp32,
    ints i32; pointers and the element count marked divisible by 16, as Triton marks them."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, attrs = {}, {}
    for index, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in ("param_ptr", "partial_ptr") else f"*{dtype}"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif name == "inv_tau":
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name == "n_cols":
                attrs[(index,)] = [["tt.divisibility", 16]]
    source = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})


def disassemble(compiled) -> list[str]:
    """The SASS opcodes of a compiled kernel, in program order."""
    import triton

    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(compiled.asm["cubin"])
        fh.flush()
        text = subprocess.run([nvdisasm, "-c", fh.name], capture_output=True, text=True, check=True).stdout
    return [m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", text)]


def issue_order(opcodes: list[str]) -> str:
    marks = []
    for op in opcodes:
        if op.startswith("LDG"):
            marks.append("L" if ".128" in op else "l")
        elif op.startswith("MUFU.EX2"):
            marks.append("e")
        elif op.startswith("STG"):
            marks.append("S")
    return "".join(marks)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", default=None, help="a kgelu.py to load instead of hf_kgelu.ops.triton_kernels")
    parser.add_argument("--order", action="store_true", help="also print the issue order of loads, exp2s and stores")
    parser.add_argument("--per-channel", action="store_true",
                        help="also the per-channel kernels (3072 channels). Their backward loops over row "
                             "tiles: its count spreads the prologue (λ per column) and epilogue (the column sums) over one "
                             "tile, so it overstates, and its issue order is the prologue's and one iteration's")
    args = parser.parse_args(argv)
    kernels = load_kernels(args.module)
    config = launch_config(kernels)
    cases = []
    for dtype in ("bf16", "fp32"):
        fwd, bwd = launch_tile(config, "fwd", dtype), launch_tile(config, "bwd", dtype)
        for theta in (True, False):
            common = dict(PER_CHANNEL=False, THETA=theta, BLOCK_R=1, INT64=False, CDF=0)
            cases.append(("forward", dtype, theta, fwd, kernels._kgelu_fwd_kernel, dict(common, BLOCK_C=fwd[0])))
            cases.append(("backward", dtype, theta, bwd, kernels._kgelu_bwd_kernel,
                          dict(common, BLOCK_C=bwd[0], COMPUTE_DX=True, COMPUTE_DLAM=True)))
        if args.per_channel:
            # older modules tiled the per-channel backward with the per-site entry
            bwd = (config.get("channel_bwd_block", config["bwd_block"]), config["channel_bwd_warps"])
            common = dict(PER_CHANNEL=True, THETA=True, INT64=False, CDF=0)
            for name, kernel, (block, warps), extra in (
                ("fwd/ch", kernels._kgelu_fwd_kernel, fwd, {}),
                ("bwd/ch", kernels._kgelu_bwd_kernel, bwd, dict(COMPUTE_DX=True, COMPUTE_DLAM=True)),
            ):
                block_r, block_c = column_tile(config, CHANNELS, block)
                cases.append((name, dtype, True, (block, warps), kernel, dict(common, BLOCK_R=block_r, BLOCK_C=block_c, **extra)))
    print(f"{'kernel':9} {'dtype':5} {'param':5} {'tile':>10} {'instr/el':>8} {'MUFU/el':>7} {'FMUL+FFMA/el':>12}")
    for name, dtype, theta, (block, warps), kernel, constexprs in cases:
        opcodes = disassemble(compile_sm90(kernel, dtype, constexprs, warps))
        per_thread = block / (32 * warps)
        counts = collections.Counter(op.split(".")[0] for op in opcodes)
        print(f"{name:9} {dtype:5} {'θ' if theta else 'λ':5} {f'{block}×{warps}w':>10} {len(opcodes) / per_thread:8.1f} "
              f"{counts['MUFU'] / per_thread:7.2f} {(counts['FMUL'] + counts['FFMA']) / per_thread:12.1f}")
        if args.order:
            print("   issue order:", issue_order(opcodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
