"""Converting a pretrained GELU model to ReLU: the recipes, distillation, the budget, `hf-kgelu convert`."""

import json

import pytest
import torch
from torch import nn
from trainer_helpers import text_blocks, tiny_gpt2
from transformers import (
    BertConfig,
    BertModel,
    GPT2LMHeadModel,
    Trainer,
    TrainingArguments,
)

from hf_kgelu import target_lambda
from hf_kgelu.cli import main as cli_main
from hf_kgelu.conversion import (
    ConversionConfig,
    convert_gelu_to_relu,
    steps_from_budget,
)
from hf_kgelu.conversion.config import EMBEDDING_TASK
from hf_kgelu.conversion.distill import distillation_loss
from hf_kgelu.metrics import embedding_cosine, evaluate_model, mean_pooled
from hf_kgelu.modeling import find_sites, gelu_module_classes

torch.set_num_threads(1)


def _activations(model):
    return {type(m).__name__ for m in model.modules() if isinstance(m, (nn.ReLU, *gelu_module_classes()))} | (
        {"KGELU"} if find_sites(model) else set()
    )


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny GELU GPT-2 trained for 40 steps on real text (bytes), saved with its trainer state."""
    folder = tmp_path_factory.mktemp("pretrained")
    model = tiny_gpt2(activation="gelu_new")
    args = TrainingArguments(output_dir=str(folder), max_steps=40, learning_rate=3e-3, per_device_train_batch_size=8,
                             report_to="none", disable_tqdm=True, use_cpu=True, save_strategy="no", seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=text_blocks()["train"])
    trainer.train()
    trainer.save_model(str(folder))
    trainer.state.save_to_json(str(folder / "trainer_state.json"))
    return model.eval(), folder


def test_steps_from_budget(tmp_path):
    assert steps_from_budget("200", None) == 200 and steps_from_budget(7, None) == 7
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 1000}))
    assert steps_from_budget("0.03", tmp_path) == 30 and steps_from_budget("3%", tmp_path) == 30 and steps_from_budget("0.0001", tmp_path) == 1
    with pytest.raises(ValueError, match="trainer_state.json"):
        steps_from_budget("0.03", tmp_path / "elsewhere")
    for bad in ("soon", "-1", "2.5"):
        with pytest.raises(ValueError, match="--budget"):
            steps_from_budget(bad, tmp_path)


def test_distillation_loss_is_kl_and_cosine():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    out = type("Out", (), {"logits": logits})
    other = type("Out", (), {"logits": torch.randn(2, 5, 7)})
    inputs = {"labels": torch.tensor([[1, 2, 3, -100, -100], [1, 2, 3, 4, 5]])}
    assert distillation_loss(out, out, inputs, "causal_lm").item() == pytest.approx(0.0, abs=1e-7)
    # KL(teacher ‖ student) over the 2 + 4 scored next-token positions
    t, s = other.logits[..., :-1, :].log_softmax(-1), logits[..., :-1, :].log_softmax(-1)
    kl = (t.exp() * (t - s)).sum(-1)
    keep = inputs["labels"][..., 1:] != -100
    assert distillation_loss(out, other, inputs, "causal_lm").item() == pytest.approx(kl[keep].mean().item(), rel=1e-6)
    hidden = torch.randn(3, 4, 6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert torch.allclose(mean_pooled(hidden, mask)[0], hidden[0, :2].mean(0))
    a, b = type("O", (), {"last_hidden_state": hidden}), type("O", (), {"last_hidden_state": 2 * hidden})
    assert distillation_loss(a, b, {"attention_mask": mask}, EMBEDDING_TASK).item() == pytest.approx(0.0, abs=1e-6)  # same direction


@pytest.mark.parametrize("method, distill", [("anneal", True), ("anneal", False), ("swap_finetune", False)])
def test_recipes_give_a_relu_model_closer_to_the_original_than_the_direct_swap(tmp_path, pretrained, method, distill):
    gelu, _ = pretrained
    blocks = text_blocks()
    before = {k: v.clone() for k, v in gelu.state_dict().items()}
    swap = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=1, method="swap"))
    result = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=12, method=method, distill=distill, learning_rate=1e-3, batch_size=8), output_dir=tmp_path)
    assert all(torch.equal(gelu.state_dict()[k], v) for k, v in before.items())  # the original is untouched
    assert _activations(result.model) == {"ReLU"} and _activations(swap.model) == {"ReLU"}
    assert result.model.config.activation_function == "relu" and not hasattr(result.model.config, "kgelu_tau")
    assert len(result.report.sites) == 2 and result.steps == 12
    if method == "anneal":  # the λ-GELU was annealed to λ* ≈ 160 before the swap
        assert all(site.lam == pytest.approx(target_lambda(0.005), rel=1e-5) for site in result.report.sites)
        assert result.settings["anneal_shape"] == "geometric"
    ppl = {name: evaluate_model(model, blocks["validation"])["perplexity"]
           for name, model in (("gelu", gelu), ("swap", swap.model), ("converted", result.model))}
    assert ppl["swap"] > ppl["gelu"]  # the direct swap costs something on this model ...
    assert ppl["converted"] < ppl["swap"]  # ... that the short fine-tune wins back


def test_embedding_model_converts_by_distillation(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=97,
                        max_position_embeddings=32, hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder = BertModel(config).eval()
    with torch.no_grad():  # a random encoder's MLPs barely matter: make them, so the swap costs something
        for layer in encoder.encoder.layer:
            layer.output.dense.weight.mul_(20)
    g = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(1, 97, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long)}
            for _ in range(64)]
    with pytest.raises(ValueError, match="distill=True"):
        convert_gelu_to_relu(encoder, rows, ConversionConfig(steps=4, distill=False))
    swap = convert_gelu_to_relu(encoder, rows, ConversionConfig(steps=1, method="swap"))
    result = convert_gelu_to_relu(encoder, rows, ConversionConfig(steps=20, learning_rate=1e-3, batch_size=16), output_dir=tmp_path)
    assert _activations(result.model) == {"ReLU"}
    held_out = [{k: torch.stack([r[k] for r in rows[i : i + 16]]) for k in rows[0]} for i in range(0, 64, 16)]
    assert embedding_cosine(swap.model, encoder, held_out) < 0.97 < 0.99 < embedding_cosine(result.model, encoder, held_out)


def test_convert_command(tmp_path, pretrained, capsys):
    _, checkpoint = pretrained
    assert cli_main(["convert", str(checkpoint), "--budget", "soon", "--data", str(tmp_path), "--output-dir", str(tmp_path / "x")]) == 2
    assert "--budget" in capsys.readouterr().err
    data = tmp_path / "blocks"
    text_blocks().save_to_disk(str(data))
    out = tmp_path / "relu"
    code = cli_main(["convert", str(checkpoint), "--budget", "25%", "--data", str(data), "--output-dir", str(out),
                     "--batch-size", "8", "--learning-rate", "1e-3", "--eval-data", str(data), "--eval-split", "validation"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "for 10 steps" in printed and "perplexity: GELU" in printed  # 25 % of the 40 pretraining steps
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "relu" and not any(k.startswith("kgelu_") for k in config)
    card = (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file() and "`hf-kgelu convert`" in card and "least squares" in card
    assert "without any training" not in card and "direct-swap baseline" not in card  # the card says what was done
    assert "| this model (ReLU) |" in card
    reloaded = GPT2LMHeadModel.from_pretrained(str(out))
    assert _activations(reloaded) == {"ReLU"}
    assert not list(tmp_path.glob("relu.*"))  # no trainer folder left beside the output
    assert cli_main(["convert", str(checkpoint), "--budget", "3", "--data", str(data), "--output-dir", str(out)]) == 2  # not empty


def test_geometric_schedule_moves_log_lambda_linearly(tmp_path):
    from hf_kgelu.training import KGeluTrainingArguments
    from hf_kgelu.training.schedule import AnnealingSchedule

    schedule = AnnealingSchedule(0, 10, 160.0, "geometric")
    values = [schedule.lambda_at(step, 1.0) for step in range(11)]
    ratios = [b / a for a, b in zip(values, values[1:])]
    assert values[0] == 1.0 and values[10] == 160.0 and all(r == pytest.approx(160 ** 0.1) for r in ratios)
    start = torch.tensor([1.0, 4.0], dtype=torch.float64)
    assert schedule.lambda_at(5, start, torch.tensor([16.0, 16.0], dtype=torch.float64)).tolist() == pytest.approx([4.0, 8.0])
    linear = AnnealingSchedule(0, 10, 160.0)
    assert linear.lambda_at(1, 1.0) == pytest.approx(16.9) and schedule.lambda_at(1, 1.0) < 2  # why conversions use it
    with pytest.raises(ValueError, match="shape"):
        AnnealingSchedule(0, 10, 160.0, "cosine")
    with pytest.raises(ValueError, match="kgelu_anneal_shape"):
        KGeluTrainingArguments(output_dir=str(tmp_path), kgelu_anneal_shape="cosine")


def _site_residuals(gelu, relu, batch):
    """Per MLP: ‖reader(GELU(x)) − reader'(ReLU(x))‖ on the inputs x of that site in the GELU model."""
    from hf_kgelu.analysis import activation_modules
    from hf_kgelu.conversion.readout import _linear_consumers

    sites = activation_modules(gelu)
    readers = _linear_consumers(gelu, sites, batch)
    relu_readers = _linear_consumers(relu, activation_modules(relu), batch)  # same module names after the swap
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda m, i, n=n: inputs.__setitem__(n, i[0].detach())) for n, m in sites]
    with torch.no_grad():
        gelu(**batch)
        for h in handles:
            h.remove()
        return {n: (readers[n](m(inputs[n])) - relu_readers[n](torch.relu(inputs[n]))).norm().item()
                for n, m in sites if n in readers}  # (BERT's MLM-head activation feeds a LayerNorm: no readout)


