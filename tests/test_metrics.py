"""Metrics through `evaluate`, offline first (hf_kgelu.metrics.load_metric): a local metric script,
evaluate's cache, the built-in fallback with its note, and an `evaluate` module as the Trainer's
compute_metrics. The suite runs with HF_HUB_OFFLINE=1 and a session-local module cache (conftest)."""

import hashlib
import logging
import time

import pytest

from hf_kgelu.metrics import Metric, evaluate_model, load_metric
from hf_kgelu.substitution import substitution_report
from hf_kgelu.training import KGeluTrainer

from trainer_helpers import METRIC_SCRIPT, digits, make_args, text_blocks, tiny_deit, tiny_gpt2, write_metric

evaluate = pytest.importorskip("evaluate")


def test_hub_metric_offline_and_uncached_falls_back_to_built_in_accuracy_with_one_note(no_network, caplog):
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="hf_kgelu.metrics"):
        metric = load_metric("accuracy", "classification")
    assert time.perf_counter() - started < 10
    assert metric == Metric("accuracy", True)
    notes = [r.getMessage() for r in caplog.records if r.name == "hf_kgelu.metrics"]
    assert len(notes) == 1 and "\n" not in notes[0] and "built-in" in notes[0] and "offline" in notes[0]
    with pytest.raises(ValueError, match="'f1'.*local evaluate metric script"):
        load_metric("f1", "classification")
    assert load_metric("perplexity", "causal_lm") == Metric("perplexity", False)
    assert load_metric(None, "causal_lm") == Metric("perplexity", False)


def test_local_metric_script_measures_like_the_built_in_accuracy(tmp_path, no_network):
    folder = write_metric(tmp_path)
    for spec in (folder, folder / "id_match.py"):
        metric = load_metric(spec, "classification")
        assert (metric.name, metric.higher_is_better, metric.source) == ("id_match", True, f"local module {spec}")
    model, (_, validation) = tiny_deit(), digits()
    built_in = evaluate_model(model, validation)["accuracy"]
    assert evaluate_model(model, validation, metric=folder)["id_match"] == pytest.approx(built_in, abs=1e-12)
    report = substitution_report(model, validation, metric=str(folder))
    default = substitution_report(model, validation)
    assert report.metric == "id_match" and default.metric == "accuracy"
    assert (report.kgelu_before, report.kgelu_after) == pytest.approx((default.kgelu_before, default.kgelu_after), abs=1e-12)
    # a causal LM: next-token ids (position t predicts token t + 1), the same as the built-in next-token accuracy
    lm, blocks = tiny_gpt2(), text_blocks()["validation"]
    tokens = evaluate_model(lm, blocks, metric=folder)
    assert tokens["id_match"] == pytest.approx(evaluate_model(lm, blocks, metric=Metric("accuracy", True))["accuracy"], abs=1e-12)
    assert tokens["perplexity"] == evaluate_model(lm, blocks)["perplexity"]


def test_cached_hub_metric_is_loaded_without_the_network(no_network):
    """What evaluate.load("accuracy") leaves in the module cache once online is used offline."""
    cached = (evaluate.config.HF_MODULES_CACHE / "evaluate_modules" / "metrics" / "evaluate-metric--accuracy"
              / hashlib.sha256(b"test").hexdigest())
    cached.mkdir(parents=True)
    (cached / "accuracy.py").write_text(METRIC_SCRIPT.format(name="accuracy", cls="Accuracy"), encoding="utf-8")
    try:
        metric = load_metric("accuracy", "classification")
    finally:
        for path in sorted(cached.parent.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        cached.parent.rmdir()
    assert (metric.name, metric.source) == ("accuracy", "evaluate cache") and metric.module is not None
    model, (_, validation) = tiny_deit(), digits()
    assert evaluate_model(model, validation, metric=metric)["accuracy"] == pytest.approx(
        evaluate_model(model, validation)["accuracy"], abs=1e-12)


@pytest.mark.parametrize("arch", ["deit", "gpt2"])
def test_trainer_takes_an_evaluate_module_as_compute_metrics(tmp_path, arch):
    module = evaluate.load(str(write_metric(tmp_path)), keep_in_memory=True)
    if arch == "deit":
        model, (train, validation) = tiny_deit(), digits()
    else:
        model, validation = tiny_gpt2(), text_blocks()["validation"]
        train = text_blocks()["train"]
    trainer = KGeluTrainer(model=model, args=make_args(tmp_path / "run", max_steps=2), train_dataset=train,
                           eval_dataset=validation, compute_metrics=module)
    trainer.train()
    logged = trainer.evaluate()["eval_id_match"]
    assert logged == pytest.approx(evaluate_model(trainer.model, validation, metric=Metric("accuracy", True))["accuracy"],
                                   abs=1e-12)
    assert trainer.evaluate_substitution(metric=module).metric == "id_match"
