"""Multi-GPU training with KGeluTrainer through `accelerate launch`: throughput, θ sync, the
1-vs-N-process equality of an annealed run and its resume, per engine (DDP, FSDP2, DeepSpeed
ZeRO-2 and ZeRO-3) at 1 and 2 GPUs; and the example scripts run as users launch them.
Self-contained (no `datasets`, no tokenizer files): the GPU machine has neither.

Three steps (benchmarks/run_multi_gpu.sh runs the first two, run_scripts_multi_gpu.sh the third):

1. Launches (rank 0 writes one JSON per launch into --out, and appends it to --jsonl):
     accelerate launch --config_file scripts/accelerate_configs/ddp.yaml --num_processes 1 \\
         -m benchmarks.multi_gpu --tag ddp1 --out SCRATCH/ddp1.json --scratch SCRATCH
   Tags: ddp1, ddp2, fsdp1, fsdp2 (FSDP2 on 1 / 2 GPUs), zero2-1, zero2-2, zero3-1, zero3-2.
   - throughput: GPT-2 small (8 × 1024 tokens per GPU) and DeiT-small (64 images of 224² per GPU)
     trained by KGeluTrainer (λ-GELU, anneal start 0.5: the timed window spans the learned and the
     annealed phase) and by the stock Trainer (GELU); bf16 as the accelerate config says; random
     data (content does not change speed). Each optimizer step from --warmup to --steps is timed
     (the Trainer already waits for the GPU every step), so a cell is the median step with its
     20th/80th percentiles; tokens (images) per second count every process's batch.
     Variants (--activations): kgelu, gelu, and to split λ-GELU's cost: kgelu-engine (θ synchronised
     by the engine, `kgelu_theta_sync="engine"`: DDP's buckets, one FSDP2 unit per site) and
     kgelu-learn (no annealing: θ learns throughout, the schedule's callback idle).
   - exactness (--skip-exact to leave out): a tiny GPT-2 (2×64, byte-level pydoc text, no dropout),
     global batch 16 split over the processes, 24 steps, anneal start 0.25, θ-sync check every step, a
     checkpoint at 12 (rank 0 writes it) and a resume from it; λ per step and the final weights go
     to --scratch.
2. `--compare SCRATCH`: rows from the launches' JSON (*.json, or the lines of *.jsonl): throughput,
   θ sync, exactness against the 1-process DDP run.
3. `--compare-scripts RUNS`: run_clm.py / run_image_classification.py runs of 2 processes (DDP, FSDP2)
   against 1 process of the same global batch, and the resumed DDP run against the uninterrupted
   one: the final ReLU models (weights, logits on a fixed input), the metric before/after the swap,
   the anneal step, the θ-sync figures each run logged, the checkpoints written.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.data import Dataset

from benchmarks import harness, models

SYNC_KEY = "kgelu/theta_sync_max_diff"
SCRIPT_PAIRS = ([(f"{s}-1", f"{s}-{t}") for s in ("clm", "image") for t in ("ddp2", "fsdp2", "zero2", "zero3")]
                + [("clm-ddp2", "clm-ddp2-resumed")])


class RandomSamples(Dataset):
    """`n` samples drawn from a fixed pool of random token sequences or images (memory stays small)."""

    def __init__(self, n: int, pool: dict):
        self.n, self.pool = n, pool

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {k: v[i % len(v)] for k, v in self.pool.items()}


def random_pool(name: str, config, tiny: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    if models.spec(name).seq:
        ids = torch.randint(0, config.vocab_size, (512, models.seq_len(name, tiny)), generator=g)
        return {"input_ids": ids, "labels": ids}
    pixels = torch.randn(128, 3, config.image_size, config.image_size, generator=g)
    return {"pixel_values": pixels, "labels": torch.randint(0, config.num_labels, (128,), generator=g)}


class ByteBlocks(Dataset):
    """The stdlib pydoc topics as UTF-8 byte blocks (vocabulary 256)."""

    def __init__(self, blocks: int, block: int):
        from hf_kgelu.data import embedded_text

        data = embedded_text().encode("utf-8")[: blocks * block]
        self.ids = torch.tensor(list(data)).reshape(blocks, block)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def trainer_for(model, data, output_dir, activation, batch, steps, log_every, callbacks, cpu, find_unused=None, **kgelu):
    from transformers import Trainer, TrainingArguments

    from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments

    common = dict(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
        weight_decay=0.1, logging_steps=log_every, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        dataloader_pin_memory=not cpu, dataloader_drop_last=True, dataloader_num_workers=0 if cpu else 2, **_device_args(cpu),
        ddp_find_unused_parameters=find_unused,
    )
    if activation != "gelu":
        return KGeluTrainer(model=model, args=KGeluTrainingArguments(**common, **kgelu), train_dataset=data, callbacks=callbacks)
    from hf_kgelu.training.distributed import KGeluDistributedCallback  # the FSDP2 wrap-list fix, for GELU models too

    return Trainer(model=model, args=TrainingArguments(**common), train_dataset=data,
                   callbacks=[*callbacks, KGeluDistributedCallback(check_sync=False)])


def _device_args(cpu: bool) -> dict:
    """bf16 on GPUs; on CPUs fp32, over gloo. DeepSpeed runs on CPUs only as a GPU launch on its CPU
    accelerator (use_cpu would turn it off): a smoke test, with `--mixed_precision no` at the launch."""
    if not cpu:
        return {"bf16": True}
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return {"use_cpu": False, "ddp_backend": "gloo"}
    return {"use_cpu": True}


def _sync_callback(trainer):
    return next((cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "KGeluDistributedCallback"), None)


def _theta_info(trainer) -> dict:
    from hf_kgelu.modeling import trained_sites

    sites = trained_sites(trainer.model)
    if not sites:
        return {}
    theta = sites[0][1].theta
    lam = [site.lam.detach().double().mean().item() for _, site in sites]  # a collective under FSDP2
    return {"theta_type": type(theta).__name__, "theta_dtype": str(theta.dtype),
            "theta_local_numel": theta.to_local().numel() if hasattr(theta, "to_local") else theta.numel(),
            "lambda_mean_final": sum(lam) / len(lam)}


# ---- 1. a launch --------------------------------------------------------------------------------


VARIANTS = {  # λ-GELU variants: their kgelu_* settings
    "kgelu": {"kgelu_anneal_start": 0.5},
    "kgelu-engine": {"kgelu_anneal_start": 0.5, "kgelu_theta_sync": "engine"},
    "kgelu-learn": {"kgelu_anneal_start": None},
}


def throughput(name, variant, args, cpu, scratch, steps=None, warmup=None) -> dict:
    from transformers import TrainerCallback

    steps, warmup = steps or args.steps, warmup if warmup is not None else args.warmup

    class Window(TrainerCallback):
        """The wall time of every optimizer step after `warmup` (the GPU drained at each end)."""

        def __init__(self):
            self.t, self.step_s = None, []

        def on_step_end(self, a, state, control, **kwargs):
            if state.global_step < warmup:
                return
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            now = time.perf_counter()
            if self.t is not None:
                self.step_s.append(now - self.t)
            self.t = now

    activation = "gelu" if variant == "gelu" else "kgelu"
    torch.manual_seed(0)
    net = models.build(name, activation, args.tiny, **({"num_labels": 100} if name == "deit" else {}))
    data = RandomSamples(4096 if models.spec(name).seq else 2048, random_pool(name, net.config, args.tiny))
    batch = args.gpt2_batch if name == "gpt2" else args.deit_batch
    window = Window()
    trainer = trainer_for(net, data, Path(scratch) / f"{name}-{variant}", activation, batch, steps, args.log_every,
                          [window], cpu=cpu, find_unused=args.ddp_find_unused_parameters, **VARIANTS.get(variant, {}))
    trainer.train()
    world = trainer.accelerator.num_processes
    step_ms = harness.Stats.of([1000 * t for t in window.step_s])
    per_sample = models.seq_len(name, args.tiny) or 1
    result = {"model": name, "activation": variant, "world_size": world, "per_device_batch": batch,
              "step_ms": step_ms.p50, "step_s": window.step_s,
              "throughput": world * batch * per_sample * 1000 / step_ms.p50, "unit": models.spec(name).samples_unit(),
              "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    sync = _sync_callback(trainer) if activation == "kgelu" else None  # GELU runs carry it only for the FSDP2 fix
    if sync is not None:
        result["sync"] = {"checked_steps": sync.checked_steps, "switch_step": sync.switch_step, "last_diff": sync.last_diff,
                          "anneal_start_step": trainer.hardness_callback.start_step, "mode": sync.theta_sync}
        result.update(_theta_info(trainer))
    del trainer, net
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def exactness(cpu, scratch, tag) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

    import hf_kgelu  # noqa: F401
    from hf_kgelu.modeling import KGELU, trained_sites
    from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments
    from hf_kgelu.training.distributed import world_size
    from hf_kgelu.training.zero import float32_theta_state

    saves = []
    original = GPT2LMHeadModel.save_pretrained

    def counted(self, *a, **k):
        saves.append(str(a[0]) if a else str(k.get("save_directory")))
        return original(self, *a, **k)

    class Lambdas(TrainerCallback):
        def __init__(self):
            self.lam = {}

        def on_step_end(self, a, state, control, model=None, **kwargs):
            self.lam[state.global_step] = [site.lam.detach().double().tolist() for _, site in trained_sites(model)]

    world, global_batch, steps = max(1, world_size()), 16, 24

    def run(output_dir, resume=None):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                           activation_function="kgelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                           bos_token_id=0, eos_token_id=0))
        lambdas = Lambdas()
        targs = KGeluTrainingArguments(
            output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=global_batch // world,
            learning_rate=3e-3, weight_decay=0.1, logging_steps=1, save_strategy="steps", save_steps=12,
            report_to="none", disable_tqdm=True, seed=0, kgelu_anneal_start=0.25, **_device_args(cpu))
        trainer = KGeluTrainer(model=model, args=targs, train_dataset=ByteBlocks(256, 64), callbacks=[lambdas])
        trainer.train(resume_from_checkpoint=resume)
        sync = _sync_callback(trainer)
        # gathers FSDP2 shards and ZeRO-3 partitions (a collective); DeepSpeed's θ is bf16: the float32 copy instead
        wrapped = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
        state = float32_theta_state(trainer.accelerator.unwrap_model(trainer.model), trainer.accelerator.get_state_dict(wrapped))
        star = KGELU()
        star.set_lambda(trainer.hardness_callback.schedule.target_lambda)
        out = {"lam": {str(k): v for k, v in lambdas.lam.items()}, "checked_steps": sync.checked_steps,
               "switch_step": sync.switch_step, "anneal_start_step": trainer.hardness_callback.start_step,
               "lambda_star_exact": all(site.lam.tolist() == star.lam.tolist() for _, site in trained_sites(model)),
               "mode": sync.theta_sync, **_theta_info(trainer)}
        if trainer.is_world_process_zero():
            suffix = "-resumed" if resume else ""
            torch.save({k: v.detach().float().cpu() for k, v in state.items()}, Path(scratch) / f"exact-{tag}{suffix}.pt")
        return out

    GPT2LMHeadModel.save_pretrained = counted
    try:
        base = Path(scratch) / f"exact-{tag}"
        result = {"first": run(base / "run")}
        counts = torch.tensor([len(saves)], device="cuda" if torch.cuda.is_available() and not cpu else "cpu")
        gathered = [torch.zeros_like(counts) for _ in range(world)]
        if world > 1:
            torch.distributed.all_gather(gathered, counts)
        else:
            gathered = [counts]
        result["saves_per_rank"] = [int(c) for c in gathered]
        result["resumed"] = run(base / "resumed", resume=str(base / "run" / "checkpoint-12"))
    finally:
        GPT2LMHeadModel.save_pretrained = original
    return result


def launch(args) -> int:
    from hf_kgelu.training.distributed import current_engine, world_size

    cpu = not torch.cuda.is_available()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="multi_gpu_"))
    result = {"tag": args.tag, "torch": torch.__version__, "precision": "fp32" if cpu else "bf16", "throughput": [], "exactness": None}
    rank0 = int(os.environ.get("RANK", "0")) == 0

    def write():  # after every measurement: a launch cut short by a time limit still reports
        result["world_size"], result["engine"] = world_size(), current_engine()
        if rank0 and args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1, default=str))

    names, variants = args.models.split(","), args.activations.split(",")
    # Untimed first, short but past the anneal switch: Triton compiles the kernels' specialisations on first
    # use (the frozen-θ backward only at the switch), which would otherwise land in the timed window.
    for name in names if args.warm_runs and any(v != "gelu" for v in variants) else []:
        try:
            throughput(name, "kgelu", args, cpu, scratch, steps=6, warmup=2)
        except Exception:
            traceback.print_exc()
    for name in names:
        for repeat in range(args.repeats):  # the order turns each repeat: drift hits every variant alike
            for variant in variants[repeat % len(variants):] + variants[: repeat % len(variants)]:
                started = time.perf_counter()
                try:
                    r = throughput(name, variant, args, cpu, scratch)
                except Exception as error:  # keep measuring the rest; the JSON says what failed
                    traceback.print_exc()
                    r = {"model": name, "activation": variant, "error": repr(error)[:2000]}
                r["wall_s"] = time.perf_counter() - started
                result["throughput"].append(r)
                print(json.dumps(r), flush=True)
                write()
    if not args.skip_exact:
        try:
            result["exactness"] = exactness(cpu, scratch, args.tag)
        except Exception as error:
            traceback.print_exc()
            result["exactness"] = {"error": repr(error)[:2000]}
    write()
    if rank0 and args.jsonl is not None:
        with open(args.jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(result, default=str) + "\n")
    return 0


# ---- 2. rows from the launches ------------------------------------------------------------------


def _max_abs_diff(a: dict, b: dict) -> tuple[float, float]:
    keys = sorted(set(a) & set(b))
    return (max((a[k].float() - b[k].float()).abs().max().item() for k in keys),
            max(b[k].float().abs().max().item() for k in keys))


def read_launches(folder: Path) -> dict[str, dict]:
    """The launches' results by tag: each *.json of `folder`, then each line of its *.jsonl (later wins)."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    for path in sorted(folder.glob("*.jsonl")):
        runs += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {run["tag"]: run for run in runs if isinstance(run, dict) and "throughput" in run and "tag" in run}


