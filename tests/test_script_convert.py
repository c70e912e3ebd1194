"""`--convert_from_gelu` of `scripts/run_clm.py` and `scripts/run_image_classification.py`: a tiny
GELU checkpoint converted in a real subprocess into the stock-transformers ReLU folder + card."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from hf_kgelu.data import gpt2_tokenizer
from hf_kgelu.modeling import gelu_module_classes
from hf_kgelu.script_arguments import conversion_steps

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--per_device_eval_batch_size", "64", "--report_to", "none", "--disable_tqdm", "true", "--learning_rate", "1e-3",
          "--dataloader_pin_memory", "false", "--use_cpu", "true"]


def _convert(script, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, *COMMON], capture_output=True, text=True,
                          env=env, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def _check_relu_folder(folder: Path, key: str, loader, script: str, method: str) -> nn.Module:
    config = json.loads((folder / "config.json").read_text())
    assert config[key] == "relu" and not any(k.startswith("kgelu_") for k in config)
    card = (folder / "README.md").read_text()
    assert f"`{script} --convert_from_gelu {method}`" in card and "| this model (ReLU) |" in card
    model = loader.from_pretrained(str(folder))  # stock transformers: the config names ReLU
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    assert not any(isinstance(m, gelu_module_classes()) for m in model.modules())
    return model


def test_conversion_steps_follow_the_training_budget():
    class Args:
        max_steps, per_device_train_batch_size, gradient_accumulation_steps, num_train_epochs = -1, 16, 1, 2.0

    assert conversion_steps(Args, 33) == 6  # 3 batches per epoch, 2 epochs
    Args.gradient_accumulation_steps = 2
    assert conversion_steps(Args, 33) == 2
    Args.max_steps = 7
    assert conversion_steps(Args, 33) == 7


def test_run_clm_converts_a_gelu_checkpoint(tmp_path):
    checkpoint = tmp_path / "gelu-gpt2"
    tokenizer = gpt2_tokenizer()
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64,
                               activation_function="gelu_new")).save_pretrained(str(checkpoint))
    tokenizer.save_pretrained(str(checkpoint))
    out = tmp_path / "run"
    printed = _convert("run_clm.py", "--model_name_or_path", str(checkpoint), "--convert_from_gelu", "readout_finetune",
                       "--corpus", "embedded", "--max_chars", "20000", "--block_size", "32", "--max_train_samples", "64",
                       "--max_eval_samples", "8", "--per_device_train_batch_size", "8", "--max_steps", "3",
                       "--convert_calibration_batches", "2", "--output_dir", str(out))
    assert "with readout_finetune for 3 steps" in printed and "perplexity: GELU" in printed
    model = _check_relu_folder(out / "relu_model", "activation_function", AutoModelForCausalLM, "run_clm.py", "readout_finetune")
    original = GPT2LMHeadModel.from_pretrained(str(checkpoint))
    # The readout fit and the fine-tune changed the weights: this is not a bare swap.
    assert not torch.equal(model.transformer.h[0].mlp.c_proj.weight, original.transformer.h[0].mlp.c_proj.weight)
    assert (out / "relu_model" / "tokenizer_config.json").is_file()


def test_run_image_classification_converts_a_gelu_checkpoint(tmp_path):
    checkpoint = tmp_path / "gelu-deit"
    torch.manual_seed(0)
    config = DeiTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=10, hidden_act="gelu")
    DeiTForImageClassification(config).save_pretrained(str(checkpoint))
    out = tmp_path / "run"
    relu_dir = tmp_path / "relu"
    printed = _convert("run_image_classification.py", "--model_name_or_path", str(checkpoint), "--convert_from_gelu",
                       "swap_finetune", "--dataset", "digits", "--max_train_samples", "64", "--max_eval_samples", "64",
                       "--per_device_train_batch_size", "16", "--num_train_epochs", "1", "--output_dir", str(out),
                       "--relu_output_dir", str(relu_dir))
    assert "with swap_finetune for 4 steps" in printed and "accuracy: GELU" in printed  # 64 images / 16, one epoch
    _check_relu_folder(relu_dir, "hidden_act", AutoModelForImageClassification, "run_image_classification.py", "swap_finetune")
    assert (relu_dir / "preprocessor_config.json").is_file()
