"""`hf-kgelu demo` on a reduced budget: the three runs, the tables, the ReLU folder with its card,
the report and the λ plot — and the same numbers again from the same seed."""

import contextlib
import io
import json

import pytest
from safetensors import safe_open

from hf_kgelu.cli import main as cli_main

BUDGET = ["--epochs", "2", "--train-limit", "160", "--batch-size", "32", "--quiet", "--seed", "3"]
NUMBERS = ("eval_history", "best_score", "best_epoch", "final_score", "lambda_learned", "lambda_final", "drift", "substitution")


def _numbers(folder):
    results = json.loads((folder / "results.json").read_text())
    return {run: {key: results[run][key] for key in NUMBERS} for run in ("gelu", "relu", "kgelu")}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("demo-a"), tmp_path_factory.mktemp("demo-b")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["demo", "--output-dir", str(first), *BUDGET]) == 0
    assert cli_main(["demo", "--output-dir", str(second), *BUDGET]) == 0
    return first, second, printed.getvalue()


def test_demo_writes_tables_report_plot_and_a_relu_model(demo_runs):
    out, _, printed = demo_runs
    assert "Table I" in printed and "Table II" in printed and "GELU → ReLU (direct swap)" in printed
    assert {"report.md", "hardness.png", "relu_model", "results.json", "gelu", "relu", "kgelu"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    assert "## Table I" in report and "## Table II" in report and "hf-kgelu demo" in report

    results = json.loads((out / "results.json").read_text())
    kgelu = results["kgelu"]
    assert kgelu["annealed"] and kgelu["lambda_final"] and len(kgelu["lambda_learned"]) == 4
    # the λ-GELU model ends at λ*; the learned profile is what it had at the switch
    assert all(v == pytest.approx(kgelu["target_lambda"], rel=1e-5) for v in kgelu["lambda_final"].values())
    assert results["gelu"]["substitution"]["after"] is not None and results["relu"]["substitution"] is None
    assert kgelu["substitution"]["gelu_before"] == pytest.approx(results["gelu"]["final_score"])

    relu_dir = out / "relu_model"
    config = json.loads((relu_dir / "config.json").read_text())
    assert config["hidden_act"] == "relu" and not any(k.startswith("kgelu") for k in config)
    with safe_open(str(relu_dir / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if k.endswith("theta")]
    assert (relu_dir / "preprocessor_config.json").exists() and "relu-ized" in (relu_dir / "README.md").read_text()


def test_demo_is_deterministic_for_a_seed(demo_runs):
    first, second, _ = demo_runs
    assert _numbers(first) == _numbers(second)
