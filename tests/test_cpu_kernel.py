"""The compiled CPU kernel (hf_kgelu.ops.cpu): built here, exact against float64, the same as
the torch path, independent of the thread count, and a clean fallback when it cannot be built."""

import math
import os
import subprocess
import sys

import pytest
import torch
from build_probe import run_probe

from hf_kgelu.ops import cpu as cpu_kernel
from hf_kgelu.ops import kgelu, path
from hf_kgelu.ops.reference import kgelu_backward_reference, kgelu_forward_reference


def uses_cpu_kernel(x, lam) -> bool:
    return path(x, lam) == "cpu"

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reference(x: torch.Tensor, lam: torch.Tensor):
    """Forward and (dx, dλ) in float64 through autograd of x·½·erfc(−λx/√2)."""
    x64 = x.double().requires_grad_()
    lam64 = lam.double().requires_grad_()
    y = x64 * 0.5 * torch.erfc(-lam64 * x64 / math.sqrt(2))
    return y, x64, lam64


def test_the_kernel_is_built_on_this_machine():
    # CI installs a C compiler (Makefile `system-data`); without one every float32 CPU call
    # would silently take the slower torch path.
    assert cpu_kernel.load() is not None
    assert uses_cpu_kernel(torch.randn(3), torch.ones(1))


@pytest.mark.parametrize("lam_value", [1.0001, 1.7, 10.0, 160.0, 1000.0])
@pytest.mark.parametrize("per_channel", [False, True])
def test_forward_and_backward_match_float64_and_the_torch_path(lam_value, per_channel):
    torch.manual_seed(0)
    x = torch.randn(37, 257) * 3
    lam = torch.full((257,), lam_value) * torch.linspace(1.0, 1.5, 257) if per_channel else torch.tensor([lam_value])
    g = torch.randn_like(x)
    y = cpu_kernel.forward(x, lam)
    dx, dlam = cpu_kernel.backward(g, x, lam)
    ref, x64, lam64 = reference(x, lam)
    (ref * g.double()).sum().backward()
    # forward: the same relative bound as the torch path (both round λx/√2 once in float32)
    err = (y.double() - ref).abs()
    assert (err <= 2e-6 * ref.abs() + 1e-9).all(), err.max()
    torch.testing.assert_close(y, kgelu_forward_reference(x, lam), rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(dx.double(), x64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dlam.double(), lam64.grad.to(dlam.dtype).double(), rtol=1e-5, atol=1e-6)
    dx_torch, dlam_torch = kgelu_backward_reference(g, x, lam)
    torch.testing.assert_close(dx, dx_torch, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dlam, dlam_torch, rtol=1e-5, atol=1e-6)
    assert dlam.dtype == torch.float32 and dlam.shape == lam.shape


def test_lambda_gradient_does_not_depend_on_the_thread_count():
    torch.manual_seed(1)
    x = torch.randn(640, 1024)  # 655 360 elements: up to 10 threads at 65 536 each
    g = torch.randn_like(x)
    site, channels = torch.tensor([2.5]), torch.linspace(1.1, 4.0, 1024)
    saved = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append([cpu_kernel.backward(g, x, lam) for lam in (site, channels)] + [cpu_kernel.forward(x, site)])
    finally:
        torch.set_num_threads(saved)
    for other in results[1:]:
        for (dx_a, dlam_a), (dx_b, dlam_b) in zip(results[0][:2], other[:2]):
            assert torch.equal(dx_a, dx_b) and torch.equal(dlam_a, dlam_b)
        assert torch.equal(results[0][2], other[2])


def test_calls_from_several_python_threads_at_once():
    # ctypes releases the GIL: while one call holds the worker pool, another runs its chunks alone
    import threading

    torch.manual_seed(3)
    x, g = torch.randn(400_000), torch.randn(400_000)
    lams = [torch.tensor([1.0 + k]) for k in range(4)]
    expected = [(cpu_kernel.forward(x, lam), *cpu_kernel.backward(g, x, lam)) for lam in lams]
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    failures = []

    def work(k):
        for _ in range(20):
            got = (cpu_kernel.forward(x, lams[k]), *cpu_kernel.backward(g, x, lams[k]))
            if not all(torch.equal(a, b) for a, b in zip(got, expected[k])):
                failures.append(k)

    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
    finally:
        torch.set_num_threads(saved)
    assert not failures


def test_autograd_through_kgelu_uses_the_kernel_for_strided_and_broadcast_gradients():
    base = torch.randn(50, 40, requires_grad=True)
    x = base.t()[::2]  # non-contiguous
    lam = torch.tensor([1.9], requires_grad=True)
    assert not x.is_contiguous() and uses_cpu_kernel(x, lam)
    kgelu(x, lam).sum().backward()  # grad_out is an expanded (stride-0) tensor
    y_ref, x64, lam64 = reference(x.detach(), lam.detach())
    y_ref.sum().backward()
    torch.testing.assert_close(base.grad.t()[::2].double(), x64.grad, rtol=1e-5, atol=1e-6)
    assert base.grad.t()[1::2].abs().max() == 0
    torch.testing.assert_close(lam.grad.double(), lam64.grad, rtol=1e-5, atol=1e-6)


def test_non_finite_and_empty_inputs_behave_like_the_torch_path():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30, -40.0, 40.0])
    lam = torch.tensor([3.0])
    y, y_torch = cpu_kernel.forward(x, lam), kgelu_forward_reference(x, lam)
    assert torch.equal(y.isnan(), y_torch.isnan())
    assert torch.equal(y[~y.isnan()], y_torch[~y_torch.isnan()])
    g = torch.ones_like(x)
    (dx, dlam), (dx_t, dlam_t) = cpu_kernel.backward(g, x, lam), kgelu_backward_reference(g, x, lam)
    assert torch.equal(dx.isnan(), dx_t.isnan()) and dlam.isnan().all() and dlam_t.isnan().all()
    empty = torch.empty(0, 7)
    assert cpu_kernel.forward(empty, lam).shape == (0, 7)
    dx, dlam = cpu_kernel.backward(empty, empty, torch.ones(7) * 2)
    assert dx.shape == (0, 7) and torch.equal(dlam, torch.zeros(7))


