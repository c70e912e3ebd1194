"""Native code built at first use: one compiler call into a per-user cache, written atomically,
and loaded once per process (`LoadOnce`).

Used by the CPU kernel (a C file called through ctypes) and the GPU sites' C++ launcher (a torch
operator library). The cache folder is `$HF_KGELU_CACHE`, else `$XDG_CACHE_HOME/hf_kgelu`, else
`~/.cache/hf_kgelu`; a file's name carries a hash of everything that shapes the binary (source,
flags, compiler, and what the caller adds: CPU features, torch version), so a change rebuilds
and concurrent processes never see half a file (a temporary file, then a rename).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("HF_KGELU_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hf_kgelu"


def find_compiler(env_var: str, candidates: tuple[str, ...]) -> list[str] | None:
    """The compiler's command: `$env_var` (which may carry arguments, e.g. "ccache gcc"), else
    the first of `candidates` on the PATH; None when there is none."""
    if os.environ.get(env_var):
        return shlex.split(os.environ[env_var])
    for name in candidates:
        found = shutil.which(name)
        if found:
            return [found]
    return None


def cpu_features() -> str:
    """The CPU's feature flags (what -march=native compiles for): a library built on one CPU
    must not be loaded on another that lacks its instructions."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def cached_path(stem: str, source: Path, compiler: list[str], flags: tuple[str, ...], *extra: str) -> Path:
    """Where the build of `source` with `compiler` and `flags` lives in the cache."""
    program = os.path.realpath(shutil.which(compiler[0]) or compiler[0])
    key = hashlib.sha256()
    for part in (source.read_bytes(), " ".join(flags).encode(), " ".join([program, *compiler[1:]]).encode(), *map(str.encode, extra)):
        key.update(part)
        key.update(b"\0")
    return cache_dir() / f"{stem}-{platform.machine()}-{key.hexdigest()[:16]}.so"


def build(command: list[str], target: Path, timeout: float = 600) -> None:
    """Run `command` + ["-o", temporary file], then move the result to `target` atomically.
    Raises RuntimeError with the compiler's message when it fails."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*command, "-o", tmp], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command[:1])} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: another process sees the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LoadOnce:
    """The result of `load()`, called on the first `get()` only (thread-safe). When it raises (a
    missing or failing compiler must not stop training), `failure` formatted with the exception
    is warned once and the result is None."""

    def __init__(self, load, failure: str):
        self._load = load
        self._failure = failure
        self._lock = threading.Lock()
        self.tried = False
        self.value = None

    def get(self):
        if self.tried:
            return self.value
        with self._lock:
            if not self.tried:
                try:
                    self.value = self._load()
                except Exception as exc:
                    # stacklevel: past get() and the module's load(), to the code that needed it
                    warnings.warn(self._failure.format(exc), RuntimeWarning, stacklevel=4)
                    self.value = None
                self.tried = True
        return self.value

    def reset(self) -> None:
        """Forget the result, so the next `get()` loads again (tests, a changed environment)."""
        with self._lock:
            self.tried, self.value = False, None
