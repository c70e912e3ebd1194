"""The hardness reaches the trackers users run: after a short `report_to` run, TensorBoard's event
files and trackio's local store hold, at every logged step, the per-site λ, mean λ, drift and phase
that hardness_history.json records (the Trainer's integrations name them `train/kgelu/...`)."""

import pytest

from hf_kgelu.training import KGeluTrainer
from hf_kgelu.training.history import read_history

from trainer_helpers import make_args, text_blocks, tiny_gpt2

STEPS = 24
PREFIX = "train/kgelu/"


def train(run_dir, report_to: str, **extra) -> dict:
    """A short learn-then-anneal run logging every step; returns its hardness history."""
    args = make_args(run_dir, max_steps=STEPS, logging_steps=1, report_to=[report_to], kgelu_anneal_start=0.5, **extra)
    KGeluTrainer(model=tiny_gpt2(), args=args, train_dataset=text_blocks()["train"]).train()
    return read_history(run_dir)


def expected_values(history: dict) -> dict[int, dict[str, float]]:
    """{step: {tracker key: value}} as the history file records them (anneal progress from its schedule)."""
    start, total = history["anneal_start_step"], history["max_steps"]
    expected = {}
    for entry in history["steps"][1:]:  # step 0 is recorded before training: nothing is logged there
        step = entry["step"]
        values = {f"{PREFIX}lambda/{site}": lam for site, lam in entry["lambda"].items()}
        values.update({f"{PREFIX}lambda_mean": entry["mean"], f"{PREFIX}drift": entry["drift"],
                       f"{PREFIX}annealing": float(entry["phase"] == "anneal"),
                       f"{PREFIX}anneal_progress": min(max(step - start, 0), total - start) / (total - start)})
        expected[step] = values
    return expected


def assert_same(logged: dict[int, dict[str, float]], history: dict, rel: float) -> None:
    expected = expected_values(history)
    assert sorted(logged) == sorted(expected) == list(range(1, STEPS + 1))
    for step, values in expected.items():
        assert logged[step] == pytest.approx(values, rel=rel, abs=1e-9), f"step {step}"
    assert expected[1][f"{PREFIX}annealing"] == 0.0 and expected[STEPS][f"{PREFIX}annealing"] == 1.0
    assert expected[STEPS][f"{PREFIX}lambda_mean"] == pytest.approx(history["target_lambda"], rel=1e-5)


def test_tensorboard_event_files_hold_the_hardness(tmp_path, no_network):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    history = train(tmp_path, "tensorboard")
    (events,) = (tmp_path / "runs").glob("*/events.out.tfevents.*")
    reader = event_accumulator.EventAccumulator(str(events.parent), size_guidance={event_accumulator.SCALARS: 0})
    reader.Reload()
    logged: dict[int, dict[str, float]] = {}
    for tag in reader.Tags()["scalars"]:
        if tag.startswith(PREFIX):
            for event in reader.Scalars(tag):
                logged.setdefault(event.step, {})[tag] = event.value
    assert_same(logged, history, rel=1e-6)  # TensorBoard stores float32


def test_trackio_local_store_holds_the_hardness(tmp_path, monkeypatch, no_network):
    pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage
    from trackio.utils import TRACKIO_DIR

    for variable in ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID"):  # local store only
        monkeypatch.delenv(variable, raising=False)
    project = f"hf-kgelu-{tmp_path.name}"
    history = train(tmp_path, "trackio", project=project, run_name="tracked")
    assert SQLiteStorage.get_project_db_path(project).parent == TRACKIO_DIR  # the tests' own store (conftest)
    logged = {}
    for row in SQLiteStorage.get_logs(project, "tracked"):
        values = {key: value for key, value in row.items() if key.startswith(PREFIX)}
        if values:
            logged[int(row["train/global_step"])] = values
    assert_same(logged, history, rel=1e-12)
