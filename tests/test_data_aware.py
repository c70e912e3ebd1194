"""Data-aware annealing targets: the bisection, the bounded sampler, and kgelu_bound="data" in the trainer."""

import json
import math

import pytest
import torch
from trainer_helpers import (
    StopAt,
    ThetaWatch,
    lambdas,
    make_args,
    text_blocks,
    tiny_gpt2,
)

from hf_kgelu import target_lambda
from hf_kgelu.modeling import find_sites
from hf_kgelu.ops import kgelu
from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments
from hf_kgelu.training.data_aware import (
    PreActivationSampler,
    data_aware_targets,
    output_scale,
    smallest_lambda,
    swap_error,
)
from hf_kgelu.training.history import read_history
from hf_kgelu.training.schedule import AnnealingSchedule

torch.set_num_threads(1)


def gaussian_relative_target(eps: float, sigma: float) -> float:
    """For x ~ N(0, σ²): E|x|Φ(−λ|x|) / E|ReLU(x)| = 1 − λσ/√(1 + λ²σ²) exactly, so λ = (1−ε)/(σ√(1−(1−ε)²))."""
    return (1 - eps) / (sigma * math.sqrt(1 - (1 - eps) ** 2))


# ---- the math ----------------------------------------------------------------------------------


def test_swap_error_is_the_mean_distance_to_relu():
    x = torch.randn(5000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for lam in (1.0, 3.0, 40.0):
        direct = (kgelu(x, torch.tensor([lam], dtype=torch.float64)) - torch.relu(x)).abs().mean()
        assert swap_error(x, lam).item() == pytest.approx(direct.item(), rel=1e-10)


@pytest.mark.parametrize("eps, relative", [(0.005, True), (0.05, True), (0.002, False)])
def test_bisection_matches_brute_force_and_the_gaussian_closed_form(eps, relative):
    sigma = 1.7
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigma
    lam = smallest_lambda(x, eps, relative=relative)
    budget = eps * (output_scale(x[:, None]).item() if relative else 1.0)
    # brute force on the same sample: the first λ of a fine log grid that meets the budget
    grid = torch.logspace(0, 4, 40_001, dtype=torch.float64)
    errors = torch.stack([swap_error(x[:, None], g) for g in grid[::100]]).squeeze(-1)
    coarse = int((errors <= budget).nonzero()[0])
    fine = grid[max(0, coarse * 100 - 100) : coarse * 100 + 1]
    brute = next(g.item() for g in fine if swap_error(x[:, None], g).item() <= budget)
    step = 10 ** (4 / 40_000)
    assert brute / step <= lam <= brute * (1 + 1e-12)
    assert swap_error(x[:, None], lam).item() <= budget * (1 + 1e-9)  # meets ε ...
    assert swap_error(x[:, None], lam / 1.001).item() > budget  # ... and is the smallest λ that does
    if relative:  # and the Gaussian's exact answer, up to sampling noise
        assert lam == pytest.approx(gaussian_relative_target(eps, sigma), rel=0.02)
    # far below the distribution-free closed forms for the same ε
    assert lam < target_lambda(eps, "gate_l1") and (relative or lam <= target_lambda(eps, "act_sup"))


def test_per_channel_targets_scale_inversely_with_the_channel_width():
    sigmas = torch.tensor([0.5, 1.0, 4.0], dtype=torch.float64)
    x = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas
    lam = smallest_lambda(x, 0.01, per_channel=True)
    expected = torch.tensor([gaussian_relative_target(0.01, s.item()) for s in sigmas], dtype=torch.float64)
    assert torch.allclose(lam, expected, rtol=0.03)
    assert smallest_lambda(torch.zeros(10), 0.01) == 1.0  # nothing to approximate: GELU is exact
    assert smallest_lambda(x[:, 2], 0.9) == 1.0  # a loose tolerance that GELU already meets
    with pytest.raises(ValueError, match="tolerance"):
        smallest_lambda(x, 0.0)


def test_sampler_keeps_a_bounded_uniform_sample_per_site():
    model = tiny_gpt2(kgelu_per_channel=True).eval()
    sites = find_sites(model)
    inputs = text_blocks()["train"][:32]["input_ids"]
    with torch.no_grad(), PreActivationSampler(sites, max_values=4096, seed=0) as sampler:
        for chunk in inputs.split(8):
            model(input_ids=chunk)
    samples = sampler.samples()
    assert not any(site._forward_pre_hooks for _, site in sites)  # hooks removed on exit
    for name, site in sites:
        assert samples[name].shape == (64, 128)  # per-channel site: whole rows, at least 64 of them
        assert sampler.seen[name] == 32 * 32  # every row was offered
    # a scalar site keeps max_values single values; their mean is the stream's mean (a uniform sample)
    stream = torch.arange(100_000, dtype=torch.float32)
    site = tiny_gpt2().transformer.h[0].mlp.act
    with PreActivationSampler([("s", site)], max_values=5000, seed=3) as sampler:
        for chunk in stream.split(7000):
            site(chunk)
    kept = sampler.samples()["s"]
    assert kept.shape == (5000, 1) and len(set(kept.flatten().tolist())) == 5000
    assert kept.mean().item() == pytest.approx(stream.mean().item(), rel=0.03)
    with pytest.raises(RuntimeError, match="saw no input"):
        PreActivationSampler([("s", site)]).samples()


# ---- the trainer --------------------------------------------------------------------------------

S, ANNEAL, SWITCH = 12, 0.25, 3


def _data_run(output_dir, model=None, stop=None, resume=None, save_steps=None, **overrides):
    watch = ThetaWatch()
    settings = dict(max_steps=S, kgelu_anneal_start=ANNEAL, kgelu_bound="data", kgelu_tolerance=0.01, kgelu_data_batches=2,
                    logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)
    settings.update(overrides)
    model = model if model is not None else tiny_gpt2()
    trainer = KGeluTrainer(model=model, args=make_args(output_dir, **settings), train_dataset=text_blocks()["train"],
                           callbacks=[watch] + ([StopAt(stop)] if stop else []))
    trainer.train(resume_from_checkpoint=resume)
    return model, watch, trainer


@pytest.fixture(scope="module")
def data_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("data_run")
    model, watch, trainer = _data_run(output_dir)
    return {"model": model, "watch": watch, "trainer": trainer, "dir": output_dir}


def test_arguments_accept_the_data_bound(tmp_path):
    args = KGeluTrainingArguments(output_dir=str(tmp_path), kgelu_bound="data")
    assert args.kgelu_data_targets and args.kgelu_resolved_target_lambda is None
    explicit = KGeluTrainingArguments(output_dir=str(tmp_path), kgelu_bound="data", kgelu_target_lambda=20.0)
    assert not explicit.kgelu_data_targets and explicit.kgelu_resolved_target_lambda == 20.0
    with pytest.raises(ValueError, match="kgelu_data_batches"):
        KGeluTrainingArguments(output_dir=str(tmp_path), kgelu_bound="data", kgelu_data_batches=0)


def test_data_run_ends_at_its_per_site_targets(data_run):
    model, watch, trainer = data_run["model"], data_run["watch"], data_run["trainer"]
    targets = trainer.hardness_callback.site_targets
    assert set(targets) == {"transformer.h.0.mlp.act", "transformer.h.1.mlp.act"}
    assert all(1.0 < t < target_lambda(0.005) for t in targets.values())  # far below the closed-form λ*
    assert targets["transformer.h.0.mlp.act"] != targets["transformer.h.1.mlp.act"]
    final = lambdas(model)
    for name, target in targets.items():
        assert final[name].item() == pytest.approx(target, rel=1e-6)
    # the schedule runs linearly from the switch λ to each site's own target
    schedule = AnnealingSchedule(SWITCH, S, max(targets.values()))
    learned = watch.lam[SWITCH]
    for step in (SWITCH + 1, 8, S):
        for name, target in targets.items():
            expected = schedule.lambda_at(step, learned[name].double(), target)
            assert watch.lam[step][name].double().item() == pytest.approx(expected.item(), rel=1e-6)
    assert not any(watch.moved(step) for step in range(SWITCH + 1, S + 1))
    history = read_history(data_run["dir"])
    assert history["target_lambdas"] == {"h.0": targets["transformer.h.0.mlp.act"], "h.1": targets["transformer.h.1.mlp.act"]}
    assert history["target_lambda"] == max(targets.values()) and history["settings"]["kgelu_bound"] == "data"


def test_data_targets_are_the_bisection_on_the_switch_model(tmp_path):
    """With nothing learning (lr 0), the model at the switch is the initial one: the stored targets must be
    exactly what `data_aware_targets` picks on it from the same batches."""
    model, _, trainer = _data_run(tmp_path, learning_rate=0.0)
    stored = trainer.hardness_callback.site_targets
    fresh = tiny_gpt2()
    expected = data_aware_targets(fresh, lambda: trainer._kgelu_data_forward(fresh), 0.01, seed=0)
    assert stored == expected
    # relative ε: on the switch model's own pre-activations each target meets ε·E|ReLU(x)|, and barely
    sites = find_sites(fresh.eval())  # eval: the targets are chosen without dropout
    with torch.no_grad(), PreActivationSampler(sites) as sampler:
        trainer._kgelu_data_forward(fresh)
    for name, values in sampler.samples().items():
        budget = 0.01 * output_scale(values).item()
        assert swap_error(values, stored[name]).item() <= budget * (1 + 1e-9)
        assert swap_error(values, stored[name] / 1.001).item() > budget


def test_per_channel_sites_get_per_channel_targets(tmp_path):
    model, _, trainer = _data_run(tmp_path, model=tiny_gpt2(kgelu_per_channel=True), kgelu_data_per_channel=True, max_steps=6)
    targets = trainer.hardness_callback.site_targets
    for name, lam in lambdas(model).items():
        assert lam.shape == (128,) and isinstance(targets[name], list) and len(targets[name]) == 128
        assert torch.allclose(lam.double(), torch.tensor(targets[name], dtype=torch.float64), rtol=1e-6, atol=0)
        assert lam.std() > 0  # channels end at different λ
    logged = [e for e in trainer.state.log_history if "kgelu/lambda_mean" in e][-1]
    assert {k for k in logged if k.startswith("kgelu/lambda/")} == {
        f"kgelu/lambda/h.{i}/{stat}" for i in (0, 1) for stat in ("mean", "min", "max")
    }  # summaries, not 128 scalars per site


@pytest.mark.parametrize("stop", [8, 2])  # mid-anneal, and before the switch
def test_resume_reproduces_data_targets_and_trajectory(tmp_path, data_run, stop, monkeypatch):
    _data_run(tmp_path, stop=stop, save_steps=2)
    checkpoint = tmp_path / f"checkpoint-{stop}"
    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["KGeluHardnessCallback"]
    reference_targets = data_run["trainer"].hardness_callback.site_targets
    if stop > SWITCH:
        assert stored["attributes"]["site_targets"] == reference_targets
        # after the switch the targets come from the checkpoint, never from data again
        monkeypatch.setattr(KGeluTrainer, "_kgelu_data_forward", lambda self, model: pytest.fail("recomputed the targets"))
    model, watch, trainer = _data_run(tmp_path, resume=str(checkpoint), save_steps=2)
    assert trainer.hardness_callback.site_targets == reference_targets
    for step in range(stop + 1, S + 1):
        for name, value in data_run["watch"].lam[step].items():
            assert torch.equal(watch.lam[step][name], value), (step, name)
    for key, value in data_run["model"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_stock_trainer_with_the_data_bound_says_to_use_kgelu_trainer(tmp_path):
    from transformers import Trainer

    from hf_kgelu.training import KGeluHardnessCallback

    args = make_args(tmp_path, max_steps=4, kgelu_anneal_start=0.5, kgelu_bound="data")
    trainer = Trainer(model=tiny_gpt2(), args=args, train_dataset=text_blocks()["train"], callbacks=[KGeluHardnessCallback()])
    with pytest.raises(ValueError, match="needs KGeluTrainer"):
        trainer.train()
