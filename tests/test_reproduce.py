"""`scripts/reproduce.py` on its smoke preset: exported tensors in, every table out (its report and
rows of the benchmarks' schema), finished runs reused on a rerun."""

import contextlib
import csv
import importlib.util
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce"] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def _main(reproduce, *argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert reproduce.main(list(argv)) == 0
    return printed.getvalue()


def test_smoke_preset_end_to_end_from_exported_data(reproduce, tmp_path):
    data, out, results = tmp_path / "data", tmp_path / "out", tmp_path / "results"
    md = out / "results.md"
    _main(reproduce, "--preset", "smoke", "--export-data", str(data))
    with np.load(data / "adult.npz") as arrays:
        assert arrays["train.pixel_values"].shape[0] == 256 and arrays["eval.labels"].shape == (128,)

    args = ["--preset", "smoke", "--data-dir", str(data), "--seeds", "0,1", "--out", str(out), "--threads", "1",
            "--update-docs", "--results", str(results), "--machine-kind", "cpu-test", "--machine", "test machine"]
    printed = _main(reproduce, *args)
    assert printed.count("mlp-adult") >= 18  # 6 variants × 2 seeds + 3 grid cells × 2 seeds
    text = md.read_text()
    for heading in ("### Preset `smoke`", "#### Table I", "#### Layerwise λ", "#### Table II", "#### τ × η grid"):
        assert heading in text, heading
    assert "λ-GELU annealed → ReLU" in text and "GELU → ReLU (direct swap)" in text and "increasing vs decreasing" in text
    assert "test machine" in text and "Automatic reading" in text
    rows = list(csv.DictReader(open(results / "cpu-test.csv")))  # the tables as rows of the benchmarks' schema
    assert {r["what"] for r in rows} == {"paper_table1", "paper_fig3", "paper_fig3_rho", "paper_table2", "paper_grid"}

    annealed = json.loads((out / "runs" / "mlp-adult" / "kgelu-annealed" / "seed1" / "results.json").read_text())
    assert annealed["annealed"] and all(v == pytest.approx(annealed["target_lambda"], rel=1e-5) for v in annealed["lambda_final"].values())
    grid_run = json.loads((out / "runs" / "mlp-adult" / "grid-tau1-eta100" / "seed0" / "results.json").read_text())
    assert grid_run["settings"]["kgelu_tau"] == 1.0 and grid_run["settings"]["kgelu_lr_multiplier"] == 100.0

    again = _main(reproduce, *args)  # everything finished: nothing is trained again
    assert "seed 0: best" not in again and md.read_text().count("#### Table I —") == 1
    assert len(list(csv.DictReader(open(results / "cpu-test.csv")))) == 2 * len(rows)  # appended again


# What the GPU machine has: this repository copied, not installed, and neither `datasets` nor
# `evaluate` (the README's device notes). The experiment loop must run there from exported tensors.
_AS_ON_THE_GPU_MACHINE = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]  # not installed
sys.modules.update(datasets=None, evaluate=None)  # absent: importing them fails
sys.argv = ["scripts/reproduce.py", *sys.argv[1:]]
try:
    runpy.run_path("scripts/reproduce.py", run_name="__main__")
finally:
    import hf_kgelu
    assert hf_kgelu.__file__.startswith(sys.path[1]), hf_kgelu.__file__
"""


def test_runs_from_an_uninstalled_checkout_without_datasets_or_evaluate(reproduce, tmp_path):
    import shutil
    import subprocess

    checkout, data, out = tmp_path / "checkout", tmp_path / "data", tmp_path / "out"
    for folder in ("hf_kgelu", "model_cards", "scripts", "benchmarks"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    _main(reproduce, "--preset", "smoke", "--export-data", str(data))
    done = subprocess.run(
        [sys.executable, "-c", _AS_ON_THE_GPU_MACHINE, "--preset", "smoke", "--data-dir", str(data), "--seeds", "0",
         "--no-grid", "--out", str(out), "--threads", "1", "--max-minutes", "0.001", "--results", str(tmp_path / "rows")],
        cwd=checkout, env={**__import__("os").environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[1/6] mlp-adult gelu seed 0: best" in done.stdout and "stopping after" in done.stdout
    assert (out / "runs" / "mlp-adult" / "gelu" / "seed0" / "results.json").is_file()
