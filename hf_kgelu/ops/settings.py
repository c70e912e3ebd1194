"""The op's settings, in one place: read from the environment when the package is imported, and
changeable for a block of code with `override(...)` (tests, benchmarks, debugging).

    HF_KGELU_FORCE_REFERENCE=1   every call takes the torch path (the float64-checkable reference)
    HF_KGELU_CPU_KERNEL=0        CPU calls skip the compiled C kernel (the torch path serves)
    HF_KGELU_NATIVE=0            CUDA calls skip the C++ site path (the torch.library op serves)
    HF_KGELU_KERNEL_CONFIG=JSON  Triton launch configuration entries (tiles, warps; see triton_kernels)
    HF_KGELU_CACHE=DIR           where the compiled CPU kernel and C++ site path are cached
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name, "").strip().lower()
    return value in _TRUE if default is False else value not in _FALSE


@dataclass(frozen=True)
class Settings:
    force_reference: bool = False
    cpu_kernel: bool = True
    native: bool = True
    kernel_config: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def from_environment(cls) -> Settings:
        text = os.environ.get("HF_KGELU_KERNEL_CONFIG", "").strip()
        try:
            config = json.loads(text) if text else {}
        except json.JSONDecodeError as error:
            raise ValueError(f"HF_KGELU_KERNEL_CONFIG must be a JSON object of launch settings, got {text!r} ({error})") from None
        if not isinstance(config, dict):
            raise ValueError(f"HF_KGELU_KERNEL_CONFIG must be a JSON object of launch settings, got {text!r}")
        return cls(
            force_reference=_flag("HF_KGELU_FORCE_REFERENCE", False),
            cpu_kernel=_flag("HF_KGELU_CPU_KERNEL", True),
            native=_flag("HF_KGELU_NATIVE", True),
            kernel_config=config,
        )


_current = contextvars.ContextVar("hf_kgelu_op_settings", default=Settings.from_environment())


def current() -> Settings:
    """The settings in force here (the environment's, unless an `override` block is active)."""
    return _current.get()


@contextlib.contextmanager
def override(**changes) -> Iterator[Settings]:
    """Run a block with some settings changed, e.g. `with override(force_reference=True): ...`."""
    token = _current.set(dataclasses.replace(_current.get(), **changes))
    try:
        yield _current.get()
    finally:
        _current.reset(token)
