"""The C++ host path of a λ-GELU site on CUDA (`site_launch.cpp`): built at first use, then one call per site.

A `KGELU` site with one θ on a contiguous CUDA input calls `site_forward` (the operator
`hf_kgelu_native::site_forward`): a C++ autograd node that launches the Triton-compiled kernels
of `hf_kgelu.kernels` itself, forward and backward, with no Python on the way. The kernels stay Triton's:
the Python launcher registers each compiled kernel with the C++ table (`register`) the first
time it launches it for a site's shape, and the C++ side returns None (forward) or calls back the
Python backward (`fallback_backward`) until then. Outputs and gradients are bitwise those of the
Python path: the same kernels with the same arguments.

Build: the machine's C++ compiler (`$CXX`, else c++, g++ or clang++) against the installed
torch's headers and libraries (no CUDA toolkit, no Python headers, no ninja), cached like the
CPU kernel (`hf_kgelu.build_cache`), keyed by the source, flags, compiler and torch version.
It takes about half a minute, once. Without a compiler, or when the build fails, a warning says why
once and the Python launcher serves (same results, more host time per site).
`HF_KGELU_NATIVE=0` turns it off.

Triton's launch hooks (its profilers) see only Python-path launches: set `HF_KGELU_NATIVE=0`, or
`hf_kgelu.kernels.kgelu.DIRECT_LAUNCH = False`, when profiling with them.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from ..build_cache import LoadOnce, build, cached_path, find_compiler, switched_off

SOURCE = Path(__file__).with_name("site_launch.cpp")
DISABLE_ENV = "HF_KGELU_NATIVE"
CXXFLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-w")
MAX_REGISTERED = 12288  # kernels per (shape, dtype, ...) are registered; bound the tables
KERNEL_IDS = {"_kgelu_fwd_kernel": 0, "_kgelu_bwd_kernel": 1, "_kgelu_finish_kernel": 2}
# c10::ScalarType codes
SCALAR_TYPES = {torch.float16: 5, torch.float32: 6, torch.bfloat16: 15}
# Triton signature types → site_launch.cpp's argument codes
_ARG_TYPES = {"fp32": "f", "f32": "f", "i32": "i", "i64": "l", "constexpr": "-"}

logger = logging.getLogger(__name__)
_registered: set = set()
_python_impl = None  # keeps the Library object (the fallback backward's registration) alive


def _torch_dirs() -> tuple[Path, Path]:
    root = Path(torch.__file__).parent
    return root / "include", root / "lib"


def build_command(compiler: list[str]) -> list[str]:
    include, lib = _torch_dirs()
    return [
        *compiler, *CXXFLAGS, f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
        "-I", str(include), "-I", str(include / "torch" / "csrc" / "api" / "include"), str(SOURCE),
        "-L", str(lib), "-lc10", "-ltorch", "-ltorch_cpu", f"-Wl,-rpath,{lib}", "-ldl",
    ]


def library_path(compiler: list[str]) -> Path:
    return cached_path("kgelu_site_launch", SOURCE, compiler, CXXFLAGS, torch.__version__, str(_torch_dirs()[0]))


def _load() -> bool:
    if switched_off(DISABLE_ENV):
        return False
    compiler = find_compiler("CXX", ("c++", "g++", "clang++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++ or clang++)")
    target = library_path(compiler)
    if not target.exists():
        logger.warning("hf_kgelu: building the C++ site launcher once (about half a minute) into %s", target.parent)
        build(build_command(compiler), target)
    torch.ops.load_library(str(target))
    return True


_library = LoadOnce(
    _load,
    "hf_kgelu: the C++ site launcher could not be built ({}); λ-GELU sites on CUDA use the Python "
    "launcher (same results, more host time per call). Install a C++ compiler (e.g. `apt-get install "
    f"g++`) or set {DISABLE_ENV}=0 to skip it without this warning.",
)


def loaded() -> bool:
    """Whether `load()` has loaded the library (without trying to)."""
    return bool(_library.value)


def load() -> bool:
    """Whether the C++ site path is available (built and loaded on the first call; a warning
    says why, once, when it cannot be)."""
    return bool(_library.get())


def set_python_backward(kgelu_backward) -> None:
    """Install the backward the C++ node calls for a kernel not registered yet: `kgelu_backward`
    of the Triton launcher (`hf_kgelu.kernels`), which registers the kernels on its way."""
    global _python_impl
    if _python_impl is not None:
        return

    def fallback_backward(g, x, theta, tau, need_x, need_theta):
        dx, dtheta = kgelu_backward(g, x, theta, need_x, need_theta, tau=tau, validate=False)
        # an operator returns tensors: empty stand-ins for the gradients nobody asked for
        return (dx if dx is not None else x.new_empty(0)), (dtheta if dtheta is not None else theta.new_empty(0))

    library = torch.library.Library("hf_kgelu_native", "IMPL")
    library.impl("fallback_backward", fallback_backward, "CUDA")
    _python_impl = library


def site_forward(x: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor | None:
    """x·Φ(λx) through the C++ node, or None when it does not take the call (the caller then
    takes the Python path). Call only after `load()` returned True."""
    return torch.ops.hf_kgelu_native.site_forward(x, theta, tau)


def argument_types(kernel, compiled, count: int) -> str | None:
    """One code per runtime argument of a compiled kernel (see site_launch.cpp), None when one
    has a type the C++ launcher does not pass (or this Triton describes its signature otherwise)."""
    signature = getattr(getattr(compiled, "src", None), "signature", None)
    if not isinstance(signature, dict):
        return None
    codes = []
    for index, name in enumerate(kernel.arg_names[:count]):
        kind = signature.get(name, signature.get(index))
        if not isinstance(kind, str):
            return None
        code = "p" if kind.startswith("*") else _ARG_TYPES.get(kind)
        if code is None:
            return None
        codes.append(code)
    return "".join(codes)


def _plain(compiled) -> bool:
    """Whether a plain cuLaunchKernel launches it as Triton would: one CTA per program, no
    cluster, PDL or cooperative launch, no scratch memory."""
    meta = compiled.metadata
    return (
        getattr(meta, "num_ctas", 1) == 1
        and not getattr(meta, "launch_pdl", False)
        and not getattr(meta, "launch_cooperative_grid", False)
        and not getattr(meta, "global_scratch_size", 0)
        and not getattr(meta, "profile_scratch_size", 0)
        and tuple(getattr(meta, "cluster_dims", (1, 1, 1)) or (1, 1, 1)) in ((1, 1, 1), (0, 0, 0))
    )


def register(kernel, compiled, args: tuple, values: list, grid: tuple, num_warps: int, device: int, site: tuple) -> None:
    """Register a kernel the Python launcher just launched for a site. `site` is (x's dtype,
    need flags, x's element count); `values` are the arguments as passed (tensors as addresses)."""
    dtype, flags, numel = site
    aligned = sum(1 << i for i, (arg, value) in enumerate(zip(args, values)) if isinstance(arg, torch.Tensor) and value % 16 == 0)
    key = (KERNEL_IDS[kernel.__name__], device, SCALAR_TYPES[dtype], flags, numel, aligned)
    if key in _registered:
        return
    if len(_registered) >= MAX_REGISTERED:  # many shapes (e.g. dynamic padding): start over
        clear()
    _registered.add(key)  # also when not registrable: do not look again on every call
    types = argument_types(kernel, compiled, len(args))
    if types is None or not _plain(compiled):
        return
    ints = [arg if type(arg) is int else 0 for arg in args]
    try:
        torch.ops.hf_kgelu_native.register_kernel(
            *key, compiled.function, grid[0], grid[1], 32 * num_warps, compiled.metadata.shared, types, ints
        )
    except Exception as exc:  # the Python launcher keeps serving this shape
        warnings.warn(f"hf_kgelu: a kernel could not be registered with the C++ site path ({exc})", RuntimeWarning, stacklevel=2)


def clear() -> None:
    """Forget every registered kernel (tests; the next Python-path launch registers again)."""
    _registered.clear()
    if loaded():
        torch.ops.hf_kgelu_native.clear()


def stats() -> dict[str, int]:
    """C++ path hits and misses since the last `clear()`, and the registered kernels."""
    hits, misses, kernels = torch.ops.hf_kgelu_native.stats()
    return {"hits": hits, "misses": misses, "kernels": kernels}