def _throughput_rows(tag: str, run: dict, args, recorder: harness.Recorder) -> None:
    dtype = run.get("precision", "bf16")
    pooled: dict[tuple[str, str], list[dict]] = {}
    for r in run["throughput"]:
        if "error" in r:
            print(f"{tag} {r['model']} {r['activation']}: {r['error'][:300]}")
            continue
        pooled.setdefault((r["model"], r["activation"]), []).append(r)
    for (name, variant), results in pooled.items():
        r = results[-1]
        shape = models.shape(name, r["per_device_batch"], models.seq_len(name, args.tiny), args.tiny) + " per GPU"
        samples = [1000 * t for x in results for t in x.get("step_s") or []] or [x["step_ms"] for x in results]
        step_ms = harness.Stats.of(samples)  # every timed step of every repeat
        per_step = r["world_size"] * r["per_device_batch"] * (models.seq_len(name, args.tiny) or 1)
        speed = harness.Stats(*(None if v is None else 1000 * per_step / v for v in (step_ms.p50, step_ms.p80, step_ms.p20)))
        for metric, value in ((f"{r['unit']}_per_s", speed), ("step_ms", step_ms), ("peak_gib", r.get("peak_mem_gib")),
                              ("world_size", r["world_size"])):
            recorder.add("multi_gpu_throughput", f"{tag}/{variant}", metric, value, dtype=dtype, shape=shape)
        if "sync" in r and variant == "kgelu":  # the θ checks of the λ-GELU run
            sync = {"theta_sync_checks": len(r["sync"]["checked_steps"]), "theta_sync_max_diff": r["sync"]["last_diff"],
                    "anneal_switch_step": r["sync"]["switch_step"], "theta_local_numel": r.get("theta_local_numel")}
            for metric, value in sync.items():
                recorder.add("multi_gpu_sync", tag, metric, value, dtype=dtype, shape=shape)


