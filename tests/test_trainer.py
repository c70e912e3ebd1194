"""KGeluTrainer on real short runs: arguments, optimizer groups, the anneal schedule, logging."""

import json
import logging
import math

import pytest
import torch
from trainer_helpers import (
    ThetaWatch,
    digits,
    lambdas,
    make_args,
    text_blocks,
    tiny_deit,
    tiny_gpt2,
)
from transformers import HfArgumentParser, Trainer, TrainingArguments

from hf_kgelu import convert_to_kgelu, target_lambda
from hf_kgelu.cli import main as cli_main
from hf_kgelu.modeling import short_site_names, trained_sites
from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments
from hf_kgelu.training.history import read_history
from hf_kgelu.training.schedule import AnnealingSchedule, anneal_start_step

torch.set_num_threads(1)


# ---- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("kgelu_tau", 0.0),
        ("kgelu_tau", -0.1),
        ("kgelu_lr_multiplier", -1.0),
        ("kgelu_anneal_start", 1.0),
        ("kgelu_anneal_start", -0.1),
        ("kgelu_anneal_start", "soon"),
        ("kgelu_tolerance", 0.0),
        ("kgelu_tolerance", -0.01),
        ("kgelu_target_lambda", 0.5),
        ("kgelu_bound", "gate_l2"),
        ("kgelu_init", "random"),
        ("kgelu_lambda_init", 0.9),
        ("kgelu_lambda_range", [2.0, 1.5]),
        ("kgelu_reinit", "sometimes"),
        ("kgelu_log_every", 0),
    ],
)
def test_bad_argument_fails_naming_it(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        KGeluTrainingArguments(output_dir=str(tmp_path), **{name: value})


def test_arguments_from_the_command_line(tmp_path):
    parser = HfArgumentParser(KGeluTrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--kgelu_anneal_start", "none", "--kgelu_lambda_range", "1.1", "3",
         "--kgelu_tau", "0.2", "--kgelu_bound", "act_l1", "--kgelu_tolerance", "0.02", "--kgelu_init", "increasing"]
    )
    assert args.kgelu_anneal_start is None
    assert args.kgelu_lambda_range == [1.1, 3.0] and args.kgelu_tau == 0.2 and args.kgelu_init == "increasing"
    assert args.kgelu_resolved_target_lambda == pytest.approx(1 / math.sqrt(2 * 0.02))
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--kgelu_anneal_start", "0.4"])
    assert args.kgelu_anneal_start == 0.4 and args.kgelu_resolved_target_lambda == pytest.approx(target_lambda(0.005))
    with pytest.raises(ValueError, match="kgelu_tau"):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--kgelu_tau", "-1"])
    explicit = KGeluTrainingArguments(output_dir=str(tmp_path), kgelu_target_lambda=50.0, kgelu_tolerance=0.1)
    assert explicit.kgelu_resolved_target_lambda == 50.0  # explicit λ* overrides ε


def test_trainer_refuses_models_without_sites_and_plain_arguments(tmp_path):
    with pytest.raises(ValueError, match="no λ-GELU.*convert_to_kgelu"):
        KGeluTrainer(model=tiny_gpt2(activation="gelu_new"), args=make_args(tmp_path))
    with pytest.raises(TypeError, match="KGeluTrainingArguments"):
        KGeluTrainer(model=tiny_gpt2(), args=TrainingArguments(output_dir=str(tmp_path), report_to="none"))


def test_schedule_is_a_pure_function_of_the_step():
    assert anneal_start_step(0.25, 40) == 10 and anneal_start_step(0.25, 10) == 3  # 2.5 rounds up
    assert anneal_start_step(0.95, 4) == 3  # at least one annealing step
    schedule = AnnealingSchedule.from_fraction(0.5, 10, 100.0)
    start = torch.tensor([1.5, 200.0], dtype=torch.float64)
    assert torch.equal(schedule.lambda_at(5, start), start)
    assert schedule.lambda_at(7, start).tolist() == pytest.approx([1.5 + 98.5 * 0.4, 200.0 - 100.0 * 0.4])
    assert schedule.lambda_at(10, start).tolist() == [100.0, 100.0]  # exactly λ*, from above too


