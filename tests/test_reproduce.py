"""`scripts/reproduce.py` on its smoke preset: exported tensors in, every table out, finished runs
reused on a rerun, and only its own part of docs/results.md touched."""

import contextlib
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


def test_update_results_md_touches_only_its_own_block(reproduce, tmp_path):
    path = tmp_path / "results.md"
    path.write_text("# Results\n\n## Kernel\n\nkernel numbers\n\n## Paper experiments\n\nhand-written note\n\n## Later\n\nmore\n")
    reproduce.update_results_md(path, "cpu", "CPU TABLE v1")
    reproduce.update_results_md(path, "gpu", "GPU TABLE")
    reproduce.update_results_md(path, "cpu", "CPU TABLE v2")
    text = path.read_text()
    assert "kernel numbers" in text and "hand-written note" in text and "## Later\n\nmore" in text
    assert "CPU TABLE v2" in text and "CPU TABLE v1" not in text and "GPU TABLE" in text
    # both blocks sit inside the Paper experiments section, before the next section
    assert text.index("## Paper experiments") < text.index("CPU TABLE v2") < text.index("## Later")
    assert text.index("## Paper experiments") < text.index("GPU TABLE") < text.index("## Later")
    fresh = tmp_path / "fresh.md"
    reproduce.update_results_md(fresh, "cpu", "T")
    assert "## Paper experiments" in fresh.read_text()


def test_smoke_preset_end_to_end_from_exported_data(reproduce, tmp_path):
    data, out, md = tmp_path / "data", tmp_path / "out", tmp_path / "results.md"
    _main(reproduce, "--preset", "smoke", "--export-data", str(data))
    with np.load(data / "adult.npz") as arrays:
        assert arrays["train.pixel_values"].shape[0] == 256 and arrays["eval.labels"].shape == (128,)

    args = ["--preset", "smoke", "--data-dir", str(data), "--seeds", "0,1", "--out", str(out), "--threads", "1",
            "--update-docs", "--results-md", str(md), "--machine", "test machine"]
    printed = _main(reproduce, *args)
    assert printed.count("mlp-adult") >= 18  # 6 variants × 2 seeds + 3 grid cells × 2 seeds
    text = md.read_text()
    for heading in ("### Preset `smoke`", "#### Table I", "#### Layerwise λ", "#### Table II", "#### τ × η grid"):
        assert heading in text, heading
    assert "λ-GELU annealed → ReLU" in text and "GELU → ReLU (direct swap)" in text and "increasing vs decreasing" in text
    assert "test machine" in text and "Automatic reading" in text

    annealed = json.loads((out / "runs" / "mlp-adult" / "kgelu-annealed" / "seed1" / "results.json").read_text())
    assert annealed["annealed"] and all(v == pytest.approx(annealed["target_lambda"], rel=1e-5) for v in annealed["lambda_final"].values())
    grid_run = json.loads((out / "runs" / "mlp-adult" / "grid-tau1-eta100" / "seed0" / "results.json").read_text())
    assert grid_run["settings"]["kgelu_tau"] == 1.0 and grid_run["settings"]["kgelu_lr_multiplier"] == 100.0

    again = _main(reproduce, *args)  # everything finished: nothing is trained again
    assert "seed 0: best" not in again and md.read_text().count("#### Table I —") == 1
