"""The Kernel section: device time against GELU, by size, host time per call, the sweep, the targets."""

from __future__ import annotations

from benchmarks.report.tables import Index, Results, groups, label, num, ratio, spread, table, topic, elements

KERNEL_VARIANTS = {
    "gelu": "torch GELU", "relu": "ReLU", "naive": "naive λ-GELU (autograd)", "naive-compiled": "naive λ-GELU, torch.compile",
    "kgelu-site": "**λ-GELU, KGELU site (θ)**", "kgelu-site-channel": "λ-GELU, KGELU site, per-channel θ",
    "kgelu": "λ-GELU, `kgelu(x, λ)`", "kgelu-frozen": "λ-GELU, λ frozen", "kgelu-channel": "λ-GELU, per-channel λ",
    "kgelu-erfc": "λ-GELU, Φ by libdevice erfc", "kgelu-erf": "λ-GELU, Φ by ½(1+erf) (inexact tail)",
    "gelu-transposed": "GELU, transposed input", "kgelu-transposed": "λ-GELU, transposed input (in place)",
}
HOST_CASES = {
    "gelu": "`F.gelu`", "gelu-module": "`nn.GELU` module", "kgelu-site": "**`KGELU` module (C++ site path)**",
    "kgelu-site-op": "`KGELU` module, through the op (C++ site path off)",
    "kgelu-site-python-launcher": "`KGELU` module, Python launcher", "kgelu-site-triton-launch": "`KGELU` module, Triton's launcher every call",
    "kgelu-theta": "`kgelu_theta(x, θ, τ)`", "kgelu": "`kgelu(x, λ)`", "kgelu-function": "`KGeluKernelFunction.apply(x, λ)`",
    "custom-op": "custom op `hf_kgelu::kgelu` (what torch.compile traces)", "softplus-in-torch": "λ = 1 + softplus(θ/τ) in torch, then `kgelu`",
    "torch-path": "torch path (`KGeluFunction`)", "naive": "naive λ-GELU (autograd)",
    "launcher-direct": "our forward launcher, direct launch", "launcher-triton": "our forward launcher, through Triton",
    "empty-like": "`torch.empty_like(x)`", "sum-of-4-partials": "`torch.sum` of 4 partials",
    "function-apply": "`autograd.Function.apply` (identity)", "gelu-forward": "`F.gelu` forward (no grad)",
}
MAIN_SHAPE = "8192x3072"


def kernel_tables(res: Results) -> list[str]:
    parts = []
    for (kind,), rows in groups(res.of("kernel"), "kind").items():
        idx = Index(rows, ("dtype", "shape", "variant", "metric"))
        body = []
        for (dtype, shape), block in groups([r for r in rows if r["shape"] == MAIN_SHAPE], "dtype", "shape").items():
            gelu_f, gelu_fb = idx.value(dtype, shape, "gelu", "fwd_device_us"), idx.value(dtype, shape, "gelu", "fwd_bwd_device_us")
            for (variant,), vrows in groups(block, "variant").items():
                get = lambda m: idx.value(dtype, shape, variant, m)  # noqa: E731
                body.append(([dtype, label(KERNEL_VARIANTS, variant), num(get("fwd_device_us"), 1), num(get("fwd_bwd_device_us"), 1),
                              ratio(get("fwd_device_us"), gelu_f, 2), ratio(get("fwd_bwd_device_us"), gelu_fb, 3),
                              num(get("saved_bytes_per_element")), num(get("peak_bytes_per_element"))], vrows))
        parts.append(f"**At {MAIN_SHAPE.replace('x', ' × ')} ({elements(MAIN_SHAPE) / 1e6:.1f} M elements)**, device time:\n\n" + table(
            ["dtype", "variant", "fwd µs", "f+b µs", "fwd / GELU", "f+b / GELU", "saved B/el", "peak B/el"], body, "llrrrrrr"))
        sizes = []
        for (shape,), block in groups(rows, "shape").items():
            cells, used = [f"{elements(shape) / 1e6:.1f} M"], []
            for variant in ("kgelu-site", "kgelu-frozen", "kgelu-site-channel"):
                pair = []
                for dtype in ("bf16", "fp32"):
                    pair.append(ratio(idx.value(dtype, shape, variant, "fwd_bwd_device_us"), idx.value(dtype, shape, "gelu", "fwd_bwd_device_us")))
                    used += [idx.get(dtype, shape, variant, "fwd_bwd_device_us"), idx.get(dtype, shape, "gelu", "fwd_bwd_device_us")]
                cells.append(" / ".join(pair))
            sizes.append((cells, used))
        parts.append("**Forward+backward against GELU by size** (device time, bf16 / fp32):\n\n"
                     + table(["elements", "KGELU site (θ)", "λ frozen", "KGELU site, per-channel θ"], sizes))
    return parts


def host_tables(res: Results) -> list[str]:
    parts = []
    for what, title in (("kernel_host", "**Host time per forward+backward call**, 64 × 64 float32 (the device idles), µs, "
                                          "p50 (p20–p80) over interleaved rounds:"),
                        ("kernel_host_piece", "**The pieces of a call**, host µs:")):
        for (kind,), rows in groups(res.of(what), "kind").items():
            parts.append(f"{title}\n\n" + table(["case", "host µs"], [([label(HOST_CASES, r["variant"]), spread(r, 1)], [r]) for r in rows]))
    return parts