def test_short_site_names():
    assert short_site_names(["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]) == ["h.0", "h.1"]
    peft = [f"base_model.model.transformer.h.{i}.mlp.act.modules_to_save.default" for i in range(2)]
    assert short_site_names(peft) == ["h.0", "h.1"]
    assert short_site_names(["a.x", "b.x"]) == ["a", "b"]


# ---- optimizer groups --------------------------------------------------------------------------


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused", "sgd", "adafactor"])
def test_theta_group_has_its_own_lr_and_no_weight_decay(tmp_path, optim):
    common = dict(optim=optim, learning_rate=1e-3, weight_decay=0.1, max_steps=10, warmup_steps=2)
    model = tiny_gpt2()
    trainer = KGeluTrainer(model=model, args=make_args(tmp_path, kgelu_lr_multiplier=7.0, **common))
    optimizer = trainer.create_optimizer()
    thetas = {id(site.theta) for _, site in trained_sites(model)}
    theta_groups = [g for g in optimizer.param_groups if any(id(p) in thetas for p in g["params"])]
    assert len(theta_groups) == 1 and {id(p) for p in theta_groups[0]["params"]} == thetas
    assert theta_groups[0]["weight_decay"] == 0.0 and theta_groups[0]["lr"] == pytest.approx(7e-3)

    # Every other parameter is grouped exactly as the stock Trainer groups it.
    stock = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "stock"), report_to="none", use_cpu=True, **common))
    stock_optimizer = stock.create_optimizer()
    assert type(stock_optimizer) is type(optimizer)
    stock_groups = [({id(p) for p in g["params"]} - thetas, g["weight_decay"], g["lr"]) for g in stock_optimizer.param_groups]
    ours = [({id(p) for p in g["params"]}, g["weight_decay"], g["lr"]) for g in optimizer.param_groups if g is not theta_groups[0]]
    assert ours == stock_groups
    assert any(id(p) in thetas for g in stock_optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"])  # stock decays θ
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert not decayed & thetas

    # The LambdaLR scheduler keeps the θ/weight ratio through warmup and decay.
    scheduler = trainer.create_scheduler(num_training_steps=10, optimizer=optimizer)
    for _ in range(6):
        optimizer.step()
        scheduler.step()
        base_lr = optimizer.param_groups[0]["lr"]
        assert base_lr > 0 and theta_groups[0]["lr"] == pytest.approx(7.0 * base_lr)


# ---- real runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("optim, optim_args", [("adamw_torch", None), ("sgd", "momentum=0.9")])
def test_gpt2_learns_then_anneals_to_target(tmp_path, optim, optim_args):
    blocks = text_blocks()
    model = tiny_gpt2()
    initial = lambdas(model)
    watch = ThetaWatch()
    args = make_args(tmp_path, max_steps=40, kgelu_anneal_start=0.5, weight_decay=0.1, optim=optim, optim_args=optim_args,
                     learning_rate=3e-3 if optim == "adamw_torch" else 0.05)
    trainer = KGeluTrainer(model=model, args=args, train_dataset=blocks["train"], callbacks=[watch])
    result = trainer.train()
    S, s0, target = 40, 20, target_lambda(0.005)

    # λ learns during the first phase, every step moves θ through the optimizer
    assert all(watch.moved(step) and all(watch.trainable[step].values()) for step in range(1, s0 + 1))
    learned = watch.lam[s0]
    # (plain SGD moves λ far less than Adam: the loss is flat in λ near GELU)
    assert all(abs(learned[n].item() - initial[n].item()) > (1e-3 if optim == "adamw_torch" else 0) for n in learned)
    # from the switch on θ is frozen: no optimizer update touches a bit of it (weight decay, momentum)
    assert not any(watch.moved(step) or any(watch.trainable[step].values()) for step in range(s0 + 1, S + 1))
    # λ follows the linear schedule from the learned values and ends exactly at λ*
    schedule = AnnealingSchedule(s0, S, target)
    for step in (s0 + 1, 30, S):
        for name, lam in watch.lam[step].items():
            expected = schedule.lambda_at(step, learned[name].double())
            assert lam.double().item() == pytest.approx(expected.item(), rel=1e-6)
    final = lambdas(model)
    assert all(abs(v.item() - target) / target <= 1e-5 for v in final.values())
    assert all(site.theta.requires_grad for _, site in trained_sites(model))  # unfrozen after training

    # the model learned, the logs carry the hardness, the history file the trajectory
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0] and result.global_step == S
    logged = [e for e in trainer.state.log_history if "kgelu/lambda_mean" in e]
    assert {"kgelu/lambda/h.0", "kgelu/lambda/h.1", "kgelu/drift", "kgelu/annealing"} <= set(logged[-1])
    assert logged[0]["kgelu/annealing"] == 0.0 and logged[-1]["kgelu/annealing"] == 1.0
    assert logged[-1]["kgelu/lambda_mean"] == pytest.approx(target, rel=1e-5)
    history = read_history(tmp_path)
    assert history["anneal_start_step"] == s0 and history["max_steps"] == S
    assert history["target_lambda"] == pytest.approx(target)
    assert history["sites"] == {"h.0": "transformer.h.0.mlp.act", "h.1": "transformer.h.1.mlp.act"}
    steps = [e["step"] for e in history["steps"]]
    assert steps == sorted(steps) and steps[0] == 0 and s0 in steps and steps[-1] == S
    at_switch = next(e for e in history["steps"] if e["step"] == s0)
    assert at_switch["lambda"]["h.0"] == learned["transformer.h.0.mlp.act"].item()
    assert history["settings"]["kgelu_anneal_start"] == 0.5
    assert not list(tmp_path.glob(".hardness_history.json.*"))  # no temp file left behind


