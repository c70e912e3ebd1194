"""Host time the annealing callback spends setting λ before every optimizer step.

Once annealing starts, `KGeluHardnessCallback` sets every site's λ before every step. In a
training step whose forward is host-bound (GPT-2 small eager on an H200: benchmarks/step_gaps.py),
that host time adds to the step. This times, per site and per step of a 12-site model, the two
ways a one-λ site can be set:
  number   what the callback does: λ(step) in float arithmetic, `set_lambda(float)` (one fill_)
  tensor   the previous way: λ(step) and θ through float64 tensor ops, `set_lambda(tensor)`
and checks that both write bitwise the same θ.

    python benchmarks/bench_annealing_host.py                # CPU sites
    python benchmarks/bench_annealing_host.py --device cuda  # θ on a GPU (fill_ is a launch)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hf_kgelu import KGELU  # noqa: E402
from hf_kgelu.annealing import AnnealingSchedule  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sites", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    sites = [KGELU().to(args.device) for _ in range(args.sites)]
    schedule = AnnealingSchedule(start_step=0, max_steps=args.steps + 1, target_lambda=159.577, shape="geometric")
    start = [1.5 + 0.1 * i for i in range(args.sites)]

    def by_number(step):
        for site, lam0 in zip(sites, start):
            site.set_lambda(schedule.lambda_at(step, lam0))

    def by_tensor(step):
        for site, lam0 in zip(sites, start):
            site.set_lambda(schedule.lambda_at(step, torch.tensor([lam0], dtype=torch.float64)).reshape(site.theta.shape))

    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times = {"number": [], "tensor": []}
    for _ in range(args.rounds):
        for name, fn in (("number", by_number), ("tensor", by_tensor)):
            sync()
            t0 = time.perf_counter()
            for step in range(1, args.steps + 1):
                fn(step)
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps)
    mismatches = 0
    for step in range(1, args.steps + 1):
        by_number(step)
        thetas = [site.theta.detach().clone() for site in sites]
        by_tensor(step)
        mismatches += sum(not torch.equal(a, site.theta.detach()) for a, site in zip(thetas, sites))
    print(f"# {args.sites} one-λ sites on {args.device}, {args.steps} annealing steps, median of {args.rounds} rounds")
    print(f"{'way':8} {'µs per site':>12} {'ms per step':>12}")
    for name, samples in times.items():
        per_step = statistics.median(samples)
        print(f"{name:8} {per_step / args.sites * 1e6:12.1f} {per_step * 1e3:12.3f}")
    print(f"θ written differently by the two ways: {mismatches} of {args.steps * args.sites}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
