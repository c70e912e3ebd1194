"""The three `scripts/run_*.py` end to end in real subprocesses on tiny configs: training, the
ReLU folder of `--relu_ize_at_end` loaded where hf_kgelu cannot be imported, resume, and
`--push_to_hub` of the ReLU model to the loopback Hub emulator."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hub_emulator import HubEmulator
from trainer_helpers import write_metric

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--eval_strategy", "epoch",
    "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true", "--learning_rate", "3e-3",
    "--dataloader_pin_memory", "false",
]


def _env(**extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    env.update(extra)
    return env


def run_script(name, *args, env=None, timeout=240):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          env=env or _env(), timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# A process in which `import hf_kgelu` fails: it evaluates a saved ReLU folder with stock transformers
# and prints {"accuracy"|"perplexity", "acts", "theta"} as JSON.
STOCK_CHILD = textwrap.dedent("""
    import json, math, sys
    sys.modules["hf_kgelu"] = None  # any import of the package now raises ImportError
    import torch
    import torch.nn.functional as F
    from safetensors.torch import load_file
    from transformers import AutoConfig
    import transformers

    folder, auto_class, data_file = sys.argv[1], sys.argv[2], sys.argv[3]
    remote = auto_class.endswith("+remote")
    auto_class = auto_class.removesuffix("+remote")
    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=remote).eval()
    config = AutoConfig.from_pretrained(folder, trust_remote_code=remote)
    acts = sorted({str(v) for k, v in config.to_dict().items() if "act" in k and isinstance(v, str)})
    theta = [k for k in load_file(folder + "/model.safetensors") if k.endswith("theta")]
    data = load_file(data_file)
    with torch.no_grad():
        logits = model(**{k: v for k, v in data.items() if k != "labels"}).logits
    if auto_class == "AutoModelForCausalLM":
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), data["labels"][:, 1:].reshape(-1))
        score = {"perplexity": math.exp(loss.item())}
    else:
        score = {"accuracy": (logits.argmax(-1) == data["labels"]).sum().item() / len(data["labels"])}
    print(json.dumps({**score, "acts": acts, "theta": theta, "modules": sorted({type(m).__name__ for m in model.modules()})}))