def test_torch_compile_traces_the_torch_path_without_graph_breaks():
    # ctypes calls cannot be traced: under torch.compile the op must take the torch path
    from hf_kgelu import KGELU

    site = KGELU(lambda_init=2.5)
    x = (torch.randn(6, 33) * 2).requires_grad_()
    compiled = torch.compile(site, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    grads = x.grad.clone(), site.theta.grad.clone()
    x.grad = site.theta.grad = None
    eager = site(x)
    eager.sum().backward()
    torch.testing.assert_close(y, eager, rtol=2e-6, atol=1e-9)
    torch.testing.assert_close(grads[0], x.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], site.theta.grad, rtol=1e-5, atol=1e-6)


def test_float64_and_huge_channel_counts_take_the_torch_path():
    assert not uses_cpu_kernel(torch.randn(4, dtype=torch.float64), torch.ones(1, dtype=torch.float64))
    wide = cpu_kernel.MAX_CHANNELS + 1
    assert not uses_cpu_kernel(torch.randn(2, wide), torch.ones(wide))
    x = torch.randn(2, wide)
    torch.testing.assert_close(kgelu(x, torch.full((wide,), 2.0)), kgelu_forward_reference(x, torch.tensor([2.0])))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("per_channel", [False, True])
def test_half_types_run_in_the_kernel_rounded_once_from_float32(dtype, per_channel):
    torch.manual_seed(4)
    x = (torch.randn(33, 129) * 3).to(dtype)
    lam = torch.linspace(1.5, 40.0, 129) if per_channel else torch.tensor([7.0])
    assert uses_cpu_kernel(x, lam)
    g = torch.randn_like(x)
    y = cpu_kernel.forward(x, lam)
    dx, dlam = cpu_kernel.backward(g, x, lam)
    assert y.dtype == dx.dtype == dtype and dlam.dtype == torch.float32
    # the same float32 math as on float32 copies, rounded once as torch's conversion rounds
    y32 = cpu_kernel.forward(x.float(), lam)
    dx32, dlam32 = cpu_kernel.backward(g.float(), x.float(), lam)
    assert torch.equal(y, y32.to(dtype)) and torch.equal(dx, dx32.to(dtype))
    torch.testing.assert_close(dlam, dlam32, rtol=1e-6, atol=0)
    # and the torch path (math in float32, rounded once) agrees within half types' rounding
    tol = dict(rtol=2 ** -7, atol=1e-3) if dtype == torch.bfloat16 else dict(rtol=2 ** -10, atol=1e-4)
    torch.testing.assert_close(y, kgelu_forward_reference(x, lam), **tol)
    dx_t, dlam_t = kgelu_backward_reference(g, x, lam)
    torch.testing.assert_close(dx, dx_t, **tol)
    torch.testing.assert_close(dlam, dlam_t, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_half_value_converts_as_torch_does(dtype):
    # all 65 536 bit patterns (subnormals, ±0, ±inf, NaNs): the kernel's own conversions against
    # torch's, through a forward and a backward whose float32 math is the float32 path's
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    for lam in (torch.tensor([1.0001]), torch.tensor([300.0])):
        y, y32 = cpu_kernel.forward(x, lam), cpu_kernel.forward(x.float(), lam).to(dtype)
        assert torch.equal(y.isnan(), y32.isnan()) and torch.equal(y[~y.isnan()], y32[~y32.isnan()])
        for scale in (1.0, 6e4):  # 6e4: GELU's slope above 1.09 overflows float16 to inf
            g = torch.full_like(x, scale)
            dx, _ = cpu_kernel.backward(g, x, lam)
            dx32 = cpu_kernel.backward(g.float(), x.float(), lam)[0].to(dtype)
            assert torch.equal(dx.isnan(), dx32.isnan()) and torch.equal(dx[~dx.isnan()], dx32[~dx32.isnan()])


def test_half_nan_and_infinities():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -3.0, 3.0, 60000.0])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        y = cpu_kernel.forward(x.to(dtype), torch.tensor([2.0]))
        y_t = kgelu_forward_reference(x.to(dtype), torch.tensor([2.0]))
        assert torch.equal(y.isnan(), y_t.isnan()) and torch.equal(y[~y.isnan()], y_t[~y_t.isnan()]), dtype