def test_deit_digits_with_gradient_accumulation_epochs_and_per_channel_sites(tmp_path):
    train, validation = digits()
    model = tiny_deit(kgelu_per_channel=True)
    watch = ThetaWatch()
    # 320 images / 16 = 20 batches per epoch, 3 batches per optimizer step: 7 steps per epoch, 3 epochs.
    args = make_args(tmp_path, num_train_epochs=3, per_device_train_batch_size=16, gradient_accumulation_steps=3,
                     learning_rate=5e-3, kgelu_anneal_start=0.4, logging_steps=2)
    trainer = KGeluTrainer(model=model, args=args, train_dataset=train, eval_dataset=validation, callbacks=[watch])
    trainer.train()
    S = trainer.state.max_steps
    assert S == 21 and trainer.state.global_step == S
    s0 = anneal_start_step(0.4, S)
    assert s0 == 8 and s0 % 7 != 0  # the switch falls mid-epoch
    assert sorted(watch.before) == list(range(1, S + 1))  # one optimizer step per accumulation group
    assert all(watch.moved(step) for step in range(1, s0 + 1))
    assert not any(watch.moved(step) for step in range(s0 + 1, S + 1))
    target = target_lambda(0.005)
    for name, lam in lambdas(model).items():
        assert lam.shape == (64,)
        assert torch.allclose(lam.double(), torch.full((64,), target, dtype=torch.float64), rtol=1e-5, atol=0)
    learned = watch.lam[s0]
    assert all(lam.std().item() > 0 for lam in learned.values())  # channels learned different λ

    logged = [e for e in trainer.state.log_history if "kgelu/lambda_mean" in e]
    keys = {k for k in logged[0] if k.startswith("kgelu/lambda/")}
    assert keys == {f"kgelu/lambda/{site}/{stat}" for site in ("layers.0", "layers.1") for stat in ("mean", "min", "max")}
    history = read_history(tmp_path)
    assert history["anneal_start_step"] == s0 and history["per_channel"] == {"layers.0": True, "layers.1": True}
    switch_entry = next(e for e in history["steps"] if e["step"] == s0)
    assert switch_entry["lambda_min"]["layers.0"] < switch_entry["lambda_max"]["layers.0"]
    assert [round(e["epoch"]) for e in history["epochs"]] == [1, 2, 3]

    report = trainer.evaluate_substitution()
    assert report.metric == "accuracy" and report.kgelu_before > 0.2  # learned something on digits in 21 steps
    assert abs(report.kgelu_after - report.kgelu_before) <= 0.03  # λ* ≈ 160 is ReLU to within a few images
    assert all(isinstance(site, torch.nn.Module) for _, site in trained_sites(model))  # trained model untouched


