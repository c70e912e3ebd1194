"""Every code block of the README runs, in order, in a scratch folder: the Python blocks in one
namespace (each builds on the ones before, as a reader follows them), the shell blocks with the
venv's `hf-kgelu` and `python` first on PATH and a local Hub emulator standing in for the Hub. The
first block (`make demo`, `make test`) is what CI itself runs, so it is the one block not run here.
`text` blocks are pictures, not code."""

import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
from hub_emulator import HubEmulator

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SETUP_COMMANDS = "make demo", "make test"


def readme_blocks() -> list[tuple[str, str]]:
    return [(language, code) for language, code in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))]


def test_every_block_is_python_bash_or_text_and_the_first_is_the_setup():
    blocks = readme_blocks()
    assert {language for language, _ in blocks} <= {"python", "bash", "text"}
    assert blocks[0][0] == "bash" and all(command in blocks[0][1] for command in SETUP_COMMANDS)


@pytest.mark.slow
def test_the_readme_runs(tmp_path, monkeypatch):
    hub = HubEmulator(tmp_path / "hub").start()
    try:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "scripts").symlink_to(ROOT / "scripts")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": hub.token, "HF_HUB_OFFLINE": "0",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}
        namespace: dict = {"__name__": "__readme__"}
        for index, (language, code) in enumerate(readme_blocks()[1:], start=2):
            if language == "python":
                exec(compile(code, f"README.md block {index}", "exec"), namespace)
            elif language == "bash":
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=900)
                assert done.returncode == 0, f"README.md block {index}:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        # what the blocks promised is there: the pushed ReLU model, the converted encoder with its modules
        assert hub.file("you/gpt2-relu", "config.json") and b'"relu"' in hub.file("you/gpt2-relu", "config.json")
        assert (tmp_path / "minilm-relu" / "modules.json").is_file()
        assert (tmp_path / "outputs" / "mlp-adult" / "relu_model" / "model.safetensors").is_file()
    finally:
        hub.stop()
