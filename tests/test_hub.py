"""Model card, the local ReLU model folder, and pushing to a loopback Hub emulator (tests/hub_emulator.py):
end to end through `hf-kgelu relu-ize`, then `from_pretrained` via HF_ENDPOINT in stock transformers."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap

import huggingface_hub.constants
import pytest
import torch
from hub_emulator import HubEmulator
from huggingface_hub import ModelCard
from safetensors.torch import save_file
from tiny_models import tiny_model
from transformers import GPT2Config, GPT2LMHeadModel, ViTImageProcessor

from hf_kgelu import target_lambda
from hf_kgelu.checkpoint import Checkpoint, publish
from hf_kgelu.cli import main as cli_main
from hf_kgelu.modeling import find_sites
from hf_kgelu.publishing import (
    CardDetails,
    HubPushError,
    push_folder,
    render_model_card,
)
from hf_kgelu.relu import relu_ize
from hf_kgelu.substitution import substitution_report

BAD_TOKEN = "hf_SECRET_bad_token_0123456789"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running emulator; offline mode is lifted for the loopback address only in this process."""
    emulator = HubEmulator(tmp_path / "hub").start()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", emulator.url)  # nothing may reach the real Hub
    yield emulator
    emulator.stop()


def _folder_digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _relu_vit(lam=None):
    model = tiny_model("vit")
    lam = lam or target_lambda(0.005)
    for _, site in find_sites(model):
        site.set_lambda(lam)
    return model, *relu_ize(model)


def test_card_has_hub_metadata_and_a_truthful_body():
    model, relu_model, report = _relu_vit()
    g = torch.Generator().manual_seed(0)
    data = [{"pixel_values": torch.randn(1, 8, 8, generator=g), "labels": i % 10} for i in range(20)]
    substitution = substitution_report(model, data)
    details = CardDetails(base_model="google/vit-base-patch16-224", datasets=["ylecun/mnist"], eval_dataset="mnist test",
                          training={"eta": 10.0, "anneal_start": 0.25, "tolerance": 0.005, "bound": "gate_l1", "init": "increasing"})
    card_text = render_model_card(report, config=relu_model.config, details=details, comparison=substitution,
                                  usage_id="alice/vit-relu", plot_file="lambda_profile.png")
    card = ModelCard(card_text)
    data_dict = card.data.to_dict()
    assert data_dict["library_name"] == "transformers" and data_dict["pipeline_tag"] == "image-classification"
    assert {"relu-ized", "kgelu"} <= set(data_dict["tags"])
    assert data_dict["base_model"] == "google/vit-base-patch16-224" and data_dict["datasets"] == ["ylecun/mnist"]
    values = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert values == {"accuracy (ReLU, this model)": pytest.approx(substitution.kgelu_after),
                      "accuracy (λ-GELU, before the swap)": pytest.approx(substitution.kgelu_before)}
    body = card.text
    for site in report.sites:
        assert f"| `{site.name}` | λ-GELU | {site.lam:.4g} |" in body
    assert "λ* (annealing target) | 159.6 |" in body and "η (θ learns at learning_rate × η) | 10 |" in body
    assert "hardness init | increasing |" in body and "τ (temperature of λ = 1 + softplus(θ/τ)) | 0.1 |" in body
    assert "![λ of every site over the training steps, anneal start marked](lambda_profile.png)" in body
    assert 'AutoModelForImageClassification.from_pretrained("alice/vit-relu")' in body
    assert substitution.as_markdown() in body and "`hidden_act` (was `kgelu`)" in body
    assert "then, for the rest of training, with λ annealed to λ* = 159.6;" in body.replace("\n", " ")
    assert "## What the swap guarantees" in body

    # A plain GELU model swapped directly: the card must not claim λ-GELU training or annealing.
    gelu_relu, gelu_report = relu_ize(tiny_model("vit", activation="gelu"), include_gelu=True)
    gelu_card = ModelCard(render_model_card(gelu_report, config=gelu_relu.config, usage_id="models/vit-relu"))
    assert "direct-swap baseline" in gelu_card.text and "trained with" not in gelu_card.text and "annealed" not in gelu_card.text
    assert "What the swap guarantees" not in gelu_card.text and "## How far each ReLU is from the GELU it replaced" in gelu_card.text
    assert "| activation sup: sup \\|xΦ(λx) − ReLU(x)\\| = 0.169971/λ | 0.17 |" in gelu_card.text
    assert 'from_pretrained("models/vit-relu")' in gelu_card.text  # not published: the snippet names the folder