def test_site_above_target_at_switch_warns_and_still_ends_at_target(tmp_path, caplog):
    model = tiny_gpt2()
    watch = ThetaWatch()
    args = make_args(tmp_path, max_steps=12, kgelu_anneal_start=0.25, kgelu_lambda_init=5.0, kgelu_target_lambda=3.0,
                     kgelu_lr_multiplier=0.0)
    trainer = KGeluTrainer(model=model, args=args, train_dataset=text_blocks()["train"], callbacks=[watch])
    assert all(v.item() == pytest.approx(5.0, rel=1e-6) for v in lambdas(model).values())  # init applied (θ untouched)
    with caplog.at_level(logging.WARNING, logger="hf_kgelu.training"):
        trainer.train()
    warnings = [r.getMessage() for r in caplog.records if "above the annealing target" in r.getMessage()]
    assert len(warnings) == 1 and "h.0" in warnings[0] and "h.1" in warnings[0]
    trajectory = [watch.lam[s]["transformer.h.0.mlp.act"].item() for s in range(3, 13)]
    assert all(a > b for a, b in zip(trajectory, trajectory[1:]))  # annealed downwards
    assert all(abs(v.item() - 3.0) <= 3e-5 for v in lambdas(model).values())


def test_learning_without_annealing(tmp_path):
    model = tiny_gpt2()
    watch = ThetaWatch()
    args = make_args(tmp_path, max_steps=8, kgelu_anneal_start="none", kgelu_log_every=3, logging_steps=100)
    trainer = KGeluTrainer(model=model, args=args, train_dataset=text_blocks()["train"], callbacks=[watch])
    trainer.train()
    assert all(watch.moved(step) for step in range(1, 9))
    history = read_history(tmp_path)
    assert history["anneal_start_step"] is None and {e["phase"] for e in history["steps"]} == {"learn"}
    assert [e["step"] for e in history["steps"]] == [0, 3, 6, 8]  # every kgelu_log_every steps, and the end
    assert [e["step"] for e in trainer.state.log_history if "kgelu/lambda_mean" in e] == [3, 6]
    assert history["steps"][-1]["lambda"]["h.0"] == lambdas(model)["transformer.h.0.mlp.act"].item()


def test_converted_gelu_model_and_hardness_init_policy(tmp_path):
    converted = convert_to_kgelu(tiny_gpt2(activation="gelu_new"))
    args = make_args(tmp_path, max_steps=6, kgelu_init="increasing", kgelu_lambda_range=[1.2, 2.0], kgelu_tau=0.2)
    trainer = KGeluTrainer(model=converted, args=args, train_dataset=text_blocks()["train"])
    profile = [v.item() for v in lambdas(converted).values()]
    assert profile == pytest.approx([1.2, 2.0], rel=1e-6)  # untouched θ: the init is applied
    assert converted.config.kgelu_tau == 0.2 and converted.config.kgelu_init == "increasing"
    assert all(site.tau == 0.2 for _, site in trained_sites(converted))
    trainer.train()
    assert all(abs(v.item() - target_lambda(0.005)) <= 1e-5 * target_lambda(0.005) for v in lambdas(converted).values())

    # A model whose θ were trained keeps them under "auto", and is re-initialised under "always".
    trained = tiny_gpt2()
    for _, site in trained_sites(trained):
        site.set_lambda(1.7)
    KGeluTrainer(model=trained, args=make_args(tmp_path, kgelu_init="uniform", kgelu_lambda_init=1.3))
    assert [v.item() for v in lambdas(trained).values()] == pytest.approx([1.7, 1.7], rel=1e-6)
    KGeluTrainer(model=trained, args=make_args(tmp_path, kgelu_lambda_init=1.3, kgelu_reinit="always"))
    assert [v.item() for v in lambdas(trained).values()] == pytest.approx([1.3, 1.3], rel=1e-6)
    # τ changes keep λ
    KGeluTrainer(model=trained, args=make_args(tmp_path, kgelu_tau=0.05))
    assert [v.item() for v in lambdas(trained).values()] == pytest.approx([1.3, 1.3], rel=1e-6)


