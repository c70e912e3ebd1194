"""The C++ site path (`hf_kgelu.ops.native`). On CPU: it builds, loads, declines CPU tensors and
rejects bad registrations, and a missing compiler leaves the op in charge. On a GPU (marked): a
KGELU site's outputs and gradients through it are bitwise those of the op (Triton's public launch),
for every dtype, odd shapes, misaligned inputs, frozen θ or input, its backward fallback,
checkpointing and CUDA graphs; it really takes the calls (its hit counter); and it turns itself off,
with the op serving correct results, when a registration does not match the kernel's parameters
or its launch differs from Triton's (a simulated Triton change)."""

import pytest
import torch
from build_probe import run_probe

from hf_kgelu.ops import kgelu, settings
from hf_kgelu.modeling import KGELU
from hf_kgelu.ops import native as site_launcher

CUDA = torch.cuda.is_available()
gpu = pytest.mark.gpu


def test_builds_loads_and_declines_what_is_not_its_case():
    assert site_launcher.load()
    before = site_launcher.stats()
    # CPU tensors, per-channel θ, float64: not its case, so None and the caller's Python path
    assert site_launcher.site_forward(torch.randn(5), torch.zeros(1), 0.1) is None
    assert site_launcher.site_forward(torch.randn(2, 3), torch.zeros(3), 0.1) is None
    assert site_launcher.stats() == before  # declined before looking anything up


def test_bad_registrations_are_refused_with_a_clear_error():
    assert site_launcher.load()
    with pytest.raises(RuntimeError, match="unknown kernel id"):
        torch.ops.hf_kgelu_native.register_kernel(7, 0, 6, 0, 10, 0, 0, 1, 1, 32, 0, "pp", [0, 0])
    with pytest.raises(RuntimeError, match="bad argument description"):
        torch.ops.hf_kgelu_native.register_kernel(0, 0, 6, 0, 10, 0, 0, 1, 1, 32, 0, "ppf", [0])


_PROBE = """
import warnings
from hf_kgelu.ops import native as site_launcher
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    print("LOADED" if site_launcher.load() else "NOT LOADED")
    site_launcher.load()
print(sum("C++ site path could not be built" in str(w.message) for w in caught), "WARNINGS")
"""


def _probe(cache, **env):
    return run_probe(_PROBE, cache, **env)


def test_without_a_compiler_it_warns_once_and_builds_nothing(tmp_path):
    assert _probe(tmp_path, CXX=str(tmp_path / "no-such-compiler")) == ["NOT", "LOADED", "1", "WARNINGS"]
    assert not list(tmp_path.glob("*.so"))


def test_switched_off_it_builds_nothing_and_stays_quiet(tmp_path):
    assert _probe(tmp_path, HF_KGELU_NATIVE="0") == ["NOT", "LOADED", "0", "WARNINGS"]
    assert not list(tmp_path.glob("*.so"))


# ---------------------------------------------------------------- GPU


@pytest.fixture(autouse=True)
def _fresh_native_state():
    yield
    if site_launcher.loaded():
        site_launcher.reset()  # a test that turned the path off must not leave it off


def _site(lam=1.7, device="cuda"):
    torch.manual_seed(0)
    return KGELU(lambda_init=lam).to(device)


def _run(act, x, g):
    x = x.detach().clone().requires_grad_(x.requires_grad)
    act.theta.grad = None
    y = act(x)
    y.backward(g)
    # clones: a later backward accumulates into θ.grad in place
    return y.detach(), (x.grad if x.requires_grad else None), (act.theta.grad.clone() if act.theta.grad is not None else None)


def _through_the_op(act, x, g):
    """The op's results (Triton's public launch), the C++ path switched off."""
    with settings.override(native=False):
        return _run(act, x, g)


def _site_and_expected(x):
    """A site, an output gradient for x, the op's results for them, and one warm run that taught
    (and checked) the C++ path this shape's kernels."""
    act = _site()
    g = torch.randn_like(x)
    expected = _through_the_op(act, x, g)
    _run(act, x, g)
    return act, g, expected


def _equal(a, b):
    return all((p is None and q is None) or torch.equal(p, q) for p, q in zip(a, b))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(9, 41, 341), (8, 64, 3072), (1,), (2049,)])
def test_bitwise_the_ops_results_and_it_takes_the_calls(dtype, shape):
    act = _site()
    x = (torch.randn(shape, device="cuda") * 3).to(dtype).requires_grad_()
    g = torch.randn(shape, device="cuda").to(dtype)
    expected = _through_the_op(act, x, g)
    _run(act, x, g)  # the op's launches register this shape's kernels
    assert site_launcher.load() and site_launcher.disabled_reason() is None
    before = site_launcher.stats()["hits"]
    got = _run(act, x, g)
    assert site_launcher.stats()["hits"] == before + 2  # forward and backward both in C++
    assert _equal(got, expected)
    assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32


@gpu
@pytest.mark.parametrize("frozen", ["theta", "input"])
def test_frozen_theta_or_input(frozen):
    act = _site()
    x = torch.randn(4, 300, device="cuda", requires_grad=frozen != "input")
    if frozen == "theta":
        act.freeze()
    g = torch.randn_like(x)
    expected = _through_the_op(act, x, g)
    _run(act, x, g)
    got = _run(act, x, g)
    assert _equal(got, expected)
    assert (got[1] is None) == (frozen == "input") and (got[2] is None) == (frozen == "theta")


