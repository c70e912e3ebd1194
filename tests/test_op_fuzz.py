"""A seeded fuzzer over the op: random shapes (empty, one element, odd sizes), strides (transposes,
gaps, expanded views), dtypes, λ log-uniform in [1, 10⁴] per site or per channel, θ instead of λ,
and special values (NaN, ±inf, ±0, huge, subnormal) in x — every case against the float64
reference, outputs and gradients, and NaN wherever the reference has NaN. On CPU here (the C kernel
and the torch path); on CUDA (marked `gpu`) the Triton kernels and the C++ site path."""

import math

import pytest
import torch

from hf_kgelu.modeling import KGELU
from hf_kgelu.ops import kgelu, kgelu_theta, path, settings

CASES = 60
SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30, 1e-40, -1e-40, 40.0, -40.0]
# output tolerance relative to |reference|, by dtype: float32 rounds λx/√2 once (the tail is exact);
# half types round the float32 result once more
RELATIVE = {torch.float32: 4e-6, torch.float64: 1e-12, torch.bfloat16: 2**-8, torch.float16: 2**-11}
ABSOLUTE = {torch.float32: 1e-30, torch.float64: 1e-300, torch.bfloat16: 1e-30, torch.float16: 6e-8}


def _reference(x: torch.Tensor, lam: torch.Tensor, g: torch.Tensor):
    """Output, dx and dλ in float64 (autograd of x·½·erfc(−λx/√2)), and Σ|dλ terms| for a scale."""
    x64 = x.detach().double().cpu().requires_grad_()
    lam64 = lam.detach().double().cpu().requires_grad_()
    y = x64 * 0.5 * torch.erfc(-lam64 * x64 / math.sqrt(2))
    (y * g.double().cpu()).sum().backward()
    terms = (g.double().cpu() * x64.detach() ** 2 * torch.exp(-0.5 * (lam64.detach() * x64.detach()) ** 2)).abs()
    scale = terms.sum() if lam.numel() == 1 else terms.reshape(-1, lam.numel()).sum(0)
    return y.detach().reshape(x.shape), x64.grad, lam64.grad, scale / math.sqrt(2 * math.pi)


def _case(rng: torch.Generator, device: str):
    """(x, λ, per_channel, has_special, dtype) of one random case."""
    dtype = [torch.float32, torch.bfloat16, torch.float16, torch.float64][int(torch.randint(4, (1,), generator=rng))]
    ndim = int(torch.randint(0, 4, (1,), generator=rng))
    shape = [int(torch.randint(0, 3, (1,), generator=rng)) * int(torch.randint(1, 70, (1,), generator=rng))
             for _ in range(ndim)]
    shape = [max(s, 1) if torch.rand(1, generator=rng) < 0.8 else s for s in shape]  # some empty dimensions
    x = torch.randn(shape, generator=rng) * float(10 ** torch.empty(1).uniform_(-1, 1.5, generator=rng))
    layout = int(torch.randint(4, (1,), generator=rng))
    if layout == 1 and x.dim() >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)  # dense, permuted
    elif layout == 2 and x.dim() >= 1 and x.shape[-1] > 1:
        x = torch.cat([x, x], dim=-1)[..., ::2]  # gaps between elements
    elif layout == 3 and x.dim() >= 1 and x.shape[-1] > 0:
        x = x[..., :1].expand(*x.shape[:-1], 3)  # a stride-0 view
    special = x.numel() > 0 and torch.rand(1, generator=rng) < 0.3
    if special:
        flat = x.contiguous().view(-1).clone()
        picks = torch.randint(0, flat.numel(), (min(flat.numel(), 5),), generator=rng)
        for i, pick in enumerate(picks):
            flat[pick] = SPECIAL[int(torch.randint(len(SPECIAL), (1,), generator=rng))]
        x = flat.view(x.shape) if x.is_contiguous() else flat.view(x.contiguous().shape)
    per_channel = x.dim() >= 1 and x.shape[-1] > 0 and torch.rand(1, generator=rng) < 0.4
    count = x.shape[-1] if per_channel else 1
    lam = 10 ** torch.empty(count).uniform_(0, 4, generator=rng)  # λ from 1 to 10⁴
    lam = lam.clamp_min(1.0 + 1e-6)
    return x.to(device=device, dtype=dtype), lam.to(device), bool(per_channel), bool(special), dtype


def _tail_relative(x: torch.Tensor, lam: torch.Tensor, dtype) -> torch.Tensor | float:
    """The output's relative tolerance: float32 rounds z = λx once, so exp(−z²/2) carries a relative
    error up to z²·2⁻²⁴ in the far tail, on top of the dtype's own rounding."""
    if dtype == torch.float64:
        return RELATIVE[dtype]
    z = (x.detach().double().cpu() * lam.detach().double().cpu()).reshape(x.shape)
    return RELATIVE[dtype] + 2.0**-23 * torch.nan_to_num(z * z, posinf=0.0)


