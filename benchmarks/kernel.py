"""The λ-GELU op on one CUDA device against torch's GELU and ReLU and the naive autograd version.

Parts (--parts, default "table,host"):
  table  per dtype and size: device time from CUDA-graph replays (the kernels alone), time per call
         with `triton.testing.do_bench` (L2 flushed before each; host time shows where it exceeds
         the device's), bytes saved for backward and peak extra memory per element. The input is a
         (rows, 3072) matrix, GPT-2 small's MLP width; 8192 rows are 8 × 1024 tokens.
  host   host time per forward+backward call on a 64×64 tensor (the device idles), per path, and
         the pieces a call is made of; a cProfile of the KGELU site (--profile).
  sweep  device time of a KGELU site with one kernel CONFIG entry changed at a time (8192 rows);
         `--choose` then prints the winners as HF_KGELU_KERNEL_CONFIG JSON from the CSV's last sweep.
Every part builds all its variants, then times them in interleaved rounds (benchmarks/harness.py).

    python -m benchmarks.kernel
    python -m benchmarks.kernel --parts table --rows 8192 --dtypes bf16
    python -m benchmarks.kernel --parts sweep && python -m benchmarks.kernel --choose
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from benchmarks import harness

WIDTH = 3072
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
L2_BYTES = 50 * 2**20  # an H200's L2: graph inputs together span several times it
_INV_SQRT2 = 1.0 / math.sqrt(2.0)


def naive_kgelu(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """What a user writes without the op: autograd saves every intermediate."""
    return x * 0.5 * (1.0 + torch.erf(lam * x * _INV_SQRT2))


@contextlib.contextmanager
def kernel_config(overrides: dict):
    """The kernels' launch configuration with `overrides` applied, for the block only."""
    from hf_kgelu.ops import settings

    with settings.override(kernel_config={**settings.current().kernel_config, **overrides}):
        yield


# ---- the table ----------------------------------------------------------------------------------


@dataclass
class Variant:
    layout: str  # "dense" or "transposed": which input it takes
    fn: object  # fn(x, param)
    param: torch.Tensor | None = None  # λ or θ
    config: dict = field(default_factory=dict)  # kernel CONFIG overrides while it runs
    compiled: bool = False  # torch.compile: no CUDA graph, no saved-tensor hooks


def variants(compile_naive: bool) -> dict[str, Variant]:
    """id -> Variant. The compiled naive version and the alternative Φ forms of our kernel only
    where `compile_naive` (the target size)."""
    from hf_kgelu.ops import kgelu, kgelu_theta

    def site(x, theta):  # what a KGELU site runs: λ = 1 + softplus(θ/τ) inside the kernel
        return kgelu_theta(x, theta, 0.1)

    def leaf(t):
        return t.to("cuda").requires_grad_()

    lam = leaf(torch.tensor([1.7]))
    theta = leaf(torch.tensor([0.07]))  # λ ≈ 1.7 at τ = 0.1
    table = {
        "gelu": Variant("dense", lambda x, _: F.gelu(x)),
        "relu": Variant("dense", lambda x, _: F.relu(x)),
        "naive": Variant("dense", naive_kgelu, lam),
    }
    if compile_naive:
        table["naive-compiled"] = Variant("dense", torch.compile(naive_kgelu, fullgraph=True), lam, compiled=True)
    table |= {
        "kgelu-site": Variant("dense", site, theta),
        "kgelu-site-channel": Variant("dense", site, leaf(torch.linspace(-0.3, 2.0, WIDTH))),
        "kgelu": Variant("dense", kgelu, lam),
        "kgelu-frozen": Variant("dense", kgelu, torch.tensor([1.7], device="cuda")),
        "kgelu-channel": Variant("dense", kgelu, leaf(torch.linspace(1.01, 20.0, WIDTH))),
        "gelu-transposed": Variant("transposed", lambda x, _: F.gelu(x)),
        "kgelu-transposed": Variant("transposed", kgelu, lam),
    }
    if compile_naive:
        table["kgelu-erfc"] = Variant("dense", kgelu, lam, {"cdf": "erfc"})
        table["kgelu-erf"] = Variant("dense", kgelu, lam, {"cdf": "erf"})
    return table


