"""Where a training step's device waits for the host: idle gaps between kernels, per phase.

A step whose kernels take as long as GELU's but whose step time is longer spends the difference
with the device idle, waiting for the host to launch the next kernel. This profiles a few steps
of each variant (CUDA activity only, so the profiler adds little host time), orders the kernels
on the device timeline, and sums the gaps before each kernel by phase (forward, backward,
optimizer: each begins with a marker kernel) and by the name of the kernel that ended the wait.

    python benchmarks/step_gaps.py --model gpt2 --variants gelu,kgelu --steps 5
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_train_step import build_step  # noqa: E402

MARKER = "spin"  # torch.cuda._sleep's kernel: the phase boundaries on the device timeline


def _marker() -> None:
    torch.cuda._sleep(1)


def phased_step(args, variant: str):
    """A training step like bench_train_step's, with a marker kernel before each phase."""
    from hf_kgelu import functional

    step = build_step(args, variant)
    net, opt, batch, autocast = step.parts

    def run():
        functional.FORCE_REFERENCE = variant == "kgelu-torch"
        _marker()
        with autocast:
            loss = net(**batch).loss
        _marker()
        loss.backward()
        _marker()
        opt.step()
        opt.zero_grad(set_to_none=True)
        functional.FORCE_REFERENCE = False

    return run


def kernel_timeline(run, steps: int) -> list[tuple[str, int, int]]:
    """(name, start ns, end ns) of every kernel of `steps` steps, in device order."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            run()
            torch.cuda.synchronize()  # as bench_train_step: each step starts on an idle device
    kernels = [
        (e.name(), e.start_ns(), e.start_ns() + e.duration_ns())
        for e in prof.profiler.kineto_results.events()
        if e.device_type() == DeviceType.CUDA and e.duration_ns() > 0 and "Memcpy" not in e.name() and "Memset" not in e.name()
    ]
    return sorted(kernels, key=lambda k: k[1])


def gaps_by_phase(kernels, steps: int, top: int):
    """Per phase: device busy and idle ms per step; and the kernels that ended the longest waits.
    A marker kernel starts each phase; the wait before a step's first marker (the sync between
    steps) is not counted."""
    phases = ("forward", "backward", "optimizer")
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
        phase = phases[(markers - 1) % 3]
        gap = start - previous_end
        if gap > 0:
            idle[phase] += gap
            entry = by_kernel[(phase, name[:70])]
            entry[0] += gap
            entry[1] += 1
        busy[phase] += end - start
        previous_end = max(end, previous_end)
    per_step = {p: (busy[p] / steps / 1e6, idle[p] / steps / 1e6) for p in phases}
    worst = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    return per_step, [(phase, name, gap / steps / 1e3, count / steps) for (phase, name), (gap, count) in worst]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gpt2", choices=["gpt2", "deit"])
    parser.add_argument("--variants", default="gelu,kgelu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("step_gaps.py needs a CUDA device")
        return 2
    args.device, args.compile = "cuda", False
    if args.batch is None:
        args.batch = 8 if args.model == "gpt2" else 64
    print(f"# {args.model}, batch {args.batch}, {args.steps} profiled steps, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("per step: device busy / idle ms in each phase; then the kernels that ended the longest waits "
          "(µs of idle before them per step, and how many such waits per step)")
    for variant in args.variants.split(","):
        per_step, worst = gaps_by_phase(kernel_timeline(phased_step(args, variant), args.steps), args.steps, args.top)
        total_busy = sum(b for b, _ in per_step.values())
        total_idle = sum(i for _, i in per_step.values())
        phases = "  ".join(f"{p} {b:.2f}/{i:.2f}" for p, (b, i) in per_step.items())
        print(f"\n{variant}: busy {total_busy:.2f} ms, idle {total_idle:.2f} ms per step  ({phases})")
        for phase, name, gap_us, count in worst:
            print(f"  {phase:9} {gap_us:9.1f} µs  {count:6.1f}×  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
