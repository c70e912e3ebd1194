"""KGELU module, registration in transformers, and hardness initialisation."""

import math

import pytest
import torch
from tiny_models import ARCHS, tiny_inputs, tiny_model
from torch import nn
from transformers import activations as hf_activations

import hf_kgelu
from hf_kgelu import KGELU, hardness_profile, init_hardness
from hf_kgelu.hardness import (
    hardness_drift,
    init_lambdas,
    spearman_rho,
    target_lambda,
    tolerance_at,
)
from hf_kgelu.modeling import find_sites


def test_module_parameterisation_and_setters():
    site = KGELU(lambda_init=1.5, tau=0.2)
    assert site.theta.shape == (1,) and site.theta.dtype == torch.float32
    assert math.isclose(site.lam.item(), 1.5, rel_tol=1e-6)
    site.set_lambda(160.0)
    assert math.isclose(site.lam.item(), 160.0, rel_tol=1e-6)
    site.set_tau(0.05)
    assert site.tau == 0.05 and math.isclose(site.lam.item(), 160.0, rel_tol=1e-5)
    site.freeze()
    assert site.frozen and not site.theta.requires_grad
    site.unfreeze()
    assert site.theta.requires_grad


def test_theta_gradient_is_the_chain_rule():
    site = KGELU(lambda_init=2.0, tau=0.1)
    x = torch.randn(50, 8, dtype=torch.float32)
    site(x).sum().backward()
    theta = site.theta.detach().double()
    lam = 1 + torch.nn.functional.softplus(theta / 0.1)
    x64 = x.double()
    dlam = (x64 * x64 * torch.exp(-0.5 * (lam * x64) ** 2) / math.sqrt(2 * math.pi)).sum()
    expected = dlam * torch.sigmoid(theta / 0.1) / 0.1
    torch.testing.assert_close(site.theta.grad.double(), expected, rtol=1e-5, atol=1e-7)


def test_theta_stays_float32_when_model_is_cast():
    model = nn.Sequential(nn.Linear(4, 4), KGELU(lambda_init=1.2345678))
    before = model[1].theta.detach().clone()
    model.to(torch.bfloat16)
    assert model[0].weight.dtype == torch.bfloat16
    assert model[1].theta.dtype == torch.float32 and torch.equal(model[1].theta, before)
    out = model(torch.randn(2, 4, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    model.half()
    assert model[1].theta.dtype == torch.float32


def test_per_channel_module():
    site = KGELU(lambda_init=1.3, num_channels=6)
    assert site.per_channel and site.theta.shape == (6,)
    x = torch.randn(2, 3, 6)
    site(x).sum().backward()
    assert site.theta.grad.shape == (6,) and (site.theta.grad != 0).all()
    site.set_lambda(torch.linspace(1.1, 3.0, 6))
    torch.testing.assert_close(site.lam, torch.linspace(1.1, 3.0, 6), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tau": 0.0}, "tau"),
        ({"tau": -1.0}, "tau"),
        ({"tau": float("nan")}, "tau"),
        ({"lambda_init": 0.9}, "lambda_init"),
        ({"lambda_init": float("inf")}, "lambda_init"),
        ({"num_channels": 0}, "num_channels"),
    ],
)
def test_bad_module_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KGELU(**kwargs)


def test_set_lambda_rejects_below_one_and_non_finite():
    site = KGELU()
    for bad in (0.99, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="λ"):
            site.set_lambda(bad)


def test_registration_is_idempotent_and_leaves_other_activations_alone():
    gelu_before = type(hf_activations.ACT2FN["gelu"])
    names_before = set(hf_activations.ACT2CLS)
    hf_kgelu.modeling.register_kgelu()
    hf_kgelu.modeling.register_kgelu()
    assert set(hf_activations.ACT2CLS) == names_before
    assert type(hf_activations.ACT2FN["gelu"]) is gelu_before
    a, b = hf_activations.ACT2FN["kgelu"], hf_activations.ACT2FN["kgelu"]
    assert isinstance(a, KGELU) and a is not b


@pytest.mark.parametrize("arch", ARCHS)
def test_every_site_is_an_independent_kgelu_that_learns(arch):
    model = tiny_model(arch).train()
    sites = find_sites(model)
    expected = {"gpt2": 2, "vit": 2, "deit": 2, "bert": 3}[arch]
    assert len(sites) == expected
    assert len({id(s.theta) for _, s in sites}) == expected
    inputs = tiny_inputs(arch)
    out = model(**inputs).logits
    out.float().pow(2).mean().backward()
    for name, site in sites:
        assert site.theta.grad is not None and site.theta.grad.abs().item() > 0, name


def test_init_modes_from_config_follow_depth_order():
    model = tiny_model("bert", kgelu_init="increasing", kgelu_lambda_range=[1.1, 1.9])
    assert list(hardness_profile(model).values()) == pytest.approx([1.1, 1.5, 1.9], rel=1e-6)
    init_hardness(model, mode="decreasing", lambda_range=(1.2, 2.0))
    assert list(hardness_profile(model).values()) == pytest.approx([2.0, 1.6, 1.2], rel=1e-6)
    profile = init_hardness(model, mode="uniform", lambda_init=1.3, tau=0.05)
    assert all(v == pytest.approx(1.3, rel=1e-6) for v in profile.values())
    assert all(site.tau == 0.05 for _, site in find_sites(model))


def test_init_hardness_errors():
    with pytest.raises(ValueError, match="no λ-GELU"):
        init_hardness(tiny_model("gpt2", activation="gelu"))
    model = tiny_model("gpt2")
    with pytest.raises(ValueError, match="unknown init mode"):
        init_hardness(model, mode="sideways")
    with pytest.raises(ValueError, match="tau"):
        init_hardness(model, tau=0)
    with pytest.raises(ValueError, match="lambda_range"):
        init_hardness(model, mode="increasing", lambda_range=(2.0, 1.5))


def test_convert_gelu_model_to_kgelu():
    gelu = tiny_model("vit", activation="gelu")
    inputs = tiny_inputs("vit")
    expected = gelu(**inputs).logits
    converted = hf_kgelu.convert_to_kgelu(gelu, init="increasing", lambda_range=(1.0001, 1.0002))
    assert converted.config.hidden_act == "kgelu" and len(find_sites(converted)) == 2
    torch.testing.assert_close(converted(**inputs).logits, expected, rtol=1e-3, atol=1e-4)


def test_target_lambda_closed_forms():
    assert target_lambda(0.005) == pytest.approx(math.sqrt(2 / math.pi) / 0.005)
    assert target_lambda(0.005) == pytest.approx(159.577, rel=1e-5)
    assert target_lambda(0.001, "act_sup") == pytest.approx(169.971)
    assert target_lambda(0.005, "act_l1") == pytest.approx(10.0)
    assert target_lambda(10.0) == 1.0
    for bound in ("gate_l1", "act_sup", "act_l1"):
        assert tolerance_at(target_lambda(0.01, bound), bound) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="unknown bound"):
        target_lambda(0.01, "data-free")
    with pytest.raises(ValueError, match="tolerance"):
        target_lambda(0.0)


