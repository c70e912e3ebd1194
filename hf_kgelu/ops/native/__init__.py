"""The C++ site path on CUDA (`site_launch.cpp`): the eager host path of a λ-GELU site, without Python.

A `KGELU` site with one θ on a contiguous CUDA input calls `site_forward` (the operator
`hf_kgelu_native::site_forward`): a C++ autograd node that launches the Triton-compiled kernels
itself, forward and backward. It only repeats launches it has seen: the op's public launch
(`triton_launch`, Triton's `kernel[grid](...)`) hands each compiled kernel of a site's shape to
`adopt_forward` / `adopt_backward` the first time, and until then the forward returns None (the
caller takes the op) and the backward calls the op's backward through `fallback_backward`.

It reads what Triton does not promise to keep (the compiled kernel's handle, shared memory and
which arguments stay parameters), so it checks itself, and any doubt turns it off, for the
process, with one warning — the op then serves every call, with the same results:
- at registration the driver must report the kernel's parameters as the C++ side passes them
  (`cuFuncGetParamInfo`; CUDA 12.4+);
- each new registration runs once here and once through Triton on the real inputs, and the
  outputs and gradients must be equal bit for bit.

Build: the machine's C++ compiler (`$CXX`, else c++, g++ or clang++) against the installed
torch's headers and libraries (no CUDA toolkit, no Python headers, no ninja), cached like the CPU
kernel (`hf_kgelu.ops.build_cache`), keyed by the source, flags, compiler and torch version;
about half a minute, once. `HF_KGELU_NATIVE=0` turns it off (also when profiling with Triton's
launch hooks: this path does not call them).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from .. import settings
from ..build_cache import LoadOnce, build, cached_path, find_compiler

SOURCE = Path(__file__).with_name("site_launch.cpp")
CXXFLAGS = ("-O2", "-std=c++17", "-fPIC", "-shared", "-w")
MAX_REGISTERED = 12288  # kernels per (shape, dtype, ...) are registered; bound the tables
KERNEL_IDS = {"_kgelu_fwd_kernel": 0, "_kgelu_bwd_kernel": 1, "_kgelu_finish_kernel": 2}
# c10::ScalarType codes
SCALAR_TYPES = {torch.float16: 5, torch.float32: 6, torch.bfloat16: 15}
# Triton signature types → site_launch.cpp's argument codes
_ARG_TYPES = {"fp32": "f", "f32": "f", "i32": "i", "i64": "l", "constexpr": "-"}

logger = logging.getLogger(__name__)
_registered: set = set()
_disabled: list[str] = []  # why this process stopped using the path (empty: in use)
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
    compiler = find_compiler("CXX", ("c++", "g++", "clang++"))
    if compiler is None:
        raise RuntimeError("no C++ compiler found ($CXX, c++, g++ or clang++)")
    target = library_path(compiler)
    if not target.exists():
        logger.warning("hf_kgelu: building the C++ site path once (about half a minute) into %s", target.parent)
        build(build_command(compiler), target)
    torch.ops.load_library(str(target))
    _install_fallback_backward()
    return True


_library = LoadOnce(
    _load,
    "hf_kgelu: the C++ site path could not be built ({}); λ-GELU sites on CUDA take the torch.library op "
    "(same results, more host time per call). Install a C++ compiler (e.g. `apt-get install g++`) or set "
    "HF_KGELU_NATIVE=0 to skip it without this warning.",
)


def loaded() -> bool:
    """Whether the library is loaded (without trying to load it)."""
    return bool(_library.value)


def load() -> bool:
    """Whether the C++ site path may serve calls now: switched on, not turned off by a failed
    self-check, built and loaded (built on the first call; a warning says why, once, when it cannot be)."""
    return settings.current().native and not _disabled and bool(_library.get())


def disable(reason: str) -> None:
    """Stop using the C++ site path in this process (the op serves every call), saying why once."""
    if not _disabled:
        warnings.warn(f"hf_kgelu: the C++ site path is off for this process: {reason}. The torch.library op serves every "
                      "λ-GELU call instead (same results, more host time per call).", RuntimeWarning, stacklevel=3)
    _disabled.append(reason)
    if loaded():
        torch.ops.hf_kgelu_native.set_enabled(False)


def disabled_reason() -> str | None:
    return _disabled[0] if _disabled else None


def _install_fallback_backward() -> None:
    """The C++ node's backward for a kernel not registered yet: the op's public backward."""
    global _python_impl

    def fallback_backward(g, x, theta, tau, need_x, need_theta):
        from ..triton_launch import backward  # (CUDA only: importing it needs triton)

        record = []
        dx, dtheta = backward(g, x, theta, tau, need_x, need_theta, record=record)
        adopt_backward(record, g, x, theta, tau, need_x, need_theta, dx, dtheta)
        # an operator returns tensors: empty stand-ins for the gradients nobody asked for
        return (dx if dx is not None else x.new_empty(0)), (dtheta if dtheta is not None else theta.new_empty(0))

    library = torch.library.Library("hf_kgelu_native", "IMPL")
    library.impl("fallback_backward", fallback_backward, "CUDA")
    _python_impl = library


def site_forward(x: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor | None:
    """x·Φ(λx) through the C++ node, or None when it does not take the call (the caller then takes
    the op). Call only after `load()` returned True."""
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
    meta = getattr(compiled, "metadata", None)
    return (
        meta is not None
        and getattr(meta, "num_ctas", 1) == 1
        and not getattr(meta, "launch_pdl", False)
        and not getattr(meta, "launch_cooperative_grid", False)
        and not getattr(meta, "global_scratch_size", 0)
        and not getattr(meta, "profile_scratch_size", 0)
        and tuple(getattr(meta, "cluster_dims", (1, 1, 1)) or (1, 1, 1)) in ((1, 1, 1), (0, 0, 0))
    )


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (NaN included, which == would call unequal to itself)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    as_int = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int))


def _register(launch, flags: int, numel: int, dtype: torch.dtype) -> bool | str | None:
    """Register one launch (see site_launch.cpp's key). True: newly registered; None: already
    known (or not registrable, already said); a string: why the C++ side cannot repeat it."""
    values = [arg.data_ptr() if isinstance(arg, torch.Tensor) else arg for arg in launch.args]
    aligned = sum(1 << i for i, (arg, value) in enumerate(zip(launch.args, values))
                  if isinstance(arg, torch.Tensor) and value % 16 == 0)
    device = launch.args[0].get_device()
    key = (KERNEL_IDS[launch.kernel.__name__], device, SCALAR_TYPES[dtype], flags, numel, aligned)
    if key in _registered:
        return None
    if len(_registered) >= MAX_REGISTERED:  # many shapes (e.g. dynamic padding): start over
        clear()
    _registered.add(key)  # also when not registrable: do not look again on every call
    compiled = launch.compiled
    types = argument_types(launch.kernel, compiled, len(launch.args))
    if types is None or not hasattr(compiled, "function"):
        return f"{launch.kernel.__name__}'s compiled signature is not one it reads"
    if not _plain(compiled):
        return f"{launch.kernel.__name__} needs a launch it does not make (clusters, PDL, scratch memory)"
    ints = [arg if type(arg) is int else 0 for arg in launch.args]
    try:
        registered = torch.ops.hf_kgelu_native.register_kernel(
            *key, compiled.function, launch.grid[0], launch.grid[1], 32 * launch.num_warps, compiled.metadata.shared,
            types, ints,
        )
    except (RuntimeError, AttributeError, TypeError, ValueError) as error:
        return f"registering {launch.kernel.__name__} failed ({type(error).__name__}: {error})"
    return True if registered else f"the driver reports {launch.kernel.__name__}'s parameters unlike the {types!r} it passes"


def _site_case(x: torch.Tensor, theta: torch.Tensor, tau: float | None) -> bool:
    # (not while a CUDA graph is captured: the self-check compares results, which waits for them)
    return (tau is not None and theta.numel() == 1 and x.is_contiguous() and x.numel() > 0
            and type(x) is torch.Tensor and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing())


def adopt_forward(record: list, x: torch.Tensor, theta: torch.Tensor, tau: float | None, y: torch.Tensor) -> None:
    """After a public forward launch of a site: register its kernel and check the C++ launch of it
    against `y`, bit for bit (switching the path off on any difference)."""
    if not load() or not _site_case(x, theta, tau) or len(record) != 1:
        return
    registered = _register(record[0], 0, x.numel(), x.dtype)
    if isinstance(registered, str):
        disable(registered + " (a Triton upgrade?)")
    elif registered:
        mine = torch.ops.hf_kgelu_native.check_forward(x, theta, tau)
        if mine is None or not _same_bits(mine, y):
            disable(f"its forward launch differs from Triton's on a {tuple(x.shape)} {x.dtype} input (a Triton upgrade?)")


def adopt_backward(record: list, g, x, theta, tau, need_x: bool, need_theta: bool, dx, dtheta) -> None:
    """After a public backward launch of a site: register its kernels and check the C++ launches
    against (dx, dθ), bit for bit."""
    if not load() or not _site_case(x, theta, tau) or not g.is_contiguous() or not record:
        return
    flags = int(need_x) | int(need_theta) << 1
    results = [_register(record[0], flags, x.numel(), x.dtype)]
    if need_theta and len(record) > 1:  # the partial-sum kernel is the same whatever the need flags
        results.append(_register(record[1], 0, x.numel(), x.dtype))
    refused = [result for result in results if isinstance(result, str)]
    if refused:
        disable(refused[0] + " (a Triton upgrade?)")
        return
    if not any(results):
        return
    mine = torch.ops.hf_kgelu_native.check_backward(g, x, theta, tau, need_x, need_theta)
    same = len(mine) == 2 and (not need_x or _same_bits(mine[0], dx)) and (not need_theta or _same_bits(mine[1], dtheta))
    if not same:
        disable(f"its backward launches differ from Triton's on a {tuple(x.shape)} {x.dtype} input (a Triton upgrade?)")


def clear() -> None:
    """Forget every registered kernel (tests; the next public launch registers again)."""
    _registered.clear()
    if loaded():
        torch.ops.hf_kgelu_native.clear()


def reset() -> None:
    """Forget the registrations and a self-check's verdict (tests)."""
    clear()
    _disabled.clear()
    if loaded():
        torch.ops.hf_kgelu_native.set_enabled(True)


def stats() -> dict[str, int]:
    """C++ path hits and misses since the last `clear()`, and the registered kernels."""
    hits, misses, kernels = torch.ops.hf_kgelu_native.stats()
    return {"hits": hits, "misses": misses, "kernels": kernels}
