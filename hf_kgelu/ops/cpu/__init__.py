"""λ-GELU's CPU kernel: one C file (`kgelu_cpu.c`), compiled at first use, called through ctypes.

torch's CPU erfc alone costs as much as GELU's whole forward and backward, and the tail-exact
forward needs it, so a torch-op path cannot come within 2× of `F.gelu`. This kernel does each
direction in one vectorised pass over memory (see the C file for the math and its error).

Build: the machine's C compiler (`$CC`, else `cc`, `gcc` or `clang`) with `-O3 -march=native`
(512-bit vectors where the CPU has them), into a cache folder (`$HF_KGELU_CACHE`, else
`$XDG_CACHE_HOME/hf_kgelu`, else `~/.cache/hf_kgelu`), keyed by the source, the flags, the
compiler and this CPU's features, and written atomically (a temporary file, then a rename), so
concurrent processes are safe. No torch headers: a build takes well under a second.

Without a compiler, or when a build fails, a warning says why once and the torch path serves
(same results, slower). `HF_KGELU_CPU_KERNEL=0` turns the kernel off; the torch path is also
what `HF_KGELU_FORCE_REFERENCE=1` forces (`hf_kgelu.ops.settings`). A NaN λ gives NaN outputs.

float32, bfloat16 and float16 tensors, math in float32; contiguous or not (copied); per site or
per channel (λ over the last dimension). Up to
`torch.get_num_threads()` threads (the kernel's own pool, one per 64 K elements). The λ
gradient is summed in double over fixed chunks, then in chunk order: bitwise the same for any
number of threads.
"""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import torch

from ..build_cache import LoadOnce, build, cached_path, cpu_features, find_compiler

SOURCE = Path(__file__).with_name("kgelu_cpu.c")
# -mprefer-vector-width=512 (x86 only): gcc's -march=native keeps 256-bit vectors on Intel
# AVX-512 CPUs; 256-bit vectors made the kernel 1.4–1.8× slower on a Xeon and an EPYC alike
# (`python -m benchmarks.cpu --parts flags`). Ignored without AVX-512.
CFLAGS = (
    "-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp-simd", "-pthread", "-std=gnu11",
) + (("-mprefer-vector-width=512",) if platform.machine().lower() in ("x86_64", "amd64") else ())
MAX_CHANNELS = 65536  # the per-channel loops keep two rows of λ on the stack
_MIN_ELEMENTS_PER_THREAD = 65536  # below this, waking a pool thread costs more than it saves
_CHANNEL_BLOCK_ELEMENTS = 16384  # rows per partial sum: about this many elements

# the C file's DTYPE_* codes
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _compiler() -> list[str] | None:
    return find_compiler("CC", ("cc", "gcc", "clang"))


def library_path(compiler: list[str]) -> Path:
    return cached_path("kgelu_cpu", SOURCE, compiler, CFLAGS, cpu_features())


def _build(compiler: list[str], target: Path) -> None:
    build([*compiler, *CFLAGS, str(SOURCE), "-lm"], target, timeout=300)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    signatures = {
        "kgelu_site_forward": ([p, p, i64, f32, i32, i32], i32),
        "kgelu_site_backward": ([p, p, p, p, i64, f32, i32, i32], i32),
        "kgelu_channel_forward": ([p, p, p, i64, i64, i64, i32, i32], i32),
        "kgelu_channel_backward": ([p, p, p, p, p, i64, i64, i64, i32, i32], i32),
    }
    for name, (args, result) in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, result
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel (built on the first call), or None when it is off or cannot be built
    (a warning says why, once)."""
    return _library.get()


def _load() -> ctypes.CDLL | None:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found ($CC, cc, gcc or clang)")
    target = library_path(compiler)
    if not target.exists():
        _build(compiler, target)
    return _declare(ctypes.CDLL(str(target)))


_library = LoadOnce(
    _load,
    "hf_kgelu: the CPU kernel could not be built ({}); λ-GELU on CPU uses the slower torch path. "
    "Install a C compiler (e.g. `apt-get install gcc`) or set HF_KGELU_CPU_KERNEL=0 to use the torch path "
    "without this warning.",
)


def reset() -> None:
    """Forget the loaded kernel, so the next `load()` looks again (tests, a changed environment)."""
    _library.reset()


def usable(x: torch.Tensor, lam: torch.Tensor) -> bool:
    """Whether the kernel takes this call: CPU tensors, x float32, bfloat16 or float16, λ float32
    of shape (1,) or (C,) with C ≤ MAX_CHANNELS, and the kernel built."""
    return (
        x.dtype in _DTYPE_CODES
        and lam.dtype == torch.float32
        and x.device.type == "cpu"
        and lam.device.type == "cpu"
        and lam.numel() <= MAX_CHANNELS
        and load() is not None
    )


def _check_status(status: int) -> None:
    if status == -1:
        raise MemoryError("hf_kgelu's CPU kernel could not allocate the scratch for the λ gradient's partial sums")
    if status != 0:
        raise RuntimeError(f"hf_kgelu's CPU kernel refused the call (status {status}); call it only where usable() is true")


def _threads(n: int) -> int:
    return max(1, min(torch.get_num_threads(), n // _MIN_ELEMENTS_PER_THREAD))


def _channel_block_rows(cols: int) -> int:
    return max(1, _CHANNEL_BLOCK_ELEMENTS // max(cols, 1))


def forward(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """x·Φ(λx) in x's dtype for a CPU x that `usable` accepts (any shape; a non-contiguous x is
    copied), λ of shape (1,) or (C,) over x's last dimension."""
    lib = load()
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return y
    dtype = _DTYPE_CODES[x.dtype]
    if lam.numel() == 1:
        status = lib.kgelu_site_forward(x.data_ptr(), y.data_ptr(), n, float(lam), dtype, _threads(n))
    else:
        lam = lam.contiguous()
        cols = lam.numel()
        status = lib.kgelu_channel_forward(
            x.data_ptr(), lam.data_ptr(), y.data_ptr(), n // cols, cols, _channel_block_rows(cols), dtype, _threads(n)
        )
    _check_status(status)
    return y


def backward(
    grad_out: torch.Tensor, x: torch.Tensor, lam: torch.Tensor, need_x: bool = True, need_lam: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dλ) of x·Φ(λx); either is None when not needed. dλ is float32 with λ's shape
    (grad_lam of an empty x is 0)."""
    if not need_x and not need_lam:
        return None, None
    lib = load()
    x = x.contiguous()
    grad_out = grad_out.to(x.dtype).contiguous()  # e.g. the stride-0 gradient of a .sum()
    dtype = _DTYPE_CODES[x.dtype]
    n = x.numel()
    dx = torch.empty_like(x) if need_x else None
    grad_lam = torch.empty_like(lam, dtype=torch.float32) if need_lam else None
    dx_ptr = dx.data_ptr() if need_x else None
    lam_ptr = grad_lam.data_ptr() if need_lam else None
    if lam.numel() == 1:
        status = lib.kgelu_site_backward(grad_out.data_ptr(), x.data_ptr(), dx_ptr, lam_ptr, n, float(lam), dtype, _threads(n))
    else:
        lam = lam.contiguous()
        cols = lam.numel()
        status = lib.kgelu_channel_backward(
            grad_out.data_ptr(), x.data_ptr(), lam.data_ptr(), dx_ptr, lam_ptr, n // cols, cols, _channel_block_rows(cols),
            dtype, _threads(n),
        )
    _check_status(status)
    return dx, grad_lam