_FORK = """
import os, torch
from hf_kgelu.ops import cpu as cpu_kernel
torch.set_num_threads(2)
x, lam = torch.randn(1 << 20), torch.tensor([1.5])
before = cpu_kernel.forward(x, lam)  # starts the parent's worker threads
pid = os.fork()
if pid == 0:  # the child has none of them: its pool must start afresh, not wait on the parent's
    os._exit(0 if torch.equal(cpu_kernel.forward(x, lam), before) else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert torch.equal(cpu_kernel.forward(x, lam), before)
print("OK")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_runs_the_threaded_kernel():
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", _FORK], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["OK"], done.stderr


_PROBE = """
import warnings, torch
from hf_kgelu.ops import kgelu, path
from hf_kgelu.ops.reference import kgelu_forward_reference
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x = torch.randn(1000) * 3
    y = kgelu(x, 1.5)
print("BUILT" if path(x, torch.ones(1)) == "cpu" else "NOT BUILT")
print("WARNED" if any("CPU kernel could not be built" in str(w.message) for w in caught) else "QUIET")
torch.testing.assert_close(y, kgelu_forward_reference(x, torch.tensor([1.5])), rtol=2e-6, atol=1e-9)
"""


def _probe(cache, **env):
    return run_probe(_PROBE, cache, **env)


def test_built_once_into_the_cache_then_reused(tmp_path):
    assert _probe(tmp_path) == ["BUILT", "QUIET"]
    (library,) = tmp_path.glob("kgelu_cpu-*.so")
    assert not list(tmp_path.glob("*.tmp.so"))  # the temporary file was renamed, not left behind
    stamp = library.stat().st_mtime_ns
    assert _probe(tmp_path) == ["BUILT", "QUIET"]
    assert library.stat().st_mtime_ns == stamp  # loaded, not rebuilt


def test_without_a_compiler_it_warns_once_and_uses_the_torch_path(tmp_path):
    assert _probe(tmp_path, CC=str(tmp_path / "no-such-compiler")) == ["NOT", "BUILT", "WARNED"]
    assert not list(tmp_path.glob("*.so"))


def test_switched_off_it_builds_nothing_and_stays_quiet(tmp_path):
    assert _probe(tmp_path, HF_KGELU_CPU_KERNEL="0") == ["NOT", "BUILT", "QUIET"]
    assert not list(tmp_path.glob("*.so"))
