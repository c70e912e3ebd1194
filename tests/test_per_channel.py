"""Per-channel hardness end to end: trainer argument, logging summaries, history, plot bands, relu_ize, card."""

import pytest
import torch
from trainer_helpers import ThetaWatch, make_args, text_blocks, tiny_gpt2
from transformers import GPT2LMHeadModel

from hf_kgelu import target_lambda
from hf_kgelu.modeling import trained_sites
from hf_kgelu.publishing import render_model_card
from hf_kgelu.relu import relu_ize
from hf_kgelu.training import KGeluTrainer
from hf_kgelu.training.history import read_history

torch.set_num_threads(1)


def test_per_channel_run_from_a_layerwise_model(tmp_path, monkeypatch):
    model = tiny_gpt2()  # built with one λ per site
    assert all(not site.per_channel for _, site in trained_sites(model))
    watch = ThetaWatch()
    args = make_args(tmp_path, max_steps=10, kgelu_anneal_start=0.5, kgelu_per_channel=True, logging_steps=1,
                     kgelu_lr_multiplier=30.0)
    trainer = KGeluTrainer(model=model, args=args, train_dataset=text_blocks()["train"], callbacks=[watch])
    assert all(site.theta.shape == (128,) for _, site in trained_sites(model)) and model.config.kgelu_per_channel
    trainer.train()

    learned = watch.lam[5]
    assert all(lam.shape == (128,) and lam.std() > 0 for lam in learned.values())  # channels learned apart
    assert all(torch.allclose(lam.double(), torch.full((128,), target_lambda(0.005), dtype=torch.float64), rtol=1e-5, atol=0)
               for lam in (site.lam.detach() for _, site in trained_sites(model)))
    # logging: three summaries per site, never one scalar per channel
    logged = [e for e in trainer.state.log_history if "kgelu/lambda_mean" in e]
    keys = {k for e in logged for k in e if k.startswith("kgelu/lambda/")}
    assert keys == {f"kgelu/lambda/h.{i}/{s}" for i in (0, 1) for s in ("mean", "min", "max")}
    at_switch = next(e for e in logged if e["step"] == 5)
    assert at_switch["kgelu/lambda/h.0/min"] < at_switch["kgelu/lambda/h.0/mean"] < at_switch["kgelu/lambda/h.0/max"]
    assert at_switch["kgelu/lambda/h.0/mean"] == pytest.approx(learned["transformer.h.0.mlp.act"].double().mean().item())

    history = read_history(tmp_path)
    assert history["per_channel"] == {"h.0": True, "h.1": True}
    switch = next(e for e in history["steps"] if e["step"] == 5)
    assert switch["lambda_min"]["h.0"] == learned["transformer.h.0.mlp.act"].min().item()
    assert switch["lambda_max"]["h.0"] == learned["transformer.h.0.mlp.act"].max().item()

    # the plot shades each per-channel site's min–max band
    import matplotlib.axes

    bands = []
    original = matplotlib.axes.Axes.fill_between
    monkeypatch.setattr(matplotlib.axes.Axes, "fill_between", lambda self, *a, **k: bands.append(a) or original(self, *a, **k))
    from hf_kgelu.plotting import plot_hardness

    png = plot_hardness(tmp_path, tmp_path / "lam.png")
    assert png.stat().st_size > 10_000 and len(bands) == 2 * 2  # 2 sites × (overview + learned-phase panel)

    # relu_ize reports the channel spread, the card says "per channel", the checkpoints keep the shapes
    model.save_pretrained(tmp_path / "kgelu")
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "kgelu")
    assert all(torch.equal(a.theta, b.theta) for (_, a), (_, b) in zip(trained_sites(model), trained_sites(reloaded)))
    relu, report = relu_ize(model)
    assert [s.num_channels for s in report.sites] == [128, 128]
    assert all(s.lam_min == pytest.approx(target_lambda(0.005), rel=1e-5) for s in report.sites)
    assert report.kgelu_settings.get("kgelu_per_channel") is True
    card = render_model_card(report, model_name="tiny")
    assert "per channel" in card


def test_per_channel_argument_refuses_peft_models(tmp_path):
    from peft import LoraConfig

    from hf_kgelu.modeling.peft import prepare_peft_model

    peft_model = prepare_peft_model(tiny_gpt2(), LoraConfig(r=2, target_modules=["c_attn"]))
    with pytest.raises(ValueError, match="kgelu_per_channel.*PEFT"):
        KGeluTrainer(model=peft_model, args=make_args(tmp_path, max_steps=2, kgelu_per_channel=True))