""")


def load_in_stock_process(folder, auto_class, eval_data, tmp_path):
    """Evaluate the ReLU folder where hf_kgelu cannot be imported, on the same eval data."""
    from safetensors.torch import save_file

    data_file = tmp_path / "eval_data.safetensors"
    batch = eval_data[: len(eval_data)]
    save_file({k: v.contiguous() for k, v in batch.items() if k in ("pixel_values", "input_ids", "labels")}, str(data_file))
    proc = subprocess.run([sys.executable, "-c", STOCK_CHILD, str(folder), auto_class, str(data_file)], capture_output=True,
                          text=True, env=_env(PYTHONPATH=""), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_run_tabular_relu_ize_at_end_gives_a_folder_that_loads_without_hf_kgelu(tmp_path):
    out = tmp_path / "mlp"
    proc = run_script("run_tabular.py", "--dataset", "adult", "--max_train_samples", "400", "--max_eval_samples", "200",
                      "--hidden_size", "16", "--num_train_epochs", "2", "--output_dir", str(out), "--relu_ize_at_end",
                      "--kgelu_target_lambda", "200", *COMMON)
    assert "ReLU model:" in proc.stdout
    result = json.loads((out / "results.json").read_text())
    assert result["activation"] == "kgelu" and result["annealed"]
    assert len(result["eval_history"]) == 2 and result["best_score"] == max(s for _, s in result["eval_history"])
    assert all(v == pytest.approx(200.0, rel=1e-5) for v in result["lambda_final"].values())  # annealed to λ*
    assert len(result["lambda_learned"]) == 4  # the paper's four hidden layers
    relu_dir = Path(result["relu_dir"])
    assert {"config.json", "model.safetensors", "README.md", "mlp.py", "hardness.png"} <= {p.name for p in relu_dir.iterdir()}
    assert "trust_remote_code=True" in (relu_dir / "README.md").read_text()

    from hf_kgelu.data import adult_splits

    eval_data = adult_splits()["validation"].select(range(200))
    loaded = load_in_stock_process(relu_dir, "AutoModelForSequenceClassification+remote", eval_data, tmp_path)
    assert loaded["acts"] == ["relu"] and loaded["theta"] == [] and "KGELU" not in loaded["modules"]
    # the same accuracy the run measured for its ReLU swap, now from the saved folder in another process
    assert loaded["accuracy"] == pytest.approx(result["substitution"]["after"], abs=1e-9)
    assert "report.md" in os.listdir(out) and "hardness_history.json" in os.listdir(out)


def test_run_tabular_metric_from_a_local_evaluate_script_and_tensorboard(tmp_path):
    """--metric PATH measures the evaluations, the final score and the swap; --report_to tensorboard gets λ."""
    pytest.importorskip("evaluate")
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    out = tmp_path / "mlp"
    common = [arg if arg != "none" else "tensorboard" for arg in COMMON]
    run_script("run_tabular.py", "--dataset", "adult", "--max_train_samples", "200", "--max_eval_samples", "100",
               "--hidden_size", "16", "--num_train_epochs", "2", "--output_dir", str(out), "--logging_steps", "4",
               "--metric", str(write_metric(tmp_path)), *common)
    result = json.loads((out / "results.json").read_text())
    assert result["metric"] == "id_match" and result["higher_is_better"] and len(result["eval_history"]) == 2
    assert result["final_score"] == result["substitution"]["before"]  # the same metric on the same model
    (events,) = (out / "runs").glob("*/events.out.tfevents.*")
    reader = event_accumulator.EventAccumulator(str(events.parent))
    reader.Reload()
    assert {"eval/id_match", "train/kgelu/lambda_mean", "train/kgelu/annealing", "train/kgelu/drift"} <= set(reader.Tags()["scalars"])


def test_run_image_classification_digits_saves_processor_and_stock_loadable_relu_model(tmp_path):
    out = tmp_path / "deit"
    run_script("run_image_classification.py", "--dataset", "digits", "--max_train_samples", "256", "--max_eval_samples", "100",
               "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
               "--num_train_epochs", "2", "--output_dir", str(out), "--relu_ize_at_end", *COMMON)
    result = json.loads((out / "results.json").read_text())
    relu_dir = Path(result["relu_dir"])
    processor = json.loads((relu_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 8, "width": 8} and processor["rescale_factor"] == pytest.approx(1 / 16)
    assert (out / "preprocessor_config.json").exists()

    from hf_kgelu.data import digits_splits

    eval_data = digits_splits()["validation"].select(range(100))
    loaded = load_in_stock_process(relu_dir, "AutoModelForImageClassification", eval_data, tmp_path)
    assert "relu" in loaded["acts"] and not {"gelu", "kgelu"} & set(loaded["acts"]) and loaded["theta"] == []
    assert loaded["accuracy"] == pytest.approx(result["substitution"]["after"], abs=1e-9)


def test_run_image_classification_gelu_direct_swap_and_imagefolder(tmp_path):
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, rows in (("train", range(0, 48)), ("validation", range(48, 72))):
        for i in rows:
            folder = tmp_path / "images" / split / f"class{digits.target[i] % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray((digits.images[i] * 15).astype(np.uint8), "L").resize((16, 16)).save(folder / f"{i}.png")
    out = tmp_path / "vit"
    run_script("run_image_classification.py", "--dataset", "imagefolder", "--data_dir", str(tmp_path / "images"),
               "--model_type", "vit", "--image_size", "16", "--activation", "gelu",
               "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
               "--num_train_epochs", "1", "--output_dir", str(out), "--relu_ize_at_end", *COMMON)
    result = json.loads((out / "results.json").read_text())
    assert result["activation"] == "gelu" and result["lambda_learned"] is None
    assert json.loads((out / "config.json").read_text())["id2label"] == {"0": "class0", "1": "class1", "2": "class2"}
    relu_config = json.loads((Path(result["relu_dir"]) / "config.json").read_text())
    assert relu_config["hidden_act"] == "relu"  # the GELU model's direct swap
    assert result["substitution"]["before"] == result["final_score"]


def test_run_clm_trains_resumes_exactly_and_reports_exact_perplexity(tmp_path):
    args = ["--config_overrides", "n_layer=2,n_embd=32,n_head=2", "--corpus", "embedded", "--max_train_tokens", "6000",
            "--block_size", "32", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
            "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "steps", "--eval_steps", "4",
            "--logging_steps", "2", "--report_to", "none", "--disable_tqdm", "true", "--learning_rate", "2e-3",
            "--kgelu_anneal_start", "0.25", "--dataloader_pin_memory", "false"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_script("run_clm.py", *args, "--output_dir", str(straight))
    first = json.loads((straight / "results.json").read_text())
    # the perplexity the Trainer logs (summed NLL over all tokens) equals evaluate_model's at the end
    assert first["eval_history"][-1][1] == pytest.approx(first["final_score"], rel=1e-4)
    assert (straight / "tokenizer.json").exists()

    # resume from the step-4 checkpoint (after the switch at step 2) in a fresh folder, to step 8
    import shutil

    shutil.copytree(straight / "checkpoint-4", resumed / "checkpoint-4")
    run_script("run_clm.py", *args, "--output_dir", str(resumed), "--resume_from_checkpoint", "last")
    second = json.loads((resumed / "results.json").read_text())
    assert second["lambda_learned"] == first["lambda_learned"]
    assert second["lambda_final"] == first["lambda_final"]
    assert second["final_score"] == pytest.approx(first["final_score"], rel=1e-5)


def test_run_tabular_pushes_only_the_relu_model_and_never_writes_the_token(tmp_path):
    hub = HubEmulator(tmp_path / "hub").start()
    try:
        out = tmp_path / "mlp"
        run_script("run_tabular.py", "--dataset", "adult", "--max_train_samples", "200", "--max_eval_samples", "100",
                   "--hidden_size", "8", "--num_hidden_layers", "2", "--num_train_epochs", "1", "--output_dir", str(out),
                   "--push_to_hub", "--hub_model_id", "alice/mlp-relu", "--hub_token", hub.token, *COMMON,
                   env=_env(HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.url))
        config = json.loads(hub.file("alice/mlp-relu", "config.json"))
        assert config["hidden_act"] == "relu" and config["model_type"] == "kgelu_mlp"
        card = hub.file("alice/mlp-relu", "README.md").decode()
        assert 'from_pretrained("alice/mlp-relu", trust_remote_code=True)' in card
        assert len(hub.repos) == 1  # the λ-GELU checkpoints were not pushed anywhere
        result = json.loads((out / "results.json").read_text())
        assert result["hub_url"].endswith("/alice/mlp-relu")
        leaked = [p for p in out.rglob("*") if p.is_file() and hub.token.encode() in p.read_bytes()]
        assert leaked == []  # not in training_args.bin, report.md, results.json or the card
    finally:
        hub.stop()