def test_closed_form_bounds_hold_numerically():
    lam = 7.0
    x = torch.linspace(-20, 20, 400_001, dtype=torch.float64)
    dx = (x[1] - x[0]).item()
    gate = 0.5 * torch.erfc(-lam * x / math.sqrt(2))
    act_gap = (x * gate - torch.relu(x)).abs()
    assert ((gate - (x > 0).double()).abs().sum() * dx).item() == pytest.approx(tolerance_at(lam, "gate_l1"), rel=1e-4)
    assert act_gap.max().item() == pytest.approx(tolerance_at(lam, "act_sup"), rel=1e-4)
    assert (act_gap.sum() * dx).item() == pytest.approx(tolerance_at(lam, "act_l1"), rel=1e-4)


def test_init_profiles_drift_and_spearman():
    assert init_lambdas(3, "increasing", lambda_range=(1.0, 2.0)) == [1.0, 1.5, 2.0]
    assert init_lambdas(1, "decreasing", lambda_range=(1.0, 2.0)) == [2.0]
    assert hardness_drift({"a": 1.0, "b": 2.0}, {"a": 1.5, "b": 1.0}) == pytest.approx(0.75)
    assert spearman_rho([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman_rho([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [1.2, 3.4, 3.4, 0.5, 2.2], [2.0, 1.0, 4.0, 0.1, 3.0]
    assert spearman_rho(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic)


def test_set_lambda_from_a_number_writes_the_same_theta_as_from_a_tensor():
    # the annealing callback passes numbers (the float path, no tensor ops); both paths must
    # write bitwise the same θ, so runs and resumes agree whichever path set λ
    site = KGELU()
    for lam in torch.logspace(-6, 4, 2000, dtype=torch.float64).add(1.0).tolist():
        site.set_lambda(lam)
        from_number = site.theta.detach().clone()
        site.set_lambda(torch.tensor([lam], dtype=torch.float64))
        assert torch.equal(site.theta.detach(), from_number), lam
