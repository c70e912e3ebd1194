"""`hf-kgelu demo` at a tiny size: the report and the printed summary open with the direct-swap vs
annealed-swap comparison, the ReLU folder is complete (with its tokenizer), results.json keeps its
shape, the same seed gives the same numbers — and the digits task is still there."""

import contextlib
import io
import json

import pytest
from safetensors import safe_open

from hf_kgelu.cli import main as cli_main
from hf_kgelu.data import compact_gpt2_tokenizer, embedded_text_splits, gpt2_tokenizer

# 1 layer × 16, 48 training and 8 held-out blocks of 32 tokens, 1 epoch: seconds, not science.
TINY = ["--layers", "1", "--width", "16", "--block-size", "32", "--train-limit", "48", "--eval-limit", "8", "--epochs", "1",
        "--quiet", "--seed", "3"]
NUMBERS = ("eval_history", "best_score", "best_epoch", "final_score", "lambda_learned", "lambda_final", "drift", "substitution")


def _numbers(folder, runs=("gelu", "kgelu")):
    results = json.loads((folder / "results.json").read_text())
    return {run: {key: results[run][key] for key in NUMBERS} for run in runs}


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("demo-a"), tmp_path_factory.mktemp("demo-b")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["demo", "--output-dir", str(first), *TINY]) == 0
    assert cli_main(["demo", "--output-dir", str(second), *TINY]) == 0
    return first, second, printed.getvalue()


def test_demo_opens_with_the_direct_vs_annealed_comparison(demo_runs):
    out, _, printed = demo_runs
    results = json.loads((out / "results.json").read_text())
    gelu, kgelu = results["gelu"]["substitution"], results["kgelu"]["substitution"]
    sentence = "Swapping GELU for ReLU after training"

    report = (out / "report.md").read_text()
    body = [line for line in report.splitlines()[1:] if line.strip()]  # after the title
    assert body[0].startswith(sentence) and "λ-GELU annealed to λ* = 160 swaps for" in body[0]
    assert body[1].startswith("| model | held-out perplexity before the swap | after (ReLU) | relative change |")
    assert body[3].startswith(f"| GELU, ReLU swapped in directly | {gelu['before']:.4f} | {gelu['after']:.4f} |")
    assert body[4].startswith(f"| λ-GELU annealed to λ* = 159.6, then ReLU | {kgelu['before']:.4f} | {kgelu['after']:.4f} |")

    summary = printed[printed.index("\n\n") + 2:]  # the end-of-run summary follows the progress lines
    assert summary.startswith(sentence) and body[1] in summary

    # results.json: per run metric, higher_is_better, substitution before/after (+ the relative change)
    for run in ("gelu", "kgelu"):
        assert results[run]["metric"] == "perplexity" and results[run]["higher_is_better"] is False
        sub = results[run]["substitution"]
        assert sub["relative_change"] == pytest.approx(sub["after"] / sub["before"] - 1)
    assert kgelu["gelu_before"] == pytest.approx(gelu["before"]) and kgelu["gelu_after"] == pytest.approx(gelu["after"])
    assert "relu" not in results  # the ReLU-from-scratch run is opt-in (--relu-run) on this task


def test_demo_writes_a_complete_relu_model_and_a_truthful_plot_caption(demo_runs):
    out, _, _ = demo_runs
    assert {"report.md", "hardness.png", "relu_model", "results.json", "gelu", "kgelu"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    assert "![λ of each λ-GELU site over the optimizer steps" in report and "## Training" in report
    kgelu = json.loads((out / "results.json").read_text())["kgelu"]
    assert kgelu["annealed"] and len(kgelu["lambda_learned"]) == 1
    assert all(v == pytest.approx(kgelu["target_lambda"], rel=1e-5) for v in kgelu["lambda_final"].values())

    relu_dir = out / "relu_model"
    config = json.loads((relu_dir / "config.json").read_text())
    assert config["activation_function"] == "relu" and not any(k.startswith("kgelu") for k in config)
    with safe_open(str(relu_dir / "model.safetensors"), "pt") as weights:
        assert not [k for k in weights.keys() if k.endswith("theta")]
    assert (relu_dir / "tokenizer.json").exists() and "relu-ized" in (relu_dir / "README.md").read_text()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(relu_dir)
    model = AutoModelForCausalLM.from_pretrained(relu_dir)
    assert len(tokenizer) == config["vocab_size"] == model.config.vocab_size
    ids = tokenizer("def f(x):\n    return x", return_tensors="pt")["input_ids"]
    assert int(ids.max()) < config["vocab_size"] and model(input_ids=ids).logits.shape[-1] == config["vocab_size"]


def test_demo_is_deterministic_for_a_seed(demo_runs):
    first, second, _ = demo_runs
    assert _numbers(first) == _numbers(second)


def test_compact_tokenizer_is_gpt2_on_kept_words_and_lossless_elsewhere(tmp_path):
    text = embedded_text_splits()["train"][:20_000]
    small = compact_gpt2_tokenizer(text, 600, tmp_path)
    assert len(small) <= 600 and small.eos_token == "<|endoftext|>" and small.eos_token_id == len(small) - 1
    full = gpt2_tokenizer()
    for sample in ("for i in range(10):", "the object's __getattribute__()", "ünïcødé ∑ 😀"):
        ids = small(sample)["input_ids"]
        assert small.decode(ids) == sample and max(ids) < len(small)
    word = " the"  # frequent: kept whole, same pieces as GPT-2
    assert small.convert_ids_to_tokens(small(word)["input_ids"]) == full.convert_ids_to_tokens(full(word)["input_ids"])


def test_demo_digits_task_still_runs(tmp_path):
    budget = ["--task", "digits", "--epochs", "1", "--train-limit", "96", "--eval-limit", "64", "--no-relu-run", "--quiet"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli_main(["demo", "--output-dir", str(tmp_path), *budget]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"gelu", "kgelu"} and results["gelu"]["metric"] == "accuracy"
    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2].startswith("Swapping GELU for ReLU after training")
    assert "| model | held-out accuracy before the swap |" in report
    assert (tmp_path / "relu_model" / "preprocessor_config.json").exists()
