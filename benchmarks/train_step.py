"""Training-step time and peak memory: GELU against λ-GELU (ours) and a naive λ-GELU, per model.

Models (benchmarks/models.py, built from configs): GPT-2 small (8 × 1024 tokens), BERT-base
masked LM (32 × 128 tokens), DeiT-small (64 images of 224²); bf16 autocast, fused AdamW. Variants:
  gelu                    the exact (erf) GELU
  kgelu                   this package's activation (on CUDA: the Triton kernels, the C++ site path)
  kgelu-torch             the same through the torch path (HF_KGELU_FORCE_REFERENCE)
  naive                   x·½·(1 + erf(λx/√2)) with λ = 1 + softplus(θ/τ), plain autograd
  kgelu-op                kgelu with the C++ site path off: every site through the torch.library op

All variants of a model are built (same seed) and warmed up, then timed in interleaved rounds, one
step of each per round with CUDA events (harness.interleave); a step ends synchronised, as a
Trainer step does when it reads the loss. Rows per model and variant: step and host ms, the ratio
to the first variant's step of the same round, device time in kernels (torch.profiler), peak memory
above the resting allocation.

    python -m benchmarks.train_step                                   # gpt2, bert, deit: three ratios
    python -m benchmarks.train_step --models gpt2 --variants gelu,kgelu,kgelu-op --steps 150
    python -m benchmarks.train_step --models gpt2 --compile --variants gelu,kgelu
    python -m benchmarks.train_step --models gpt2 --gaps --variants gelu,kgelu   # where the device idles
    python -m benchmarks.train_step --tiny --device cpu --steps 2 --no-save      # smoke test
"""

from __future__ import annotations

import argparse
import collections
import math
import sys

import torch
from torch import nn

from benchmarks import harness, models

VARIANTS = ("gelu", "kgelu", "kgelu-torch", "naive", "kgelu-op")
DEFAULT_VARIANTS = VARIANTS[:4]
PHASES = ("forward", "backward", "optimizer")