def test_plot_command_writes_a_png(tmp_path, capsys):
    args = make_args(tmp_path, max_steps=8, kgelu_anneal_start=0.5, logging_steps=1)
    KGeluTrainer(model=tiny_gpt2(), args=args, train_dataset=text_blocks()["train"]).train()
    assert cli_main(["plot", str(tmp_path), "-o", str(tmp_path / "lam.png")]) == 0
    png = tmp_path / "lam.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert str(png) in capsys.readouterr().out
    assert cli_main(["plot", str(tmp_path / "missing")]) == 2
    history = json.loads((tmp_path / "hardness_history.json").read_text())
    assert len(history["steps"]) == 9  # steps 0..8, one per logging step


def test_load_best_model_at_end_is_what_substitution_evaluates(tmp_path, caplog):
    blocks = text_blocks()
    model = tiny_gpt2()
    args = make_args(tmp_path, max_steps=12, kgelu_anneal_start=0.25, eval_strategy="steps", eval_steps=4,
                     save_strategy="steps", save_steps=4, load_best_model_at_end=True, metric_for_best_model="eval_loss",
                     greater_is_better=True)  # "best" = highest loss: an early, mid-anneal checkpoint
    trainer = KGeluTrainer(model=model, args=args, train_dataset=blocks["train"], eval_dataset=blocks["validation"])
    with caplog.at_level(logging.WARNING, logger="hf_kgelu.training"):
        trainer.train()
    best = trainer.state.best_model_checkpoint
    from safetensors.torch import load_file

    saved = load_file(f"{best}/model.safetensors")
    for name, site in trained_sites(trainer.model):
        assert torch.equal(site.theta.detach(), saved[f"{name}.theta"])  # the trainer's model is the best one
    assert not best.endswith("checkpoint-12")
    assert any("not at the annealing target" in r.getMessage() for r in caplog.records)
    from hf_kgelu.metrics import evaluate_model

    report = trainer.evaluate_substitution()
    assert report.kgelu_before == pytest.approx(evaluate_model(trainer.model, blocks["validation"])["perplexity"], rel=1e-5)


def test_ddp_unused_parameter_detection_is_kept_on_when_annealing_under_checkpointing(tmp_path):
    # With θ inside DDP (kgelu_theta_sync="engine"), verified on 2 GPUs (tests/test_trainer_gpu.py): without
    # it DDP fails once θ stops getting gradients. θ outside DDP (the default) leaves DDP nothing to wait for.
    def chosen(**overrides):
        return KGeluTrainer(model=tiny_gpt2(), args=make_args(tmp_path, **overrides)).args.ddp_find_unused_parameters

    engine = dict(kgelu_theta_sync="engine")
    assert chosen(gradient_checkpointing=True, **engine) is True
    assert chosen(gradient_checkpointing=True, ddp_find_unused_parameters=False, **engine) is False  # the user's choice
    assert chosen(gradient_checkpointing=True, kgelu_anneal_start="none", **engine) is None  # θ never freezes
    assert chosen(**engine) is None  # the Trainer's own default (find unused) stays in charge
    assert chosen(gradient_checkpointing=True) is None  # θ outside DDP: no unused parameter to detect
