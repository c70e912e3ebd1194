"""A run stopped at a checkpoint and resumed ends exactly where the uninterrupted run ends.

Setup: tiny GPT-2 on real text, S = 24 optimizer steps, switch at s₀ = 6. CPU training with a
fixed seed is deterministic, so "the same trajectory" is checked bit for bit.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from trainer_helpers import StopAt, ThetaWatch, make_args, text_blocks, tiny_gpt2

from hf_kgelu.training import KGeluTrainer
from hf_kgelu.training.history import read_history

torch.set_num_threads(1)

MAX_STEPS, ANNEAL_START, SWITCH = 24, 0.25, 6
TESTS_DIR = Path(__file__).resolve().parent


def _run(output_dir, stop=None, resume=None, save_steps=None, **overrides):
    watch = ThetaWatch()
    callbacks = [watch] + ([StopAt(stop)] if stop else [])
    args = make_args(output_dir, max_steps=MAX_STEPS, kgelu_anneal_start=ANNEAL_START, logging_steps=1, weight_decay=0.05,
                     save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500, **overrides)
    model = tiny_gpt2()
    trainer = KGeluTrainer(model=model, args=args, train_dataset=text_blocks()["train"], callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model, watch


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted")
    model, watch = _run(output_dir)
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "lam": watch.lam, "dir": output_dir}


def _assert_same_trajectory(lam, reference, steps):
    for step in steps:
        for name, value in reference[step].items():
            assert torch.equal(lam[step][name], value), f"λ of {name} differs at step {step}"


@pytest.mark.parametrize(
    "stop, restore",
    [
        (16, False),  # mid-anneal, the user never heard of restore_callback_states_from_checkpoint
        (16, True),  # mid-anneal, with the stock flag set: the restored callback instance works too
        (4, False),  # before the switch: the resumed run learns on, then records the switch itself
    ],
)
def test_resume_reproduces_the_uninterrupted_trajectory(tmp_path, uninterrupted, stop, restore):
    _, first = _run(tmp_path, stop=stop, save_steps=4)
    checkpoint = tmp_path / f"checkpoint-{stop}"
    assert checkpoint.is_dir() and max(first.lam) == stop
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["KGeluHardnessCallback"]
    assert (stored["attributes"]["start_lambda"] is not None) == (stop >= SWITCH)

    model, resumed = _run(tmp_path, resume=str(checkpoint), save_steps=4, restore_callback_states_from_checkpoint=restore)
    assert sorted(resumed.lam) == list(range(stop + 1, MAX_STEPS + 1))
    _assert_same_trajectory(resumed.lam, uninterrupted["lam"], range(stop + 1, MAX_STEPS + 1))
    assert not any(resumed.moved(step) for step in range(max(stop, SWITCH) + 1, MAX_STEPS + 1))  # frozen
    for key, value in uninterrupted["state"].items():
        assert torch.equal(model.state_dict()[key], value), key

    # The history continues the interrupted one: every step once, values as in the uninterrupted run.
    history, reference = read_history(tmp_path), read_history(uninterrupted["dir"])
    assert [e["step"] for e in history["steps"]] == list(range(MAX_STEPS + 1))
    assert [e["lambda"] for e in history["steps"]] == [e["lambda"] for e in reference["steps"]]
    assert history["anneal_start_lambda"] == reference["anneal_start_lambda"]
    assert read_history(checkpoint)["steps"][-1]["step"] == stop  # each checkpoint keeps its own copy


RESUME_SCRIPT = """
import json, sys
sys.path[:0] = [{tests!r}, {root!r}]
import torch
torch.set_num_threads(1)
from test_trainer_resume import _run
_, watch = _run({output_dir!r}, resume=True, save_steps=4)
json.dump({{str(s): {{n: v.tolist() for n, v in lam.items()}} for s, lam in watch.lam.items()}}, open({out!r}, "w"))
"""


def test_resume_in_a_fresh_process(tmp_path, uninterrupted):
    """The real case: the process that trained is gone; all state comes from the checkpoint folder."""
    _run(tmp_path, stop=12, save_steps=4)
    out = tmp_path / "trajectory.json"
    script = RESUME_SCRIPT.format(tests=str(TESTS_DIR), root=str(TESTS_DIR.parent), output_dir=str(tmp_path), out=str(out))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300, cwd=tmp_path)
    trajectory = json.loads(out.read_text())
    assert sorted(int(s) for s in trajectory) == list(range(13, MAX_STEPS + 1))
    for step, lam in trajectory.items():
        for name, values in lam.items():
            assert values == uninterrupted["lam"][int(step)][name].tolist(), (step, name)
