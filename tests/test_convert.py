"""Converting a pretrained GELU model to ReLU: the recipes, distillation, the budget, `hf-kgelu convert`."""

import json
import os

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
    assert "returned model: kept " in printed and "on the evaluation data (" in printed  # --eval-data decided
    assert "learning rate: " not in printed and "calibration batches: 5 (chosen: " in printed  # given / chosen
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "relu" and not any(k.startswith("kgelu_") for k in config)
    card = (out / "README.md").read_text()
    assert (out / "model.safetensors").is_file() and "`hf-kgelu convert`" in card and "least squares" in card
    assert "without any training" not in card and "direct-swap baseline" not in card  # the card says what was done
    assert "| this model (ReLU) |" in card
    assert "| learning rate | 0.001 |" in card and "| returned model | kept " in card
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


# ---- defaults chosen from the checkpoint and the data; never worse than the no-training fit


def test_conversion_config_leaves_choices_to_the_conversion():
    config = ConversionConfig(steps=3)
    assert config.learning_rate is None and config.calibration_batches is None and config.keep_better
    assert config.held_out_fraction == 0.1
    for bad in (dict(learning_rate=0.0), dict(calibration_batches=0), dict(keep_better="yes"), dict(held_out_fraction=1.0),
                dict(held_out_fraction=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ConversionConfig(steps=3, **bad)


def test_recorded_learning_rate_reads_the_checkpoint_without_unpickling(tmp_path, pretrained):
    import pickle

    from hf_kgelu.conversion import choose_learning_rate, recorded_learning_rate
    from hf_kgelu.conversion.defaults import PRETRAINED_LR, RECORDED_LR_SHARE

    _, checkpoint = pretrained  # trained at 3e-3; its trainer_state.json logged no rate (40 steps < logging_steps)
    assert recorded_learning_rate(checkpoint) == (3e-3, "training_args.bin")
    chosen = choose_learning_rate(checkpoint)
    assert chosen.value == pytest.approx(RECORDED_LR_SHARE * 3e-3) and "training_args.bin" in chosen.reason
    assert str(chosen).startswith("0.0009 (chosen: 0.3 × the peak rate 0.003")
    state_only = tmp_path / "state"
    state_only.mkdir()
    (state_only / "trainer_state.json").write_text(json.dumps({"log_history": [{"learning_rate": 1e-4}, {"learning_rate": 2e-4},
                                                                               {"loss": 1.0}]}))
    assert recorded_learning_rate(state_only) == (2e-4, "trainer_state.json")
    assert recorded_learning_rate(tmp_path / "nowhere") is None and recorded_learning_rate(None) is None
    assert choose_learning_rate(tmp_path / "nowhere").value == PRETRAINED_LR == 2e-5

    class Hostile:  # a pickle that would run a command if it were loaded
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'executed'}",))

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    (hostile / "training_args.bin").write_bytes(pickle.dumps({"learning_rate": 5e-5, "payload": Hostile()}))
    assert recorded_learning_rate(hostile) == (5e-5, "training_args.bin") and not (tmp_path / "executed").exists()
    (hostile / "training_args.bin").write_bytes(b"not a pickle")
    assert recorded_learning_rate(hostile) is None


def test_defaults_are_chosen_from_the_checkpoint_and_the_data(tmp_path, pretrained):
    from hf_kgelu.conversion.defaults import ROWS_PER_UNKNOWN

    gelu, checkpoint = pretrained
    gelu = GPT2LMHeadModel.from_pretrained(str(checkpoint))  # knows the folder it came from
    train = text_blocks()["train"]
    result = convert_gelu_to_relu(gelu, train, ConversionConfig(steps=2, batch_size=8), output_dir=tmp_path)
    assert set(result.choices) == {"learning_rate", "calibration_batches"}
    assert result.settings["learning_rate"] == result.choices["learning_rate"].value == pytest.approx(9e-4)
    # rows per readout: ROWS_PER_UNKNOWN × (4·32 inputs + bias) = 1032 → 32-token blocks in batches of 8 (256 rows): 5 batches
    assert result.settings["calibration_batches"] == result.choices["calibration_batches"].value == 5
    assert f"{5 * 256} rows per readout ≥ {ROWS_PER_UNKNOWN * 129}" in result.choices["calibration_batches"].reason
    assert result.selection is not None and "18 rows held out of the 180 training rows" in result.selection.held_out
    explicit = convert_gelu_to_relu(gelu, train, ConversionConfig(steps=2, batch_size=8, learning_rate=1e-3, calibration_batches=2,
                                                                  keep_better=False), output_dir=tmp_path)
    assert not explicit.choices and explicit.selection is None and explicit.selection_note is None
    assert explicit.settings["learning_rate"] == 1e-3 and explicit.settings["calibration_batches"] == 2
    few = convert_gelu_to_relu(gelu, train.select(range(3)), ConversionConfig(method="readout", batch_size=8))
    assert few.settings["calibration_batches"] == 1 and "all 3 rows of the training data" in few.choices["calibration_batches"].reason


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_keep_better_keeps_the_readout_fit_when_the_fine_tune_hurts(tmp_path, pretrained):
    from hf_kgelu.conversion.selection import FINE_TUNED, NO_TRAINING, split_held_out

    gelu, _ = pretrained
    blocks = text_blocks()
    train, held_out, _ = split_held_out(blocks["train"], 0.1, 0)
    fit = convert_gelu_to_relu(gelu, train, ConversionConfig(method="readout", batch_size=8, calibration_batches=4))
    ruined = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=6, batch_size=8, calibration_batches=4,
                                                                          learning_rate=0.5), output_dir=tmp_path)
    choice = ruined.selection
    assert choice.kept == NO_TRAINING and choice.fine_tuned > 2 * choice.no_training and not ruined.fine_tuned
    assert _same_weights(ruined.model, fit.model)  # the very readout fit, on the rows that were not held out
    assert evaluate_model(ruined.model, held_out)["perplexity"] == pytest.approx(choice.no_training, rel=1e-6)
    helped = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=10, batch_size=8, calibration_batches=4,
                                                                          learning_rate=3e-3), output_dir=tmp_path)
    assert helped.selection.kept == FINE_TUNED and helped.fine_tuned and helped.selection.fine_tuned < helped.selection.no_training
    assert not _same_weights(helped.model, fit.model)
    assert evaluate_model(helped.model, held_out)["perplexity"] == pytest.approx(helped.selection.fine_tuned, rel=1e-6)
    # given evaluation data, that is the held-out data, and all the training rows train
    checked = convert_gelu_to_relu(gelu, blocks["train"], ConversionConfig(steps=2, batch_size=8, learning_rate=0.5),
                                   eval_dataset=blocks["validation"], output_dir=tmp_path)
    assert checked.selection.kept == NO_TRAINING and checked.selection.held_out == f"the evaluation data ({len(blocks['validation'])} rows)"