@pytest.mark.parametrize("arch", ["gpt2", "deit", "bert"])
def test_readout_fit_reproduces_each_gelu_layer_better_than_the_swap(arch):
    from tiny_models import tiny_inputs, tiny_model

    from hf_kgelu.conversion import swap_with_readout_correction

    gelu = tiny_model(arch, activation="gelu")
    calibration = [tiny_inputs(arch, batch=16, seed=s) for s in range(4)]
    swapped = convert_gelu_to_relu(gelu, None, ConversionConfig(steps=1, method="swap")).model
    fitted, report = swap_with_readout_correction(gelu, calibration, ridge=1e-6)
    bias_only, _ = swap_with_readout_correction(gelu, calibration, mode="bias")
    assert _activations(fitted) == {"ReLU"} and len(report.sites) == len(_site_residuals(gelu, fitted, calibration[0])) + (arch == "bert")
    first = next(iter(_site_residuals(gelu, fitted, calibration[0])))  # the first site sees the GELU model's own inputs
    fit, swap, bias = (_site_residuals(gelu, m, calibration[0])[first] for m in (fitted, swapped, bias_only))
    assert fit < bias < swap  # least squares ≤ mean correction ≤ nothing, on the data it was fitted on
    held_out = tiny_inputs(arch, batch=16, seed=99)  # and the last hidden state moves towards GELU's on new inputs

    def last_hidden(model):
        return model(**held_out, output_hidden_states=True).hidden_states[-1]

    with torch.no_grad():
        reference = last_hidden(gelu)
        assert (last_hidden(fitted) - reference).norm() < (last_hidden(swapped) - reference).norm()
    with pytest.raises(ValueError, match="mode"):
        swap_with_readout_correction(gelu, calibration, mode="exact")


def test_readout_recipe_beats_the_swap_on_a_trained_model(tmp_path, pretrained):
    gelu, _ = pretrained
    blocks = text_blocks()
    swap = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=1, method="swap"))
    fitted = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=0, method="readout", batch_size=8))
    tuned = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=6, batch_size=8), output_dir=tmp_path, fitted=(fitted.model, fitted.report))  # the default recipe, reusing the fit
    assert tuned.method == "readout_finetune" and not tuned.distill and _activations(tuned.model) == {"ReLU"}
    ppl = {name: evaluate_model(m, blocks["validation"])["perplexity"]
           for name, m in (("gelu", gelu), ("swap", swap.model), ("fit", fitted.model), ("tuned", tuned.model))}
    assert ppl["fit"] < ppl["swap"] and ppl["tuned"] < ppl["swap"]
    assert abs(ppl["fit"] - ppl["gelu"]) < abs(ppl["swap"] - ppl["gelu"]) / 2  # most of the gap closed without training
