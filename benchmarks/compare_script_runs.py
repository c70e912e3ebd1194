"""Compare the script runs of `benchmarks/run_scripts_multi_gpu.sh`: each 2-process run (DDP,
FSDP2) against the 1-process run of the same script and global batch, and the resumed DDP run
against the uninterrupted one.

For each pair: the final ReLU models (loaded by stock transformers from their folders: weights
and logits on a fixed input), the metric before/after the swap, λ at the anneal switch and at
the end, the step at which annealing started (from hardness_history.json), the largest θ
difference between ranks that `KGeluDistributedCallback` logged, and the checkpoints written.

    python benchmarks/compare_script_runs.py RUNS_DIR --out summary.json
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

SYNC_KEY = "kgelu/theta_sync_max_diff"


def _anneal_step(run: Path) -> int | None:
    history = json.loads((run / "hardness_history.json").read_text())
    return next((s["step"] for s in history["steps"] if s.get("phase") == "anneal"), None)


def _sync_diffs(log: Path) -> list[float]:
    """Every θ-sync figure the run logged (Trainer log lines print the logs dict)."""
    if not log.exists():
        return []
    return [float(m) for m in re.findall(rf"'{re.escape(SYNC_KEY)}': '?([0-9.eE+-]+)", log.read_text(errors="replace"))]


def _logits(relu_dir: Path) -> torch.Tensor:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(relu_dir)
    generator = torch.Generator().manual_seed(0)
    if getattr(config, "model_type", "") == "gpt2":
        model = AutoModelForCausalLM.from_pretrained(relu_dir).eval()
        inputs = dict(input_ids=torch.randint(0, config.vocab_size, (4, 32), generator=generator))
    else:
        model = AutoModelForImageClassification.from_pretrained(relu_dir).eval()
        size = config.image_size
        inputs = dict(pixel_values=torch.randn(4, config.num_channels, size, size, generator=generator))
    with torch.no_grad():
        return model(**inputs).logits.float()


def _relu_act(relu_dir: Path) -> str:
    config = json.loads((relu_dir / "config.json").read_text())
    return str(config.get("hidden_act", config.get("activation_function")))


def compare(reference: Path, other: Path) -> dict:
    ref_result = json.loads((reference / "results.json").read_text())
    result = json.loads((other / "results.json").read_text())
    ref_dir, relu_dir = Path(ref_result["relu_dir"]), Path(result["relu_dir"])
    ref_weights, weights = load_file(ref_dir / "model.safetensors"), load_file(relu_dir / "model.safetensors")
    keys = sorted(set(ref_weights) & set(weights))
    ref_logits, logits = _logits(ref_dir), _logits(relu_dir)

    def lam_diff(key):
        a, b = ref_result.get(key) or {}, result.get(key) or {}
        common = set(a) & set(b)
        return max((abs(a[k] - b[k]) / a[k] for k in common), default=None)

    syncs = _sync_diffs(other.parent / f"{other.name}.log")
    return {
        "relu_act": _relu_act(relu_dir),
        "max_abs_weight_diff": max((weights[k].float() - ref_weights[k].float()).abs().max().item() for k in keys),
        "max_abs_weight": max(ref_weights[k].float().abs().max().item() for k in keys),
        "keys_missing": sorted(set(ref_weights) ^ set(weights)),
        "max_abs_logit_diff": (logits - ref_logits).abs().max().item(),
        "max_abs_logit": ref_logits.abs().max().item(),
        "argmax_agreement": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        "metric": result.get("metric"),
        "final_score": (ref_result["final_score"], result["final_score"]),
        "after_swap": ((ref_result.get("substitution") or {}).get("after"), (result.get("substitution") or {}).get("after")),
        "max_rel_lambda_learned_diff": lam_diff("lambda_learned"),
        "max_rel_lambda_final_diff": lam_diff("lambda_final"),
        "anneal_step": (_anneal_step(reference), _anneal_step(other)),
        "theta_sync_logged": len(syncs),
        "theta_sync_max_diff": max(syncs, default=None),
        "checkpoints": sorted(p.name for p in other.glob("checkpoint-*")),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    pairs = [(f"{s}-1", f"{s}-{t}") for s in ("clm", "image") for t in ("ddp2", "fsdp2")] + [("clm-ddp2", "clm-ddp2-resumed")]
    summary = {}
    for ref, other in pairs:
        if not (args.runs / ref / "results.json").exists() or not (args.runs / other / "results.json").exists():
            summary[f"{other} vs {ref}"] = {"error": "a run is missing its results.json (see its log)"}
            continue
        try:
            summary[f"{other} vs {ref}"] = compare(args.runs / ref, args.runs / other)
        except Exception as error:  # report the rest
            summary[f"{other} vs {ref}"] = {"error": repr(error)[:1000]}
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