def test_keep_better_compares_other_recipes_with_the_readout_fit(tmp_path, pretrained):
    from hf_kgelu.conversion.selection import NO_TRAINING, READOUT_FIT

    gelu, _ = pretrained
    result = convert_gelu_to_relu(gelu, text_blocks()["train"], ConversionConfig(method="swap_finetune", steps=4, batch_size=8,
                                                                                 learning_rate=0.5), output_dir=tmp_path)
    assert result.selection.kept == NO_TRAINING and result.selection.baseline == READOUT_FIT
    assert _activations(result.model) == {"ReLU"} and result.settings["calibration_batches"] >= 1


def _tiny_encoder_folder(folder, sentences):
    from transformers import BertTokenizerFast

    words = sorted({word for line in sentences for word in line.lower().split() if word.isalpha()})
    vocab = folder / "vocab.txt"
    folder.mkdir()
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                        vocab_size=len(tokenizer), max_position_embeddings=64, hidden_act="gelu")
    encoder = BertModel(config)
    with torch.no_grad():  # make the MLPs matter, so the swap costs something
        for layer in encoder.encoder.layer:
            layer.output.dense.weight.mul_(20)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_convert_command_with_only_a_budget_on_an_encoder(tmp_path, capsys):
    from hf_kgelu.data import embedded_text

    sentences = [" ".join(line.split()) for line in embedded_text().splitlines() if len(line.split()) >= 6][:240]
    checkpoint, data, out = tmp_path / "encoder", tmp_path / "sentences.txt", tmp_path / "relu"
    _tiny_encoder_folder(checkpoint, sentences)
    data.write_text("\n".join(sentences) + "\n")
    code = cli_main(["convert", str(checkpoint), "--budget", "4", "--data", str(data), "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "learning rate: 2e-05 (chosen: the checkpoint records no training rate" in printed
    assert "calibration batches: " in printed and "rows per readout" in printed
    assert "returned model: kept " in printed and "24 rows held out of the 240 training rows" in printed
    card = (out / "README.md").read_text()
    assert "| learning rate | 2e-05 (chosen: " in card and "| returned model | kept " in card and "(chosen: " in card
    assert _activations(BertModel.from_pretrained(str(out))) == {"ReLU"}
    assert cli_main(["convert", str(checkpoint), "--budget", "4", "--data", str(data), "--output-dir", str(tmp_path / "x"),
                     "--held-out", "1.5"]) == 2
    assert "held_out_fraction" in capsys.readouterr().err
