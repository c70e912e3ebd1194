"""A save killed at any step leaves the output folder complete (old or new) and the next save cleans up
and says so: real `hf-kgelu relu-ize --overwrite` processes SIGKILL themselves at each step of
`hf_kgelu.publishing.folder` (a fault-injection patch inside the child script; no hooks in the library)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import tiny_model

from hf_kgelu.checkpoint import relu_ize_checkpoint
from hf_kgelu.cli import main as cli_main
from hf_kgelu.modeling import find_sites

pytestmark = pytest.mark.slow  # one fresh Python process per kill

TESTS_DIR = Path(__file__).resolve().parent
CHILD = r"""
import os, signal, sys, time
from pathlib import Path
import hf_kgelu.publishing.folder as folder
from hf_kgelu.cli import main

point, checkpoint, output_dir = sys.argv[1:4]


def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def fallback(kill_at):  # no RENAME_EXCHANGE: the old folder is renamed away, then the new one in
    move = folder._move_into_place

    def move_and_die(staging, target):
        rename, renames = os.rename, []

        def counting_rename(src, dst):
            rename(src, dst)
            renames.append(dst)
            if len(renames) == kill_at:
                die()

        os.rename = counting_rename
        folder._exchange = lambda first, second: False
        folder.shutil.rmtree = die  # after both renames: before the old folder is removed
        move(staging, target)

    folder._move_into_place = move_and_die


def pause_after_weights():  # let the test start a second save while this one holds its staging folder
    carried = folder.carried_files

    def wait_then_carry(source):
        Path(output_dir + ".staged").touch()
        while not Path(output_dir + ".go").exists():
            time.sleep(0.05)
        return carried(source)

    folder.carried_files = wait_then_carry


if point == "weights_written":  # save_pretrained has filled the staging folder; carried files come next
    folder.carried_files = die
elif point == "before_swap":
    folder._move_into_place = die
elif point == "after_exchange":  # swapped in one step; the staging folder now holds the old model
    exchange = folder._exchange
    folder._exchange = lambda first, second: exchange(first, second) and die()
elif point == "between_renames":
    fallback(kill_at=1)
elif point == "after_renames":
    fallback(kill_at=None)
elif point == "pause":
    pause_after_weights()
sys.exit(main(["relu-ize", checkpoint, "--output-dir", output_dir, "--overwrite"]))
"""


def _annealed_checkpoint(folder: Path, seed: int) -> Path:
    model = tiny_model("gpt2", seed=seed)
    for _, site in find_sites(model):
        site.set_lambda(200.0)  # near ReLU: no far-from-ReLU warning to muddle the output
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    old, new = _annealed_checkpoint(root / "old", 0), _annealed_checkpoint(root / "new", 1)
    weights = {}
    for name, checkpoint in (("old", old), ("new", new)):
        folder = relu_ize_checkpoint(checkpoint, root / f"relu-{name}").folder
        weights[name] = (folder / "model.safetensors").read_bytes()
    return {"old": old, "new": new, "relu-old": root / "relu-old", "weights": weights}


def _state(folder: Path, weights: dict) -> str:
    """"old" or "new" when the folder is complete with that model's weights; "missing" or "partial" otherwise."""
    if not folder.exists():
        return "missing"
    names = {p.name for p in folder.iterdir()}
    if names != {"README.md", "config.json", "generation_config.json", "model.safetensors"}:
        return "partial"
    found = (folder / "model.safetensors").read_bytes()
    return next((name for name, data in weights.items() if data == found), "partial")


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name.split("-")[0] for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def _child(point: str, checkpoint: Path, output_dir: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": os.pathsep.join([str(TESTS_DIR.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", CHILD, point, str(checkpoint), str(output_dir)], env=env, text=True,
                            stdout=subprocess.DEVNULL, **popen)


# kill point → (what the output folder holds right after the kill, the hidden leftovers, what the next save says)
KILLS = {
    "weights_written": ("old", [".relu.tmp"], ["removed .relu.tmp-"]),
    "before_swap": ("old", [".relu.tmp"], ["removed .relu.tmp-"]),
    "after_exchange": ("new", [".relu.tmp"], ["removed .relu.tmp-"]),
    # POSIX cannot rename over a non-empty folder: without RENAME_EXCHANGE the name is absent between the two
    # renames. The old folder is complete in .relu.old-*/relu; readers are told so, the next save restores it.
    "between_renames": ("missing", [".relu.old", ".relu.tmp"], ["restored", "removed .relu.tmp-"]),
    "after_renames": ("new", [".relu.old"], ["removed .relu.old-"]),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_a_killed_replacement_leaves_a_complete_folder_and_the_next_save_cleans_up(point, models, tmp_path, capsys, caplog):
    out = tmp_path / "relu"
    shutil.copytree(models["relu-old"], out)
    child = _child(point, models["new"], out, stderr=subprocess.PIPE)
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == -9, stderr[-2000:]  # SIGKILL, at the chosen step

    after_kill, leftovers, said = KILLS[point]
    assert _state(out, models["weights"]) == after_kill and _hidden(out) == leftovers
    if after_kill == "missing":
        assert cli_main(["relu-ize", str(out), "--output-dir", str(tmp_path / "other")]) == 2
        assert ".relu.old-" in capsys.readouterr().err  # the reader is told where the folder is

    assert cli_main(["relu-ize", str(models["new"]), "--output-dir", str(out), "--overwrite"]) == 0
    said_now = capsys.readouterr().err + caplog.text  # (the warnings are logged: pytest captures the log)
    assert all(words in said_now for words in said), said_now
    assert _state(out, models["weights"]) == "new" and _hidden(out) == []


def test_a_second_save_waits_instead_of_removing_a_running_saves_staging_folder(models, tmp_path):
    """Cleanup takes every `.NAME.tmp-*` for a leftover: without the save lock a second save into the same
    place would delete the first one's staging folder while it is being written."""
    out, log = tmp_path / "relu", tmp_path / "second.log"
    deadline = time.monotonic() + 300
    children = [_child("pause", models["new"], out, stderr=subprocess.DEVNULL)]
    try:
        while not Path(f"{out}.staged").exists():
            assert children[0].poll() is None and time.monotonic() < deadline, "the first save never reached its pause"
            time.sleep(0.1)
        with open(log, "w") as handle:
            children.append(_child("none", models["old"], out, stderr=handle))
        while "waiting for another save" not in log.read_text():
            assert children[1].poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        Path(f"{out}.go").touch()
        assert [child.wait(timeout=300) for child in children] == [0, 0], log.read_text()[-2000:]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    assert _state(out, models["weights"]) == "old" and _hidden(out) == []  # the second save came last
