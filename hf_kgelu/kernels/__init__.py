"""Triton kernels for λ-GELU (importing this needs triton; no Hugging Face imports here)."""

from .kgelu import CONFIG, kgelu_backward, kgelu_forward, launches_direct

__all__ = ["CONFIG", "kgelu_backward", "kgelu_forward", "launches_direct"]
