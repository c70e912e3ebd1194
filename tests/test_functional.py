"""The op x·Φ(λx) against a float64 reference, its gradients, and edge inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_kgelu.hardness import ACT_SUP_CONSTANT, theta_from_lambda
from hf_kgelu.ops import kgelu, lambda_from_theta

LAMBDAS = [1.0001, 1.05, 2.0, 10.0, 160.0, 500.0]


def reference(x: torch.Tensor, lam) -> torch.Tensor:
    """x·½(1 + erf(λx/√2)) in float64, written as x·½·erfc(−λx/√2): the same function, but
    1 + erf cancels to 0 below λx ≈ −8 even in float64."""
    x64 = x.double()
    lam64 = torch.as_tensor(lam, dtype=torch.float64)
    return x64 * 0.5 * torch.erfc(-lam64 * x64 / math.sqrt(2))


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize(
    "dtype, rel_tol, abs_tol",
    [
        # fp32: λx is rounded before Φ, so in the far tail (|λx| ≈ 10) Φ's relative error grows
        # like (λx)²·2⁻²⁴; there the values are < 1e-20, hence the absolute floor.
        (torch.float32, 2e-6, 1e-9),
        (torch.bfloat16, 1.01 * 2**-8, 1e-30),  # the output's own rounding: half an ulp
        (torch.float16, 1.01 * 2**-11, 6e-8),  # plus fp16's subnormal spacing
    ],
)
def test_forward_matches_float64_reference(lam, dtype, rel_tol, abs_tol):
    x = (torch.randn(9, 41, 341) * 3).to(dtype)
    out = kgelu(x, lam)
    assert out.dtype == dtype and out.shape == x.shape
    ref = reference(x, lam)
    err = (out.double() - ref).abs()
    assert (err <= rel_tol * ref.abs() + abs_tol).all(), err.max()
    assert (err.norm() / ref.norm()).item() <= rel_tol


def test_lambda_one_is_gelu_and_large_lambda_is_relu_within_bound():
    # random points plus a grid through the largest gap (at λx ≈ ±0.75): the tightness check
    # below must not depend on a random sample landing within |x| < 0.01
    x = torch.cat([torch.randn(10_000, dtype=torch.float64) * 4, torch.linspace(-0.01, 0.01, 2001, dtype=torch.float64)])
    torch.testing.assert_close(kgelu(x, 1.0), F.gelu(x), rtol=1e-12, atol=1e-12)
    lam = 500.0
    gap = (kgelu(x, lam) - F.relu(x)).abs().max().item()
    assert gap <= ACT_SUP_CONSTANT / lam
    assert gap > 0.5 * ACT_SUP_CONSTANT / lam  # the bound is tight, not vacuous


def test_gradcheck_input_and_theta_per_site():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, t: kgelu(x, lambda_from_theta(t, 0.1)), (x, theta))


def test_gradcheck_per_channel():
    x = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    theta = torch.linspace(-0.2, 0.5, 5, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: kgelu(x, lambda_from_theta(t, 0.1)), (x, theta))


def test_gradients_match_autograd_of_reference_in_float32():
    x = torch.randn(64, 33) * 2
    lam = torch.tensor([3.0], requires_grad=True)
    xr = x.clone().requires_grad_()
    xo = x.clone().requires_grad_()
    g = torch.randn_like(x)
    (kgelu(xo, lam) * g).sum().backward()
    lam_ref = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    (reference_autograd(xr.double(), lam_ref) * g.double()).sum().backward()
    torch.testing.assert_close(xo.grad.double(), xr.grad.double(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lam.grad.double(), lam_ref.grad, rtol=1e-5, atol=1e-6)


def reference_autograd(x, lam):
    return x * 0.5 * (1 + torch.erf(lam * x / math.sqrt(2)))


def test_saves_only_input_and_lambda():
    x = torch.randn(128, 64, requires_grad=True)
    lam = torch.tensor([2.0], requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        kgelu(x, lam)
    assert sorted(t.numel() for t in saved) == [1, x.numel()]


def test_non_finite_inputs_propagate_like_gelu():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -3.0, 3.0])
    ours, theirs = kgelu(x, 1.0), F.gelu(x)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
    assert torch.isnan(ours[0])


def test_empty_and_non_contiguous_inputs():
    lam = torch.tensor([1.7], requires_grad=True)
    empty = torch.empty(0, 5, requires_grad=True)
    out = kgelu(empty, lam)
    out.sum().backward()
    assert out.shape == (0, 5) and lam.grad.item() == 0.0
    base = torch.randn(20, 30)
    strided = base.t()[::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(kgelu(strided, 1.7), kgelu(strided.contiguous(), 1.7))


def test_per_channel_lambda_must_match_last_dimension():
    with pytest.raises(ValueError, match="last dimension"):
        kgelu(torch.randn(3, 4), torch.ones(5) * 2)


@pytest.mark.parametrize("lam", [1.0 + 1e-7, 1.0001, 1.05, 2.0, 160.0, 1e4])
def test_theta_lambda_round_trip(lam):
    tau = 0.1
    theta = theta_from_lambda(lam, tau)
    back = lambda_from_theta(torch.tensor(theta, dtype=torch.float64), tau).item()
    assert math.isclose(back, lam, rel_tol=1e-12)
    theta32 = theta_from_lambda(torch.tensor([lam]), tau)
    assert theta32.dtype == torch.float32
    assert math.isclose(lambda_from_theta(theta32, tau).item(), lam, rel_tol=1e-5)


@pytest.mark.parametrize("bad", [1.0, 0.5, float("nan"), float("inf")])
def test_theta_from_lambda_rejects_unrepresentable(bad):
    with pytest.raises(ValueError, match="λ"):
        theta_from_lambda(bad, 0.1)
