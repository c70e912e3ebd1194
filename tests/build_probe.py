"""Runs a probe script of a compiled library (CPU kernel, C++ site path) in a fresh process with
its own build cache, so that building, caching and the no-compiler warning are seen from start."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_probe(script: str, cache, **env) -> list[str]:
    """The words `script` printed, run with HF_KGELU_CACHE=cache and `env` on top of ours."""
    full_env = {**os.environ, "HF_KGELU_CACHE": str(cache), "PYTHONPATH": REPO, **env}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full_env, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()