def test_publish_writes_a_complete_folder_atomically(tmp_path, monkeypatch):
    model, relu_model, report = _relu_vit()
    source = tmp_path / "checkpoint"
    model.save_pretrained(source)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(source)
    plot = tmp_path / "lambda_profile.png"
    plot.write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    out = tmp_path / "relu"

    checkpoint = Checkpoint(model=model, processor=None, folder=source, name="checkpoint")
    folder = publish(relu_model, report, out, source=checkpoint, plot_file=plot).folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "lambda_profile.png", "model.safetensors", "preprocessor_config.json"]
    assert json.loads((folder / "config.json").read_text())["hidden_act"] == "relu"
    card = (folder / "README.md").read_text()
    assert "![λ of every site over the training steps, anneal start marked](lambda_profile.png)" in card
    assert f'from_pretrained("{out}")' in card  # not pushed: the snippet loads the folder

    good = _folder_digest(folder)
    with pytest.raises(FileExistsError, match="--overwrite"):
        publish(relu_model, report, out)
    with pytest.raises(ValueError, match="relu_ize"):  # a λ-GELU model is not a ReLU model
        publish(model, report, tmp_path / "other")

    import hf_kgelu.publishing.folder as folder_module

    def crash(*args, **kwargs):
        raise RuntimeError("crash while carrying the processor files")

    monkeypatch.setattr(folder_module.shutil, "copy2", crash)
    with pytest.raises(RuntimeError, match="crash"):
        publish(relu_model, report, out, source=checkpoint, overwrite=True)
    assert _folder_digest(folder) == good  # the good folder survived, and no half folder is left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "lambda_profile.png", "relu"]
    monkeypatch.undo()

    publish(relu_model, report, out, overwrite=True)  # replaced only when complete
    assert "lambda_profile.png" not in {p.name for p in out.iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "lambda_profile.png", "relu"]


CHILD = textwrap.dedent(
    """
    import json, sys
    import torch
    from huggingface_hub import ModelCard
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        import hf_kgelu
        blocked = False
    except ImportError:
        blocked = True
    repo, expected_file = sys.argv[1:]
    model = AutoModelForCausalLM.from_pretrained(repo).eval()
    tokenizer = AutoTokenizer.from_pretrained(repo)
    expected = load_file(expected_file)
    with torch.no_grad():
        diff = (model(input_ids=expected["input_ids"]).logits - expected["logits"]).abs().max().item()
    card = ModelCard.load(repo)
    print(json.dumps({
        "blocked": blocked, "activation": model.config.activation_function, "max_diff": diff,
        "relu_modules": sum(isinstance(m, torch.nn.ReLU) for m in model.modules()),
        "theta": [k for k in model.state_dict() if k.endswith("theta")],
        "tokens": tokenizer("hello world")["input_ids"],
        "tags": card.data.tags, "library_name": card.data.library_name,
        "results": {r.metric_name: r.metric_value for r in card.data.eval_results or []},
        "snippet": 'AutoModelForCausalLM.from_pretrained("' + repo + '")' in card.text,
    }))
    """
)