class NaiveKGELU(nn.Module):
    """λ-GELU written the obvious way, for comparison: autograd keeps every intermediate."""

    def __init__(self, lambda_init: float, tau: float):
        super().__init__()
        from hf_kgelu.hardness import theta_from_lambda

        self.tau = tau
        self.theta = nn.Parameter(torch.tensor([theta_from_lambda(lambda_init, tau)], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = 1.0 + nn.functional.softplus(self.theta / self.tau)
        return x * 0.5 * (1.0 + torch.erf(lam * x / math.sqrt(2.0)))


def build_model(name: str, variant: str, tiny: bool) -> nn.Module:
    net = models.build(name, "gelu" if variant == "gelu" else "kgelu", tiny)
    if variant == "naive":
        from hf_kgelu.modeling import find_sites

        for site_name, site in find_sites(net):
            parent, _, attr = site_name.rpartition(".")
            setattr(net.get_submodule(parent), attr, NaiveKGELU(float(site.lam.detach().mean()), site.tau))
    return net


def variant_switches(variant: str):
    return harness.switches(torch_path=variant == "kgelu-torch", op_only=variant == "kgelu-op")


def build_step(args, name: str, variant: str, marker=None):
    """One training step of a fresh model of this variant (its optimizer and batch kept), as a
    function; `marker()`, if given, runs before the forward, the backward and the optimizer."""
    from hf_kgelu.ops import native

    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    net = build_model(name, variant, args.tiny).to(args.device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda)
    config = net.config
    if args.compile:  # forward and backward compiled (the warm-up steps compile)
        net = torch.compile(net)
    batch = models.make_batch(name, config, args.batch or models.spec(name).batch, models.seq_len(name, args.tiny, args.seq),
                              args.device)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16)
    if cuda and variant.startswith("kgelu"):
        native.load()  # built and loaded now, not inside a timed step
    mark = marker or (lambda: None)

    def step():
        with variant_switches(variant):
            mark()
            with autocast:
                loss = net(**batch).loss
            mark()
            loss.backward()
            mark()
            opt.step()
            opt.zero_grad(set_to_none=True)

    return step


def time_step(step, cuda: bool) -> dict[str, float]:
    """One step: ms (CUDA events; wall time on CPU), host ms until the step was issued, and peak
    bytes above the resting allocation."""
    if not cuda:
        ms = harness.wall_ms(step)
        return dict(ms=ms, host_ms=ms, peak=0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    resting = torch.cuda.memory_allocated()
    host = {}
    ms = harness.cuda_ms(lambda: host.update(ms=harness.issue_ms(step)))
    return dict(ms=ms, host_ms=host["ms"], peak=torch.cuda.max_memory_allocated() - resting)


def kernel_time(step, steps: int = 5) -> tuple[float, float]:
    """(ms in kernels per step, of which in the activation's: names with "gelu") from torch.profiler.
    Step time minus kernel time is time the device waited for the host."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    total = activation = 0.0
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", None)
        us = event.self_cuda_time_total if us is None else us
        total += us
        if "gelu" in event.key.lower():
            activation += us
    return total / steps / 1e3, activation / steps / 1e3


def measure(args, name: str, names: list[str], recorder: harness.Recorder) -> dict[str, float]:
    """Interleaved rounds of every variant's step; rows added; the median ratio of each to the first."""
    cuda = args.device.startswith("cuda")
    batch, seq = args.batch or models.spec(name).batch, models.seq_len(name, args.tiny, args.seq)
    shape = models.shape(name, batch, seq, args.tiny)
    what = "train_step_compiled" if args.compile else "train_step"
    steps = {v: build_step(args, name, v) for v in names}
    samples = harness.interleave({v: (lambda s=steps[v]: time_step(s, cuda)) for v in names}, args.steps, warmup=args.warmup)
    base = names[0]
    print(f"\n# {shape}{', torch.compile' if args.compile else ''}; {args.steps} interleaved rounds; ratio: the step over "
          f"{base}'s of the same round; kernels: device time in kernels per step (act.: the activation's); peak: above the "
          "resting allocation")
    print(f"{'variant':22} {'step ms':>8} {'host ms':>8} {'kernels':>8} {'act.':>6} {'peak GiB':>9}  ratio p50 (p20–p80)")
    medians = {}
    for v in names:
        ms = [s["ms"] for s in samples[v]]
        ratio = harness.Stats.of(harness.ratios(ms, [s["ms"] for s in samples[base]]))
        kernels, act = kernel_time(steps[v]) if cuda else (None, None)
        peak = max(s["peak"] for s in samples[v]) / 2**30
        figures = {"step_ms": harness.Stats.of(ms),
                   "host_ms": harness.Stats.of([s["host_ms"] for s in samples[v]]) if cuda else None,
                   "kernel_ms": kernels, "activation_kernel_ms": act, f"ratio_vs_{base}": ratio, "peak_gib": peak if cuda else None}
        for metric, value in figures.items():
            recorder.add(what, v, metric, value, dtype="bf16", shape=shape)
        medians[v] = ratio.p50
        host = figures["host_ms"].p50 if cuda else math.nan
        print(f"{v:22} {figures['step_ms'].p50:8.2f} {host:8.2f} {_or_nan(kernels):8.2f} {_or_nan(act):6.2f} {peak:9.2f}  "
              f"{ratio.text('.3f')}")
    if args.host_profile:
        for v in names:
            print(f"----- cProfile of 5 {v} steps\n" + harness.profile_calls(steps[v], 5, top=30))
    return medians


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


# ---- where the device idles --------------------------------------------------------------------

MARKER = "spin"  # torch.cuda._sleep's kernel: the phase boundaries on the device timeline


def kernel_timeline(step, steps: int) -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of every kernel of `steps` steps, in device order."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
            torch.cuda.synchronize()  # each step starts on an idle device, as in `measure`
    kernels = [(e.name(), e.start_ns(), e.start_ns() + e.duration_ns()) for e in prof.profiler.kineto_results.events()
               if e.device_type() == DeviceType.CUDA and e.duration_ns() > 0 and "Memcpy" not in e.name()
               and "Memset" not in e.name()]
    return sorted(kernels, key=lambda k: k[1])


def gaps_by_phase(kernels, steps: int, top: int):
    """Per phase: device busy and idle ms per step; and the kernels that ended the longest waits
    (phase, name, µs of idle before them per step, waits per step). The wait before a step's first
    marker (the sync between steps) is not counted."""
    idle, busy = collections.Counter(), collections.Counter()
    by_kernel = collections.defaultdict(lambda: [0, 0])
    markers, previous_end = 0, None
    for name, start, end in kernels:
        if MARKER in name:
            markers += 1
            previous_end = end
            continue
        if not markers:
            continue
        phase = PHASES[(markers - 1) % 3]
        if start > previous_end:
            idle[phase] += start - previous_end
            entry = by_kernel[(phase, name[:70])]
            entry[0] += start - previous_end
            entry[1] += 1
        busy[phase] += end - start
        previous_end = max(end, previous_end)
    per_step = {p: (busy[p] / steps / 1e6, idle[p] / steps / 1e6) for p in PHASES}
    worst = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    return per_step, [(phase, name, gap / steps / 1e3, count / steps) for (phase, name), (gap, count) in worst]


def gaps(args, name: str, names: list[str], recorder: harness.Recorder) -> None:
    """Device busy and idle ms per phase of each variant's step, profiled in interleaved rounds."""
    shape = models.shape(name, args.batch or models.spec(name).batch, models.seq_len(name, args.tiny, args.seq), args.tiny)
    steps = {v: build_step(args, name, v, marker=lambda: torch.cuda._sleep(1)) for v in names}
    samples = harness.interleave({v: (lambda s=steps[v]: gaps_by_phase(kernel_timeline(s, args.gap_steps), args.gap_steps, 12))
                                  for v in names}, args.rounds, warmup=1)
    print(f"\n# {shape}: device busy / idle ms per step and phase, {args.gap_steps} profiled steps × {args.rounds} rounds; "
          "then the kernels that ended the longest waits in the last round (µs of idle before them per step, waits per step)")
    for v in names:
        for phase_index, phase in enumerate(PHASES):
            for kind, index in (("busy", 0), ("idle", 1)):
                values = [per_step[phase][index] for per_step, _ in samples[v]]
                recorder.add("step_gaps", v, f"{phase}_{kind}_ms", harness.Stats.of(values), dtype="bf16", shape=shape)
        last, worst = samples[v][-1]
        print(f"{v}: " + "  ".join(f"{p} {b:.2f}/{i:.2f}" for p, (b, i) in last.items()))
        for phase, kernel, gap_us, count in worst:
            print(f"  {phase:9} {gap_us:9.1f} µs  {count:6.1f}×  {kernel}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(models.MODELS), help=f"comma-separated, from {', '.join(models.MODELS)}")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--batch", type=int, default=None, help="default: the model's (gpt2 8, bert 32, deit 64)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: gpt2 1024, bert 128)")
    parser.add_argument("--steps", type=int, default=60, help="timed rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="2-layer, 32-wide models (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default: eager)")
    parser.add_argument("--host-profile", action="store_true", help="print a cProfile of 5 steps of each variant")
    parser.add_argument("--gaps", action="store_true", help="instead of timing: the device's idle gaps per phase")
    parser.add_argument("--gap-steps", type=int, default=5, help="--gaps: profiled steps per round")
    parser.add_argument("--rounds", type=int, default=2, help="--gaps: interleaved rounds")
    harness.add_arguments(parser)
    args = parser.parse_args(argv)
    for option, chosen, allowed in (("--models", args.models, models.MODELS), ("--variants", args.variants, VARIANTS)):
        unknown = sorted(set(chosen.split(",")) - set(allowed))
        if unknown:
            parser.error(f"{option}: unknown {unknown}; choose from {', '.join(allowed)}")
    if args.gaps and not args.device.startswith("cuda"):
        parser.error("--gaps profiles CUDA kernels: it needs a CUDA device")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import transformers

    recorder = harness.Recorder.from_args(args, "benchmarks.train_step", argv)
    names = args.variants.split(",")
    print(f"# {recorder.device}, torch {torch.__version__}, transformers {transformers.__version__}, {recorder.date} UTC; "
          "bf16 autocast, fused AdamW", flush=True)
    summary = {}
    for name in args.models.split(","):
        if args.gaps:
            gaps(args, name, names, recorder)
        else:
            summary[name] = measure(args, name, names, recorder)
        recorder.save()  # each model's rows as soon as it is done (a time-boxed run keeps them)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    for name, medians in summary.items():
        print(f"{name}: " + ", ".join(f"{v} {r:.3f}×" for v, r in medians.items() if v != names[0]) + f" {names[0]}'s step")
    recorder.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