def sweep_table(res: Results) -> list[str]:
    parts = []
    for (kind,), rows in groups(res.of("kernel_sweep"), "kind").items():
        idx = Index(rows, ("dtype", "variant", "metric"))
        body = []
        for (dtype,), block in groups(rows, "dtype").items():
            for layout in ("site", "channel"):
                changes = {r["variant"].split(": ", 1)[1] for r in block if r["variant"].startswith(f"{layout}: ")}
                if "defaults" not in changes:
                    continue
                fb = {c: idx.value(dtype, f"{layout}: {c}", "fwd_bwd_device_us") for c in changes}
                best = min(changes - {"defaults"}, key=lambda c: fb[c], default=None)
                gelu = idx.value(dtype, "gelu", "fwd_bwd_device_us")
                body.append(([dtype, layout, ratio(fb["defaults"], gelu), f"`{best}`" if best else "–", ratio(fb.get(best), gelu)],
                             [idx.get(dtype, f"{layout}: defaults", "fwd_bwd_device_us"), idx.get(dtype, "gelu", "fwd_bwd_device_us")]))
        parts.append("**Launch configuration sweep** (`--parts sweep`, 8192 × 3072): forward+backward device time against GELU "
                     "with the defaults and with the best single change; `python -m benchmarks.kernel --choose` turns the last "
                     "sweep into `HF_KGELU_KERNEL_CONFIG`:\n\n"
                     + table(["dtype", "θ layout", "defaults", "best change", "with it"], body, "llrlr"))
    return parts


TARGETS = (  # label, what, variant, metric, baseline variant (None: the value itself), bound
    ("KGELU site forward ≤ 1.05 × GELU, bf16 / fp32 (25 M elements, device time)", "kernel", "kgelu-site", "fwd_device_us", "gelu", 1.05),
    ("KGELU site forward+backward ≤ 1.05 × GELU, bf16 / fp32", "kernel", "kgelu-site", "fwd_bwd_device_us", "gelu", 1.05),
    ("bytes saved for backward ≤ GELU's, bf16 / fp32", "kernel", "kgelu-site", "saved_bytes_per_element", "gelu", 1.0 + 1e-4),
)


def targets_table(res: Results) -> str:
    body = []
    for text, what, variant, metric, base, bound in TARGETS:
        rows = [res.of(what, variant=variant, metric=metric, dtype=d, shape=MAIN_SHAPE) for d in ("bf16", "fp32")]
        bases = [res.of(what, variant=base, metric=metric, dtype=d, shape=MAIN_SHAPE) for d in ("bf16", "fp32")]
        if not all(rows) or not all(bases):
            continue
        values = [float(r[0]["p50"]) / float(b[0]["p50"]) for r, b in zip(rows, bases, strict=True)]
        body.append(([text, " / ".join(num(v, 3) for v in values), "met" if max(values) <= bound else "**not met**"],
                     [r[0] for r in rows] + [b[0] for b in bases]))
    for (shape, what), rows in groups(res.of("train_step", "train_step_compiled", variant="kgelu", metric="ratio_vs_gelu"),
                                      "shape", "what").items():
        compiled = what.endswith("compiled")
        bound = 1.00 if compiled else 1.02  # the op's issue: eager within 2 %, compiled no slower
        value = float(rows[0]["p50"])
        body.append(([f"{shape} training step ≤ {bound:.2f} × GELU's, {'compiled' if compiled else 'eager'}", num(value, 3),
                      "met" if value <= bound else "**not met**"], rows))
    return "**Targets**, from the tables here:\n\n" + table(["target", "measured", ""], body, "lrl") if body else ""


def section(res: Results) -> str:
    intro = ("The fused Triton λ-GELU kernels against torch's GELU on one GPU. A `KGELU` site runs `kgelu_theta(x, θ, τ)`: "
             "the kernels compute λ = 1 + softplus(θ/τ) and dθ themselves, one forward launch and, backward, one kernel "
             "plus a small fixed-order partial-sum kernel; a site with one θ on a contiguous input makes one call into "
             "the C++ site path. Device time: CUDA-graph replays over distinct inputs (several times the L2), the kernels "
             "alone; p50 of interleaved rounds. The input is (rows, 3072), GPT-2 small's MLP width; θ/λ require grad "
             "unless \"frozen\". Per-call times with the L2 flushed (`triton.testing.do_bench`: host time shows where "
             "it exceeds the device's) are in the CSV (metrics `fwd_us`, `bwd_us`, `fwd_bwd_us`). Command: "
             "`python -m benchmarks.kernel`; `python benchmarks/kernel_instructions.py` counts the kernels' SASS "
             "instructions per element (no GPU needed; `tests/test_kernel_gpu.py` keeps them within budget).")
    return topic("Kernel", intro, [*kernel_tables(res), *host_tables(res), *sweep_table(res), targets_table(res)])