def compare(folder: Path, scratch: Path, args, recorder: harness.Recorder) -> None:
    """Rows: per launch tag, model and variant the throughput; per tag the θ-sync figures and the
    exactness run against the 1-process DDP run `ddp1` (weights, λ, λ*, resume, checkpoints per rank)."""
    runs = read_launches(folder)
    for tag, run in runs.items():
        _throughput_rows(tag, run, args, recorder)
    base_lam = ((runs.get("ddp1") or {}).get("exactness") or {}).get("first", {}).get("lam")
    ref_path = scratch / "exact-ddp1.pt"
    ref = torch.load(ref_path) if ref_path.exists() else None
    for tag, run in runs.items():
        ex = run.get("exactness") or {}
        if "error" in ex or not ex:
            print(f"{tag} exactness: {ex.get('error', 'not run')[:300]}")
            continue
        first, resumed = ex["first"], ex["resumed"]
        figures = {"anneal_switch_step": first["switch_step"], "theta_sync_checks": len(first["checked_steps"]),
                   "theta_local_numel": first.get("theta_local_numel"),
                   "lambda_star_exact": float(bool(first.get("lambda_star_exact"))),
                   "resume_lambda_identical": float(all(resumed["lam"][s] == first["lam"][s] for s in resumed["lam"]))}
        figures |= {f"saves_rank{i}": n for i, n in enumerate(ex["saves_per_rank"])}
        if base_lam:
            steps = sorted(set(first["lam"]) & set(base_lam), key=int)
            figures["max_rel_lambda_diff_vs_1gpu"] = max(abs(a - b) / b for s in steps
                                                         for va, vb in zip(first["lam"][s], base_lam[s]) for a, b in zip(va, vb))
        mine, again = scratch / f"exact-{tag}.pt", scratch / f"exact-{tag}-resumed.pt"
        if ref is not None and mine.exists():
            figures["max_abs_weight_diff_vs_1gpu"], figures["max_abs_weight"] = _max_abs_diff(torch.load(mine), ref)
        if mine.exists() and again.exists():
            figures["resume_max_abs_weight_diff"] = _max_abs_diff(torch.load(again), torch.load(mine))[0]
        for metric, value in figures.items():
            recorder.add("multi_gpu_exactness", tag, metric, value, dtype=run.get("precision", "bf16"),
                         shape="gpt2 2x64, global batch 16, 24 steps")