@gpu
def test_misaligned_inputs_get_their_own_kernels():
    act = _site()
    storage = torch.randn(64 * 48 + 1, device="cuda")
    for x in (storage[1:].view(64, 48), storage[:-1].view(64, 48)):
        x = x.detach().requires_grad_()
        g = torch.randn_like(x)
        expected = _through_the_op(act, x, g)
        _run(act, x, g)
        assert _equal(_run(act, x, g), expected)


@gpu
def test_backward_falls_back_to_the_op_for_unregistered_kernels():
    x = torch.randn(3, 1000, device="cuda", requires_grad=True)
    act, g, expected = _site_and_expected(x)
    y = act(x)  # through C++ (registered above)
    act.theta.grad = None
    site_launcher.clear()  # the backward now finds nothing registered
    y.backward(g)
    assert torch.equal(x.grad, expected[1]) and torch.equal(act.theta.grad, expected[2])
    assert site_launcher.stats()["misses"] == 1
    x.grad = None
    act.theta.grad = None
    _, dx, dtheta = _run(act, x, g)  # the fallback registered the backward kernels again
    assert torch.equal(dx, expected[1]) and torch.equal(dtheta, expected[2])
    hits = site_launcher.stats()["hits"]
    assert _equal(_run(act, x, g), expected)  # and that run's forward registered its kernel
    assert site_launcher.stats()["hits"] == hits + 2


@gpu
def test_non_contiguous_inputs_and_per_channel_sites_take_the_op():
    x = torch.randn(64, 48, device="cuda").t().requires_grad_()
    act, g, expected = _site_and_expected(x)
    before = site_launcher.stats()["hits"]
    assert _equal(_run(act, x, g), expected)
    per_channel = KGELU(lambda_init=1.7, num_channels=64).cuda()
    y = per_channel(x)
    y.backward(g)
    torch.testing.assert_close(y, kgelu(x.detach(), per_channel.lam.detach()), rtol=1e-6, atol=1e-7)
    assert site_launcher.stats()["hits"] == before


@gpu
def test_checkpointing_and_cuda_graphs():
    from torch.utils.checkpoint import checkpoint

    x = torch.randn(8, 512, device="cuda", requires_grad=True)
    act, g, expected = _site_and_expected(x)
    x1 = x.detach().clone().requires_grad_()
    act.theta.grad = None
    checkpoint(act, x1, use_reentrant=False).backward(g)
    assert torch.equal(x1.grad, expected[1]) and torch.equal(act.theta.grad, expected[2])

    static_x = x.detach().clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up on the side stream, as torch's CUDA-graph recipe does
            act.theta.grad = None
            static_x.grad = None
            act(static_x).backward(g)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    act.theta.grad = None
    static_x.grad = None
    with torch.cuda.graph(graph):
        static_y = act(static_x)
        static_y.backward(g)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(static_y, expected[0]) and torch.equal(static_x.grad, expected[1])
    assert torch.equal(act.theta.grad, expected[2])


@gpu
def test_a_tiny_gpt2_step_under_autocast_matches_the_op():
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=97, activation_function="kgelu")
    ids = torch.randint(0, 97, (4, 32), device="cuda")

    def step():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad for p in model.parameters()]

    with settings.override(native=False):
        expected_loss, expected_grads = step()
    step()  # registers the kernels
    before = site_launcher.stats()["hits"]
    loss, grads = step()
    assert site_launcher.stats()["hits"] == before + 4  # 2 sites, forward and backward
    assert torch.equal(loss, expected_loss)
    assert all(torch.equal(a, b) for a, b in zip(grads, expected_grads, strict=True))


# ---------------------------------------------------------------- the self-checks (a simulated Triton change)


@gpu
def test_a_registration_unlike_the_kernels_parameters_turns_the_path_off(monkeypatch):
    """The last runtime argument described as a 64-bit integer where the compiled kernel takes a
    32-bit one: the driver's parameter list says so, nothing is launched from C++, and the op
    serves correct results."""
    site_launcher.clear()
    real = site_launcher.argument_types
    monkeypatch.setattr(site_launcher, "argument_types", lambda *a: (real(*a) or "-")[:-1] + "l")
    x = torch.randn(16, 640, device="cuda", requires_grad=True)
    act = _site()
    g = torch.randn_like(x)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ site path is off"):
        got = _run(act, x, g)
    assert site_launcher.disabled_reason() is not None and not site_launcher.load()
    assert site_launcher.stats()["kernels"] == 0
    assert _equal(got, _through_the_op(act, x, g)) and _equal(_run(act, x, g), got)


@gpu
def test_a_launch_that_differs_from_tritons_turns_the_path_off(monkeypatch):
    """A registration whose integer arguments no longer mean what they meant (here: half the
    elements): the first C++ launch is compared with Triton's bit for bit, differs, and the path
    turns itself off before any result of it is used."""
    from dataclasses import replace

    site_launcher.clear()
    real = site_launcher._register

    def shifted(launch, *rest):
        args = tuple(arg // 2 if type(arg) is int and arg > 1 else arg for arg in launch.args)
        return real(replace(launch, args=args), *rest)

    monkeypatch.setattr(site_launcher, "_register", shifted)
    x = torch.randn(16, 640, device="cuda", requires_grad=True)
    act = _site()
    g = torch.randn_like(x)
    with pytest.warns(RuntimeWarning, match="differs from Triton"):
        got = _run(act, x, g)
    assert site_launcher.disabled_reason() is not None
    assert _equal(got, _through_the_op(act, x, g)) and _equal(_run(act, x, g), got)