class Inputs:
    """`copies` distinct inputs of a shape (dense, and the same elements stored column-major),
    with their output gradients: the graph inputs together span several times the L2."""

    def __init__(self, rows: int, dtype: torch.dtype):
        self.rows, self.dtype = rows, dtype
        self.copies = max(1, min(4, math.ceil(4 * L2_BYTES / (rows * WIDTH * dtype.itemsize))))
        self.dense = [self._leaf(torch.randn(rows, WIDTH, device="cuda", dtype=dtype)) for _ in range(self.copies)]
        self.transposed = [self._leaf(torch.randn(WIDTH, rows, device="cuda", dtype=dtype).t()) for _ in range(self.copies)]
        self.grads = [torch.randn(rows, WIDTH, device="cuda", dtype=dtype) for _ in range(self.copies)]

    @staticmethod
    def _leaf(t):
        return t.detach().requires_grad_()

    def of(self, layout: str) -> list[torch.Tensor]:
        return self.dense if layout == "dense" else self.transposed


def _leaves(xs, param):
    return list(xs) + ([param] if param is not None and param.requires_grad else [])


def _clear(tensors):
    for t in tensors:
        t.grad = None


def graphs(fn, param, xs, grads) -> dict[str, object]:
    """CUDA graphs of the forward and of forward+backward over every input copy. The backward is
    `torch.autograd.grad` (the same kernels as `.backward()`): leaves' AccumulateGrad nodes, which
    remember the stream they were made on, would tie the capture to the legacy stream."""
    out = {}
    for mode in ("fwd", "fwd_bwd"):
        def body(mode=mode):
            # fresh leaves (views, no kernel) so that every autograd node is made on the capturing stream
            p = param.detach().requires_grad_(param.requires_grad) if param is not None else None
            for x, g in zip(xs, grads, strict=True):
                x = x.detach().requires_grad_()
                y = fn(x, p)
                if mode == "fwd_bwd":
                    torch.autograd.grad(y, _leaves([x], p), g)

        out[mode] = harness.capture_graph(body)
    return out


def try_graphs(name: str, fn, param, xs, grads) -> dict[str, object]:
    """`graphs`, or none (with a line saying why) where a variant cannot be captured: the rest of
    the table still gets its device times."""
    try:
        return graphs(fn, param, xs, grads)
    except RuntimeError as error:
        torch.cuda.synchronize()
        print(f"{name}: no CUDA-graph device time ({str(error).splitlines()[0]})", flush=True)
        return {}


def saved_bytes(fn, x, param) -> int:
    """Bytes autograd keeps for backward (each storage counted once)."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x, param)
    return sum(seen.values())


def peak_extra_bytes(fn, x, param, g) -> int:
    """Peak memory of one forward+backward above what was allocated before it."""
    _clear(_leaves([x], param))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn(x, param).backward(g)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - start


def per_call_cases(name: str, v: Variant, x, g, warmup_ms: int, rep_ms: int) -> dict:
    """do_bench medians (ms) of one call's forward, backward and forward+backward, as round cases."""
    from triton.testing import do_bench

    kw = dict(warmup=warmup_ms, rep=rep_ms, grad_to_none=_leaves([x], v.param), return_mode="median")
    state = {}

    def backward():
        if "out" not in state:
            state["out"] = v.fn(x, v.param)
        state["out"].backward(g, retain_graph=True)

    def timed(fn):
        def case():
            with kernel_config(v.config):
                return do_bench(fn, **kw)
        return case

    return {(name, "fwd_us"): timed(lambda: v.fn(x, v.param)), (name, "bwd_us"): timed(backward),
            (name, "fwd_bwd_us"): timed(lambda: v.fn(x, v.param).backward(g))}