def test_relu_ize_cli_pushes_and_stock_transformers_loads_from_the_hub(tmp_path, hub, monkeypatch, capsys):
    from hf_kgelu.data import gpt2_tokenizer

    torch.set_num_threads(1)
    tokenizer = gpt2_tokenizer(tmp_path / "bpe")
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=len(tokenizer),
                                       activation_function="kgelu", kgelu_init="increasing")).eval()
    for _, site in find_sites(model):
        site.set_lambda(target_lambda(0.005))
    checkpoint = tmp_path / "run" / "checkpoint-8"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    (tmp_path / "run" / "hardness_history.json").write_text(json.dumps(
        {"settings": {"kgelu_tau": 0.1, "kgelu_lr_multiplier": 10.0, "kgelu_anneal_start": 0.25,
                      "kgelu_tolerance": 0.005, "kgelu_bound": "gate_l1", "kgelu_target_lambda": None},
         "target_lambda": target_lambda(0.005)}))
    text = tmp_path / "eval.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = tmp_path / "relu"

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    code = cli_main(["relu-ize", str(checkpoint), "--output-dir", str(out), "--eval-data", str(text), "--block-size", "16",
                     "--max-eval-blocks", "4", "--push-to-hub", "alice/tiny-relu", "--token", hub.token,
                     "--base-model", "openai-community/gpt2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "λ-GELU → ReLU" in printed.out and hub.token not in printed.out + printed.err
    assert ("POST", "/api/validate-yaml") in hub.requests and hub.unhandled == []
    assert set(hub.authorizations) == {f"Bearer {hub.token}"}
    uploaded = hub.commit_at("alice/tiny-relu", "main")["files"]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(uploaded)
    card = hub.file("alice/tiny-relu", "README.md").decode()
    assert "λ* (annealing target) | 159.6 |" in card and "anneal start (fraction of training) | 0.25 |" in card
    assert "Perplexity on eval.txt" in card

    relu_model, _ = relu_ize(model)
    ids = torch.tensor([tokenizer("The lazy dog jumps over the quick fox.")["input_ids"]])
    with torch.no_grad():
        logits = relu_model(input_ids=ids).logits
    expected = tmp_path / "expected.safetensors"
    save_file({"input_ids": ids, "logits": logits.contiguous()}, str(expected))
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['hf_kgelu'] = None  # `import hf_kgelu` fails\n")
    env = {**os.environ, "PYTHONPATH": str(shim), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
           "HF_HOME": str(tmp_path / "hf_home"), "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("HF_TOKEN", None)
    child = subprocess.run([sys.executable, "-c", CHILD, "alice/tiny-relu", str(expected)], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    loaded = json.loads(child.stdout.strip().splitlines()[-1])
    assert loaded["blocked"] and loaded["activation"] == "relu" and loaded["theta"] == [] and loaded["relu_modules"] == 2
    assert loaded["max_diff"] <= 1e-6
    assert loaded["tokens"] == tokenizer("hello world")["input_ids"]
    assert {"relu-ized", "kgelu"} <= set(loaded["tags"]) and loaded["library_name"] == "transformers"
    assert set(loaded["results"]) == {"perplexity (ReLU, this model)", "perplexity (λ-GELU, before the swap)"}
    assert loaded["snippet"]


def test_failed_pushes_keep_the_folder_say_how_to_retry_and_hide_the_token(tmp_path, hub, monkeypatch, capsys):
    _, relu_model, report = _relu_vit()
    folder = publish(relu_model, report, tmp_path / "relu").folder
    before = _folder_digest(folder)

    with pytest.raises(HubPushError) as error:  # a wrong token: 401
        push_folder(folder, "alice/vit-relu", token=BAD_TOKEN, endpoint=hub.url, private=True)
    message = str(error.value)
    assert error.value.status_code == 401 and "hf auth login" in message and "HF_TOKEN" in message
    assert f"hf upload alice/vit-relu {folder} . --repo-type model --private" in message
    assert BAD_TOKEN not in message and BAD_TOKEN not in repr(error.value) and error.value.__cause__ is None
    assert _folder_digest(folder) == before

    hub.fail_next(500)  # the server breaks
    with pytest.raises(HubPushError, match="server error") as error:
        push_folder(folder, "alice/vit-relu", token=hub.token, endpoint=hub.url)
    assert error.value.status_code == 500 and error.value.retry_command in str(error.value)
    assert _folder_digest(folder) == before and "alice/vit-relu" not in hub.repos
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind

    # The same through the command line: exit status 1, the token (from HF_TOKEN) never printed.
    checkpoint = tmp_path / "checkpoint"
    _relu_vit()[0].save_pretrained(checkpoint)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_TOKEN", BAD_TOKEN)
    code = cli_main(["relu-ize", str(checkpoint), "--output-dir", str(tmp_path / "cli"), "--push-to-hub", "alice/vit-relu"])
    printed = capsys.readouterr()
    assert code == 1 and "Retry with" in printed.err and BAD_TOKEN not in printed.out + printed.err
    assert (tmp_path / "cli" / "model.safetensors").is_file()
    assert 'from_pretrained("alice/vit-relu")' in (tmp_path / "cli" / "README.md").read_text()  # meant for the repo

    # retrying the printed way (here through the Python API, same folder) succeeds once the token is right
    assert push_folder(folder, "alice/vit-relu", token=hub.token, endpoint=hub.url).endswith("/alice/vit-relu")
    assert hub.file("alice/vit-relu", "model.safetensors") == (folder / "model.safetensors").read_bytes()
    assert hub.file("alice/vit-relu", "README.md") == (folder / "README.md").read_bytes()  # uploaded as it is
    commits = len(hub.repos["alice/vit-relu"]["commits"])
    push_folder(folder, "alice/vit-relu", token=hub.token, endpoint=hub.url)  # again: repo exists, nothing changed
    assert len(hub.repos["alice/vit-relu"]["commits"]) == commits and hub.unhandled == []


def test_cli_refuses_a_non_empty_output_dir_before_loading_anything(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code = cli_main(["relu-ize", str(tmp_path / "does-not-exist"), "--output-dir", str(out)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "precious"