# ---- 3. the example scripts as users launch them ------------------------------------------------


def _anneal_step(run: Path) -> int | None:
    history = json.loads((run / "hardness_history.json").read_text())
    return next((s["step"] for s in history["steps"] if s.get("phase") == "anneal"), None)


def _logged_sync_diffs(log: Path) -> list[float]:
    """Every θ-sync figure a run logged (Trainer log lines print the logs dict)."""
    if not log.exists():
        return []
    return [float(m) for m in re.findall(rf"'{re.escape(SYNC_KEY)}': '?([0-9.eE+-]+)", log.read_text(errors="replace"))]


def _logits(relu_dir: Path) -> torch.Tensor:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(relu_dir)
    generator = torch.Generator().manual_seed(0)
    if getattr(config, "model_type", "") == "gpt2":
        model = AutoModelForCausalLM.from_pretrained(relu_dir).eval()
        inputs = dict(input_ids=torch.randint(0, config.vocab_size, (4, 32), generator=generator))
    else:
        model = AutoModelForImageClassification.from_pretrained(relu_dir).eval()
        inputs = dict(pixel_values=torch.randn(4, config.num_channels, config.image_size, config.image_size, generator=generator))
    with torch.no_grad():
        return model(**inputs).logits.float()


def compare_script_run(reference: Path, other: Path) -> dict[str, float]:
    """Figures of one run against its reference; the ReLU folders are loaded by stock transformers."""
    from safetensors.torch import load_file

    ref_result, result = (json.loads((p / "results.json").read_text()) for p in (reference, other))
    ref_dir, relu_dir = Path(ref_result["relu_dir"]), Path(result["relu_dir"])
    relu_act = json.loads((relu_dir / "config.json").read_text())
    weight_diff, weight = _max_abs_diff(load_file(relu_dir / "model.safetensors"), load_file(ref_dir / "model.safetensors"))
    ref_logits, logits = _logits(ref_dir), _logits(relu_dir)
    syncs = _logged_sync_diffs(other.parent / f"{other.name}.log")
    swap = [(r.get("substitution") or {}).get("after") for r in (ref_result, result)]

    def lambda_diff(key):
        a, b = ref_result.get(key) or {}, result.get(key) or {}
        return max((abs(a[k] - b[k]) / a[k] for k in set(a) & set(b)), default=None)

    return {
        "relu_config": float(relu_act.get("hidden_act", relu_act.get("activation_function")) == "relu"),
        "max_abs_weight_diff": weight_diff, "max_abs_weight": weight,
        "max_abs_logit_diff": (logits - ref_logits).abs().max().item(), "max_abs_logit": ref_logits.abs().max().item(),
        "argmax_agreement": (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        "reference_score": ref_result["final_score"], "score": result["final_score"],
        "reference_after_swap": swap[0], "after_swap": swap[1],
        "max_rel_lambda_learned_diff": lambda_diff("lambda_learned"), "max_rel_lambda_final_diff": lambda_diff("lambda_final"),
        "reference_anneal_step": _anneal_step(reference), "anneal_step": _anneal_step(other),
        "theta_sync_checks": len(syncs), "theta_sync_max_diff": max(syncs, default=None),
        "checkpoints": len(list(other.glob("checkpoint-*"))),
    }


def compare_scripts(runs: Path, dtype: str, recorder: harness.Recorder) -> None:
    for ref, other in SCRIPT_PAIRS:
        if not (runs / ref / "results.json").exists() or not (runs / other / "results.json").exists():
            if (runs / f"{other}.log").exists():  # launched, and failed
                print(f"{other} vs {ref}: a run is missing its results.json (see its log)")
            continue
        try:
            figures = compare_script_run(runs / ref, runs / other)
        except Exception as error:  # report the rest
            print(f"{other} vs {ref}: {error!r}"[:1000])
            continue
        print(f"{other} vs {ref}: {json.dumps(figures)}")
        for metric, value in figures.items():
            recorder.add("multi_gpu_scripts", f"{other} vs {ref}", metric, value, dtype=dtype,
                         shape="tiny model, global batch 16, 24 steps")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="run", help="launch: its name (ddp1 is the 1-process reference)")
    parser.add_argument("--out", type=Path, help="launch: its JSON file")
    parser.add_argument("--scratch", type=Path, default=None, help="checkpoints and exactness weights (default: a temp dir)")
    parser.add_argument("--models", default="gpt2,deit")
    parser.add_argument("--activations", default="kgelu,gelu",
                        help=f"variants to time: gelu, {', '.join(VARIANTS)} (kgelu-engine: θ synchronised by the engine; "
                             "kgelu-learn: no annealing)")
    parser.add_argument("--repeats", type=int, default=1, help="time every variant this many times, in turning order")
    parser.add_argument("--ddp-find-unused-parameters", type=lambda v: {"true": True, "false": False}[v.lower()], default=None,
                        help="true/false for every timed run (default: the Trainer's, True for transformers models "
                             "without activation checkpointing); false is possible for λ-GELU now that θ is outside DDP")
    parser.add_argument("--jsonl", type=Path, default=None, help="launch: also append its result as one line here")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--gpt2-batch", type=int, default=8)
    parser.add_argument("--deit-batch", type=int, default=64)
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--warm-runs", type=int, default=1, help="untimed λ-GELU run per model first (Triton compiles), 0 to skip")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke test)")
    parser.add_argument("--compare", type=Path, default=None, help="rows from the launches' *.json / *.jsonl in this folder")
    parser.add_argument("--compare-scripts", type=Path, default=None, help="rows from the script runs in this folder")
    parser.add_argument("--dtype", default="bf16", help="--compare-scripts: the runs' precision (bf16, fp32)")
    harness.add_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare is None and args.compare_scripts is None:
        return launch(args)
    recorder = harness.Recorder.from_args(args, "benchmarks.multi_gpu", argv)
    if args.compare is not None:
        compare(args.compare, args.scratch or args.compare, args, recorder)
    if args.compare_scripts is not None:
        compare_scripts(args.compare_scripts, args.dtype, recorder)
    recorder.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