def table(args, recorder: harness.Recorder) -> None:
    compile_rows = {int(r) for r in args.compile_rows.split(",") if r}
    for dname in args.dtypes.split(","):
        for rows in (int(r) for r in args.rows.split(",")):
            inputs = Inputs(rows, DTYPES[dname])
            shape, n = f"{rows}x{WIDTH}", rows * WIDTH
            table_ = variants(compile_naive=rows in compile_rows)
            device_cases, call_cases = {}, {}
            for name, v in table_.items():
                xs = inputs.of(v.layout)
                if not v.compiled:  # CUDA graphs and a compiled function's own capture do not mix here
                    with kernel_config(v.config):
                        captured = try_graphs(name, v.fn, v.param, xs, inputs.grads)
                    for mode, graph in captured.items():
                        device_cases[(name, f"{mode}_device_us")] = (
                            lambda graph=graph, copies=inputs.copies: harness.replay_ms(graph, args.replays) * 1e3 / copies)
                call_cases |= per_call_cases(name, v, xs[0], inputs.grads[0], args.warmup_ms, args.rep_ms // args.rounds)
                with kernel_config(v.config):
                    if not v.compiled:  # saved-tensor hooks and torch.compile do not mix
                        recorder.add("kernel", name, "saved_bytes_per_element", saved_bytes(v.fn, xs[0], v.param) / n,
                                     dtype=dname, shape=shape)
                    recorder.add("kernel", name, "peak_bytes_per_element",
                                 peak_extra_bytes(v.fn, xs[0], v.param, inputs.grads[0]) / n, dtype=dname, shape=shape)
            samples = harness.interleave(device_cases, args.rounds) | harness.interleave(call_cases, args.rounds, warmup=0)
            for (name, metric), values in samples.items():
                scale = 1.0 if metric.endswith("device_us") else 1e3  # do_bench gives ms
                recorder.add("kernel", name, metric, harness.Stats.of(values).scaled(scale), dtype=dname, shape=shape)
            print_table(recorder, dname, shape)
            recorder.save()  # each size's rows as soon as they are measured
            del inputs, table_, device_cases, call_cases
            torch.cuda.empty_cache()


def print_table(recorder: harness.Recorder, dtype: str, shape: str) -> None:
    figures = defaultdict(dict)
    for r in recorder.rows:
        if r["what"] == "kernel" and r["dtype"] == dtype and r["shape"] == shape:
            figures[r["variant"]][r["metric"]] = float(r["p50"])
    gelu = figures["gelu"]
    print(f"\n{dtype} {shape}: µs (device: CUDA-graph replays; per call: do_bench, L2 flushed), ratios to gelu; B/el: bytes per element")
    print(f"{'variant':20} {'dev fwd':>8} {'dev f+b':>8} {'fwd/gelu':>8} {'f+b/gelu':>8} {'call fwd':>8} {'call f+b':>8} "
          f"{'saved B/el':>10} {'peak B/el':>9}")
    for name, f in figures.items():
        def get(metric):
            return f.get(metric, math.nan)

        print(f"{name:20} {get('fwd_device_us'):8.1f} {get('fwd_bwd_device_us'):8.1f} "
              f"{get('fwd_device_us') / gelu.get('fwd_device_us', math.nan):8.3f} {get('fwd_bwd_device_us') / gelu.get('fwd_bwd_device_us', math.nan):8.3f} "
              f"{get('fwd_us'):8.1f} {get('fwd_bwd_us'):8.1f} {get('saved_bytes_per_element'):10.2f} "
              f"{get('peak_bytes_per_element'):9.2f}", flush=True)


# ---- host time per call -------------------------------------------------------------------------


def host_cases() -> dict[str, object]:
    """id -> one forward+backward call on a 64×64 float32 tensor, per path."""
    from hf_kgelu import KGELU
    from hf_kgelu.ops import kgelu, kgelu_theta, reference

    x = torch.randn(64, 64, device="cuda", requires_grad=True)
    g = torch.randn(64, 64, device="cuda")
    lam = torch.tensor([1.7], device="cuda", requires_grad=True)
    theta = torch.tensor([0.3], device="cuda", requires_grad=True)
    site = KGELU().cuda()
    site(x).backward(g)  # the first call loads (builds, once) the C++ site path
    gelu_module = torch.nn.GELU()

    def fwd_bwd(fn, **switches):
        def call():
            with harness.switches(**switches):
                fn().backward(g)
        return call

    return {
        "gelu": fwd_bwd(lambda: F.gelu(x)),
        "gelu-module": fwd_bwd(lambda: gelu_module(x)),
        "kgelu-site": fwd_bwd(lambda: site(x)),
        "kgelu-site-op": fwd_bwd(lambda: site(x), op_only=True),
        "kgelu-theta": fwd_bwd(lambda: kgelu_theta(x, theta, 0.1)),
        "kgelu": fwd_bwd(lambda: kgelu(x, lam)),
        "custom-op": fwd_bwd(lambda: torch.ops.hf_kgelu.kgelu(x, lam, None)),
        "softplus-in-torch": fwd_bwd(lambda: kgelu(x, 1.0 + F.softplus(theta / 0.1))),
        "torch-path": fwd_bwd(lambda: reference.forward(x, lam, None)),
        "naive": fwd_bwd(lambda: naive_kgelu(x, lam)),
    }


def piece_cases() -> dict[str, object]:
    """id -> one of the parts a λ-GELU call is made of."""
    from hf_kgelu.ops import triton_launch

    x = torch.randn(64, 64, device="cuda")
    theta = torch.tensor([0.3], device="cuda")
    leaf = x.clone().requires_grad_(True)
    partials = torch.randn(4, device="cuda")

    class Identity(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t):
            return t.view_as(t)

        @staticmethod
        def backward(ctx, grad):
            return grad

    return {
        "launcher-triton": lambda: triton_launch.forward(x, theta, 0.1),
        "empty-like": lambda: torch.empty_like(x),
        "sum-of-4-partials": lambda: partials.sum(0, keepdim=True),
        "function-apply": lambda: Identity.apply(leaf),
        "gelu-forward": lambda: F.gelu(x),
    }


def host(args, recorder: harness.Recorder) -> None:
    print(f"\nhost µs per call, 64x64 float32, {args.rounds} interleaved rounds of {args.calls} calls: p50 (p20–p80)")
    for what, cases in (("kernel_host", host_cases()), ("kernel_host_piece", piece_cases())):
        timed = {name: (lambda fn=fn: harness.wall_ms(fn, args.calls) * 1e3) for name, fn in cases.items()}
        for name, values in harness.interleave(timed, args.rounds, warmup=1).items():
            stats = harness.Stats.of(values)
            recorder.add(what, name, "host_us", stats, dtype="fp32", shape="64x64")
            print(f"  {what:17} {name:28} {stats.text()}")
    if args.profile:
        from hf_kgelu import KGELU

        x = torch.randn(64, 64, device="cuda", requires_grad=True)
        g = torch.randn(64, 64, device="cuda")
        site = KGELU().cuda()
        for _ in range(20):
            site(x).backward(g)
        print(harness.profile_calls(lambda: site(x).backward(g), args.calls))


# ---- launch-configuration sweep -----------------------------------------------------------------

SWEEP_CHANGES = (
    [{}]
    + [dict(bwd_block=b, bwd_warps=w) for b, w in ((1024, 2), (2048, 4), (4096, 4))]
    + [dict(fwd_block=b, fwd_warps=w) for b, w in ((1024, 4), (2048, 2), (4096, 4))]
    + [dict(bwd_block_fp32=b, bwd_warps_fp32=w) for b, w in ((1024, 2), (1024, 4), (2048, 4), (4096, 8))]
    + [dict(fwd_block_fp32=b, fwd_warps_fp32=w) for b, w in ((512, 4), (1024, 4), (1024, 2), (2048, 8))]
    + [dict(channel_programs_per_sm=p) for p in (2, 8)]
    + [dict(channel_bwd_block=b, channel_bwd_warps=w) for b, w in ((1024, 8), (4096, 8))]
    + [dict(sum_max_cols=c) for c in (32, 64)]
    + [dict(sum_block=8192, sum_warps=8)]
)


def change_text(change: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in change.items()) or "defaults"


def parse_change(text: str) -> dict:
    if text == "defaults":
        return {}
    out = {}
    for item in text.split():
        key, value = item.split("=", 1)
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


def applies(keys, dtype: str, layout: str) -> bool:
    """Whether changing these CONFIG entries can change the kernels' time for this dtype and
    layout: `channel_*` and `sum_max_cols` act on the per-channel layout alone, `bwd_*` (the
    per-site tile) on the per-site layout alone, `*_fp32` on float32 alone and the other tile
    entries (`fwd_*`, `bwd_*`) on 16-bit inputs alone."""
    for key in keys:
        if (key.startswith("channel_") or key == "sum_max_cols") and layout != "channel":
            return False
        if key.startswith("bwd_") and layout != "site":
            return False
        if key.startswith(("fwd_", "bwd_")) and key.endswith("_fp32") != (dtype == "fp32"):
            return False
    return True


def sweep(args, recorder: harness.Recorder) -> None:
    """Device time of a KGELU site's forward and forward+backward (θ per site and per channel)
    with one CONFIG entry group changed at a time, against torch's GELU, in interleaved rounds."""
    from hf_kgelu.ops import kgelu_theta

    rows = 8192
    shape = f"{rows}x{WIDTH}"
    thetas = {"site": torch.tensor([0.07], device="cuda").requires_grad_(),
              "channel": torch.linspace(-0.3, 2.0, WIDTH, device="cuda").requires_grad_()}
    for dname in args.dtypes.split(","):
        inputs = Inputs(rows, DTYPES[dname])
        cases = {}
        captured = {"gelu": graphs(lambda x, _: F.gelu(x), None, inputs.dense, inputs.grads)}
        for layout, theta in thetas.items():
            for change in SWEEP_CHANGES:
                if applies(change, dname, layout):
                    with kernel_config(change):
                        captured[f"{layout}: {change_text(change)}"] = graphs(
                            lambda x, th: kgelu_theta(x, th, 0.1), theta, inputs.dense, inputs.grads)
        for variant, modes in captured.items():
            for mode, graph in modes.items():
                cases[(variant, f"{mode}_device_us")] = (
                    lambda graph=graph, copies=inputs.copies: harness.replay_ms(graph, args.replays) * 1e3 / copies)
        samples = harness.interleave(cases, args.rounds)
        for (variant, metric), values in samples.items():
            recorder.add("kernel_sweep", variant, metric, harness.Stats.of(values), dtype=dname, shape=shape)
        gelu = {m: statistics.median(v) for (name, m), v in samples.items() if name == "gelu"}
        for (variant, metric), values in samples.items():
            if metric == "fwd_bwd_device_us" and variant != "gelu":
                fwd = statistics.median(samples[(variant, "fwd_device_us")])
                print(f"sweep {dname} {variant:50} fwd {fwd / gelu['fwd_device_us']:.3f}× gelu, "
                      f"fwd+bwd {statistics.median(values) / gelu['fwd_bwd_device_us']:.3f}× gelu", flush=True)
        del inputs, captured, cases
        torch.cuda.empty_cache()


def last_sweep(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(dtype, layout, change) -> {metric: device µs} of the latest sweep in a machine's rows."""
    sweep_rows = [r for r in rows if r["what"] == "kernel_sweep"]
    if not sweep_rows:
        return {}
    date = sweep_rows[-1]["date"]
    out: dict = defaultdict(dict)
    for r in sweep_rows:
        if r["date"] == date and r["variant"] != "gelu":
            layout, change = r["variant"].split(": ", 1)
            out[(r["dtype"], layout, change)][r["metric"]] = float(r["p50"])
    return out


def choose(sweep_: dict, margin: float) -> dict:
    """Per CONFIG entry group, the value with the lowest time relative to the defaults' (same dtype
    and layout; forward time for the forward's own entries, forward+backward otherwise), the per-site
    layout weighted 2:1 over per-channel, if it beats the defaults by more than `margin`. An entry is
    judged only where it acts (`applies`)."""
    relative: dict[str, list[float]] = defaultdict(list)
    for (dtype, layout, change), times in sweep_.items():
        keys = parse_change(change)
        base = sweep_.get((dtype, layout, "defaults"))
        if not keys or base is None or not applies(keys, dtype, layout):
            continue
        metric = "fwd_device_us" if all(k.startswith("fwd_") for k in keys) else "fwd_bwd_device_us"
        relative[change] += [times[metric] / base[metric]] * (2 if layout == "site" else 1)
    groups: dict[tuple, list[str]] = defaultdict(list)
    for change in relative:
        groups[tuple(sorted(parse_change(change)))].append(change)
    chosen: dict = {}
    for changes in groups.values():
        best = min(changes, key=lambda c: statistics.mean(relative[c]))
        if statistics.mean(relative[best]) < 1 - margin:
            chosen.update(parse_change(best))
    return chosen


# ---- command line -------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="table,host", help="comma-separated: table, host, sweep")
    parser.add_argument("--rows", default="256,2048,8192,32768", help="table: comma-separated row counts (× 3072)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated: bf16, fp16, fp32")
    parser.add_argument("--compile-rows", default="8192", help="table: row counts that also get the compiled naive version")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--replays", type=int, default=20, help="CUDA-graph replays per round")
    parser.add_argument("--warmup-ms", type=int, default=25, help="table: do_bench warm-up")
    parser.add_argument("--rep-ms", type=int, default=100, help="table: do_bench time per case, spread over the rounds")
    parser.add_argument("--calls", type=int, default=300, help="host: calls per round")
    parser.add_argument("--profile", action="store_true", help="host: print a cProfile of the KGELU site")
    parser.add_argument("--choose", action="store_true",
                        help="print HF_KGELU_KERNEL_CONFIG JSON from the last sweep in this machine kind's CSV; measure nothing")
    parser.add_argument("--margin", type=float, default=0.01, help="--choose: relative improvement a change must bring")
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - {"table", "host", "sweep"}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from table, host, sweep")
    unknown = set(args.dtypes.split(",")) - set(DTYPES)
    if unknown:
        parser.error(f"--dtypes: unknown {sorted(unknown)}; choose from {', '.join(DTYPES)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.choose:
        recorder = harness.Recorder.from_args(args, "benchmarks.kernel", argv)
        rows = harness.read_rows(recorder.path) if recorder.path.exists() else []
        print(json.dumps(choose(last_sweep(rows), args.margin)))
        return 0
    if not torch.cuda.is_available():
        print("benchmarks.kernel needs a CUDA device (the CPU path: python -m benchmarks.cpu)", file=sys.stderr)
        return 2
    import triton

    recorder = harness.Recorder.from_args(args, "benchmarks.kernel", argv)
    print(f"# {recorder.device}, torch {torch.__version__}, triton {triton.__version__}, {recorder.date} UTC", flush=True)
    parts = args.parts.split(",")
    for part, run in (("sweep", sweep), ("table", table), ("host", host)):
        if part in parts:
            run(args, recorder)
    recorder.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
