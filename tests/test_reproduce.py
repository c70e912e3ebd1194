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