def _close(ours: torch.Tensor, ref: torch.Tensor, rel, atol) -> None:
    ours = ours.detach().double().cpu()
    ref = ref.detach().cpu()
    assert torch.equal(ours.isnan(), ref.isnan()), "NaN where the reference has none, or none where it has"
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isinf(ours) & ~ref.isnan(), torch.isinf(ref)), "an infinity differs"
    err = (ours[finite] - ref[finite]).abs()
    rel = rel.expand_as(ref)[finite] if isinstance(rel, torch.Tensor) else rel
    bound = rel * ref[finite].abs() + (atol.expand_as(ref)[finite] if isinstance(atol, torch.Tensor) else atol)
    worst = (err / bound).argmax() if err.numel() else None
    assert (err <= bound).all(), (f"ours {ours[finite][worst].item():.6g}, reference {ref[finite][worst].item():.6g}, "
                                  f"bound {bound[worst].item():.3g}")


def _fuzz(device: str, seed: int) -> None:
    rng = torch.Generator().manual_seed(seed)
    for case in range(CASES):
        x, lam, per_channel, special, dtype = _case(rng, device)
        label = f"case {case}: {tuple(x.shape)} {dtype} strides {x.stride()} λ {lam.flatten()[:3].tolist()}"
        g = torch.randn(x.shape, generator=rng).to(device=device, dtype=dtype)
        xs = x.detach().clone().requires_grad_() if x.is_contiguous() else x.detach().requires_grad_()
        lam_param = (lam.to(torch.float64) if dtype == torch.float64 else lam.float()).requires_grad_()
        y = kgelu(xs, lam_param)
        y.backward(g)
        ref_y, ref_dx, ref_dlam, scale = _reference(x, lam_param, g)
        rel = _tail_relative(x, lam_param, dtype)
        try:
            _close(y, ref_y, rel, ABSOLUTE[dtype])
            _close(xs.grad, ref_dx, 8 * rel, 8 * RELATIVE[dtype] * g.abs().double().cpu() + ABSOLUTE[dtype])
            if not special:  # with ±inf in x, dλ is NaN for both; the NaN check above covers dx
                _close(lam_param.grad, ref_dlam, 1e-5, 1e-4 * scale.cpu() + 1e-30)
        except AssertionError as error:
            raise AssertionError(f"{label} ({path(x, lam_param)}): {error}") from None


def _theta_and_nan(device: str, seed: int) -> None:
    """θ instead of λ (a KGELU module: the C++ site path on CUDA), and NaN hardness everywhere."""
    rng = torch.Generator().manual_seed(seed)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for channels in (None, 37):
            site = KGELU(lambda_init=float(10 ** torch.empty(1).uniform_(0.01, 3, generator=rng)), num_channels=channels)
            site = site.to(device)
            x = (torch.randn(23, 37, generator=rng) * 4).to(device=device, dtype=dtype).requires_grad_()
            g = torch.randn(23, 37, generator=rng).to(device=device, dtype=dtype)
            for _ in range(2):  # on CUDA the second call goes through the C++ site path
                site.theta.grad = x.grad = None
                y = site(x)
                y.backward(g)
            ref_y, ref_dx, ref_dlam, scale = _reference(x, site.lam, g)
            _close(y, ref_y, _tail_relative(x, site.lam, dtype), ABSOLUTE[dtype])
            chain = torch.sigmoid(site.theta.detach().double() / site.tau).cpu() / site.tau
            _close(site.theta.grad, (ref_dlam * chain).reshape(site.theta.shape), 1e-5, 1e-4 * scale.cpu() * chain + 1e-30)
            nan = torch.full_like(site.theta, float("nan"))
            assert kgelu_theta(x.detach(), nan, site.tau).isnan().all(), (dtype, channels)
            if device == "cpu":  # a λ tensor on the CPU is checked; on CUDA (no sync) the output says NaN
                with pytest.raises(ValueError, match="finite and ≥ 1"):
                    kgelu(x.detach(), nan.clone())
            else:
                assert kgelu(x.detach(), nan.clone()).isnan().all()


@pytest.mark.parametrize("seed", [0, 1])
def test_the_op_against_float64_on_cpu(seed):
    _fuzz("cpu", seed)


@pytest.mark.parametrize("force_reference", [False, True])
def test_the_theta_path_and_nan_hardness_on_cpu(force_reference):
    with settings.override(force_reference=force_reference):
        _theta_and_nan("cpu", 3)


def test_a_nan_hardness_is_refused_or_nan_on_cpu():
    x = torch.randn(5, 4)
    for bad in (float("nan"), 0.5, 0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="λ must be"):
            kgelu(x, bad)
        with pytest.raises(ValueError, match="λ must be"):
            kgelu(x, torch.tensor([bad]))
    for force_reference in (False, True):  # a NaN θ (e.g. from a corrupt checkpoint): NaN out, on both paths
        with settings.override(force_reference=force_reference):
            y = kgelu_theta(x, torch.tensor([float("nan")]), 0.1)
            assert y.isnan().all() and path(x, torch.ones(1)) == ("reference" if force_reference else "cpu")


@pytest.mark.gpu
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_op_against_float64_on_cuda(seed):
    _fuzz("cuda", seed)


@pytest.mark.gpu
def test_the_theta_path_and_nan_hardness_on_cuda():
    _theta_and_nan("cuda", 4)
