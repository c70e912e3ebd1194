"""Training-step time and peak memory: GELU vs λ-GELU (ours) vs a naive λ-GELU module.

Models are built from configs (no pretrained weights needed): GPT-2 small (12 layers, 768
wide, batch 8 × 1024 tokens) and DeiT-small (12 layers, 384 wide, 224² images, batch 64), bf16
autocast, fused AdamW. "gelu" is the exact (erf) GELU; "kgelu" is this package's activation
(the Triton kernel on CUDA); "kgelu-torch" is the same with HF_KGELU_FORCE_REFERENCE (the torch
path); "naive" is a plain module computing x·½·(1 + erf(λx/√2)) with λ = 1 + softplus(θ/τ);
"kgelu-triton-launch" (not run by default) is "kgelu" launching through Triton's `kernel[grid]`
each time instead of directly (hf_kgelu.kernels.kgelu.DIRECT_LAUNCH = False);
"kgelu-python-launcher" (not run by default) is "kgelu" with the C++ site path off (the sites'
host path in Python, as before it existed).

    python benchmarks/bench_train_step.py --model gpt2
    python benchmarks/bench_train_step.py --model deit --csv outputs/bench/train_step_deit.csv
    python benchmarks/bench_train_step.py --model gpt2 --compile --variants gelu,kgelu
    python benchmarks/bench_train_step.py --tiny --device cpu --steps 2   # smoke test

All variants are built (same seed) and warmed up, then timed in interleaved rounds, one step of
each per round with CUDA events, so drift of the clock or of neighbours on a shared machine hits
them alike; reported: the median step, the median and quartiles of the per-round ratio to the
first variant, and the step's peak memory above the resting allocation. Prints a table, writes
a CSV.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import statistics
import sys
import time

import torch
from torch import nn

from bench_host import profile_calls  # the script's own folder is on sys.path

VARIANTS = ("gelu", "kgelu", "kgelu-torch", "naive", "kgelu-triton-launch", "kgelu-python-launcher")
DEFAULT_VARIANTS = VARIANTS[:4]


class NaiveKGELU(nn.Module):
    """λ-GELU written the obvious way, for comparison: autograd keeps every intermediate."""

    def __init__(self, lambda_init: float, tau: float):
        super().__init__()
        from hf_kgelu.functional import theta_from_lambda

        self.tau = tau
        self.theta = nn.Parameter(torch.tensor([theta_from_lambda(lambda_init, tau)], dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = 1.0 + nn.functional.softplus(self.theta / self.tau)
        return x * 0.5 * (1.0 + torch.erf(lam * x / math.sqrt(2.0)))


def build_model(model: str, activation: str, tiny: bool):
    import hf_kgelu  # noqa: F401  (registers "kgelu")
    from transformers import DeiTConfig, DeiTForImageClassification, GPT2Config, GPT2LMHeadModel

    act = "gelu" if activation == "gelu" else "kgelu"
    if model == "gpt2":
        size = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=97) if tiny else dict(
            n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257
        )
        net = GPT2LMHeadModel(GPT2Config(**size, activation_function=act))
    elif model == "deit":
        size = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                    image_size=32, patch_size=8, num_labels=10) if tiny else dict(
            num_hidden_layers=12, hidden_size=384, num_attention_heads=6, intermediate_size=1536,
            image_size=224, patch_size=16, num_labels=1000)
        net = DeiTForImageClassification(DeiTConfig(**size, hidden_act=act))
    else:
        raise ValueError(f"unknown model {model!r}: use gpt2 or deit")
    if activation == "naive":
        from hf_kgelu.modules import find_sites

        for name, site in find_sites(net):
            parent_name, _, attr = name.rpartition(".")
            lam = float(site.lam.detach().mean())
            setattr(net.get_submodule(parent_name), attr, NaiveKGELU(lam, site.tau))
    return net


def make_batch(model: str, net, batch: int, seq: int, device: str):
    cfg = net.config
    if model == "gpt2":
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)
        return dict(input_ids=ids, labels=ids)
    pixels = torch.randn(batch, cfg.num_channels, cfg.image_size, cfg.image_size, device=device)
    return dict(pixel_values=pixels, labels=torch.randint(0, cfg.num_labels, (batch,), device=device))


def build_step(args, variant: str):
    """A model of this variant with its optimizer and batch, and a function running one
    training step of it (setting the kernel/torch-path flag the variant needs)."""
    from hf_kgelu import functional

    try:
        from hf_kgelu.kernels import kgelu as kernel_module
    except ImportError:  # no triton (CPU)
        kernel_module = None
    torch.manual_seed(0)
    cuda = args.device.startswith("cuda")
    net = build_model(args.model, variant, args.tiny).to(args.device)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda)
    if args.compile:  # forward and backward compiled (the warm-up steps compile): little host time left
        net = torch.compile(net)
    batch = make_batch(args.model, net, args.batch, args.seq, args.device)
    autocast = torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16)

    if cuda and variant.startswith("kgelu") and not functional._site_launcher_tried:
        functional._load_site_launcher()  # now, not inside a timed step (a python-launcher step turns it off)

    def step():
        functional.FORCE_REFERENCE = variant == "kgelu-torch"
        if kernel_module is not None:
            kernel_module.DIRECT_LAUNCH = variant != "kgelu-triton-launch"
        site_path = functional._site_launcher_ready
        if variant == "kgelu-python-launcher":
            functional._site_launcher_ready = False
        with autocast:
            loss = net(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        functional.FORCE_REFERENCE = False
        functional._site_launcher_ready = site_path
        if kernel_module is not None:
            kernel_module.DIRECT_LAUNCH = True

    step.parts = (net, opt, batch, autocast)  # for step_gaps.py, which times the phases apart
    return step


def time_step(step, cuda: bool) -> tuple[float, float, int]:
    """(ms, host ms, peak bytes above the resting allocation) of one step, synchronised at its
    end as a Trainer step is (it reads the loss), so host time shows wherever it exceeds the
    device's. Host ms: until the host has issued the whole step (≈ ms when the host is the
    bottleneck)."""
    if not cuda:
        t0 = time.perf_counter()
        step()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms, 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    resting = torch.cuda.memory_allocated()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    t0 = time.perf_counter()
    step()
    host_ms = (time.perf_counter() - t0) * 1e3
    end.record()
    end.synchronize()
    return start.elapsed_time(end), host_ms, torch.cuda.max_memory_allocated() - resting


def device_time(step, steps: int = 5) -> tuple[float, float]:
    """(ms of kernels per step, ms of which in the activation's kernels: names with "gelu", i.e.
    torch's GELU and ours) from torch.profiler's CUDA activity. Step time minus kernel time is
    time the device waited for the host."""
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2", choices=["gpt2", "deit"])
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--batch", type=int, default=None, help="default: 8 (gpt2), 64 (deit)")
    parser.add_argument("--seq", type=int, default=1024, help="tokens per sequence (gpt2)")
    parser.add_argument("--steps", type=int, default=60, help="timed rounds (one step of every variant each)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="2-layer, 32-wide models (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (default: eager)")
    parser.add_argument("--host-profile", action="store_true", help="print a cProfile of 5 steps of each variant")
    parser.add_argument("--csv", default=None, help="default: outputs/bench/train_step_<model>.csv")
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = 8 if args.model == "gpt2" else 64
    if args.tiny:
        args.seq = min(args.seq, 64)
    csv_path = args.csv or f"outputs/bench/train_step_{args.model}.csv"
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    names = args.variants.split(",")
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")

    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    import transformers

    header = (f"# {args.model}{' (tiny)' if args.tiny else ''}{', torch.compile' if args.compile else ''}, batch {args.batch}"
              f"{f' × {args.seq} tokens' if args.model == 'gpt2' else ''}, bf16 autocast, fused AdamW; "
              f"{device_name}, torch {torch.__version__}, transformers {transformers.__version__}, {stamp}")
    print(header, flush=True)
    # Every variant lives at once and the steps are interleaved round by round (in a rotating
    # order), so clock and neighbour drift hit all variants alike; the ratio is taken per round.
    steps = {v: build_step(args, v) for v in names}
    for v in names:
        for _ in range(args.warmup):
            steps[v]()
    times = {v: [] for v in names}
    host_times = {v: [] for v in names}
    peaks = {v: 0 for v in names}
    for round_ in range(args.steps):
        order = names[round_ % len(names):] + names[: round_ % len(names)]
        for v in order:
            ms, host_ms, peak = time_step(steps[v], cuda)
            times[v].append(ms)
            host_times[v].append(host_ms)
            peaks[v] = max(peaks[v], peak)
    kernel_ms = {v: device_time(steps[v]) if cuda else (math.nan, math.nan) for v in names}
    base = names[0]
    records = []
    for v in names:
        ratios = sorted(t / b for t, b in zip(times[v], times[base], strict=True))
        quart = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        records.append(dict(
            model=args.model, tiny=args.tiny, device=device_name, batch=args.batch, variant=v,
            step_ms_median=statistics.median(times[v]), host_ms_median=statistics.median(host_times[v]),
            kernel_ms=kernel_ms[v][0], activation_kernel_ms=kernel_ms[v][1],
            ratio_median=statistics.median(ratios),
            ratio_q1=quart[0], ratio_q3=quart[2], step_peak_gib=peaks[v] / 2**30,
            peak_vs_first=peaks[v] / (peaks[base] or 1),
        ))
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    print(header)
    print(f"{args.steps} interleaved rounds; ratio = this variant's step / {base}'s step of the same round; "
          "host ms = time to issue the step; kernels = device time in kernels per step (torch.profiler), "
          "act. = of which in the activation's kernels; step peak = peak memory of a step above the resting allocation "
          "(weights, optimizer state)")
    print(f"{'variant':19} {'step ms':>9} {'host ms':>8} {'kernels':>8} {'act.':>6} {f'ratio vs {base}':>15} {'ratio IQR':>15} {'step peak GiB':>14} {f'peak vs {base}':>13}")
    for r in records:
        print(f"{r['variant']:19} {r['step_ms_median']:9.2f} {r['host_ms_median']:8.2f} {r['kernel_ms']:8.2f} {r['activation_kernel_ms']:6.2f} "
              f"{r['ratio_median']:15.3f} "
              f"{r['ratio_q1']:7.3f}–{r['ratio_q3']:.3f} {r['step_peak_gib']:14.2f} {r['peak_vs_first']:13.3f}")
    if args.host_profile:
        for v in names:
            print(f"----- cProfile of 5 {v} steps")
            print(profile_calls(steps[v], 5, top=30))
    print(f"CSV: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
