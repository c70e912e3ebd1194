"""Multi-GPU training with KGeluTrainer through `accelerate launch`: throughput, θ sync, and the
1-vs-N-process equality of an annealed run. Self-contained (no `datasets`, no tokenizer files):
the GPU machine has neither.

    accelerate launch --config_file scripts/accelerate_configs/ddp.yaml --num_processes 1 \\
        benchmarks/bench_multi_gpu.py --tag ddp1 --out outputs/multi_gpu/ddp1.json
    accelerate launch --config_file scripts/accelerate_configs/ddp.yaml benchmarks/bench_multi_gpu.py --tag ddp2 ...
    accelerate launch --config_file scripts/accelerate_configs/fsdp.yaml benchmarks/bench_multi_gpu.py --tag fsdp2 ...
    python benchmarks/bench_multi_gpu.py --compare outputs/multi_gpu     # summary.json + a table

Per launch (rank 0 writes the JSON):
- throughput: GPT-2 small (12×768, 1024 tokens, batch 8 per GPU) and DeiT-small (12×384, 224²,
  batch 64 per GPU) trained by KGeluTrainer (λ-GELU, anneal start 0.5 so the timed window spans
  the learned and the annealed phase) and by the stock Trainer (GELU); bf16 as the accelerate
  config says; random token ids / images from a fixed generator (content does not change speed).
  The window between optimizer steps `--warmup` and `--steps` is timed with CUDA synchronisation
  at both ends. Tokens (images) per second count every process's batch.
- exactness: a tiny GPT-2 (2×64, byte-level pydoc text, no dropout) with a fixed global batch of
  16 split over the processes, 24 steps, anneal start 0.25, θ-sync check every step, a checkpoint
  at step 12 (rank 0 writes it: `save_pretrained` calls are counted per rank) and a resume from it;
  λ per step and the final weights go to --scratch for `--compare`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


# ----------------------------------------------------------------------------------------------
# data


class RandomTokens(Dataset):
    """`n` samples drawn from a pool of 512 random sequences (memory stays small)."""

    def __init__(self, n: int, seq: int, vocab: int, pool: int = 512):
        self.n, self.ids = n, torch.randint(0, vocab, (pool, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        ids = self.ids[i % len(self.ids)]
        return {"input_ids": ids, "labels": ids}


class RandomImages(Dataset):
    """`n` samples drawn from a pool of 128 random images (memory stays small)."""

    def __init__(self, n: int, size: int, classes: int, pool: int = 128):
        g = torch.Generator().manual_seed(0)
        self.n = n
        self.pixels = torch.randn(pool, 3, size, size, generator=g)
        self.labels = torch.randint(0, classes, (pool,), generator=g)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i % len(self.labels)], "labels": self.labels[i % len(self.labels)]}


class ByteBlocks(Dataset):
    """The stdlib pydoc topics as UTF-8 byte blocks (vocabulary 256)."""

    def __init__(self, blocks: int, block: int):
        from pydoc_data.topics import topics

        data = "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")[: blocks * block]
        self.ids = torch.tensor(list(data)).reshape(blocks, block)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


# ----------------------------------------------------------------------------------------------
# models


def build(model: str, activation: str, tiny: bool):
    import hf_kgelu  # noqa: F401  (registers "kgelu")
    from transformers import DeiTConfig, DeiTForImageClassification, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if model == "gpt2":
        size = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=97) if tiny else dict(
            n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
        net = GPT2LMHeadModel(GPT2Config(**size, activation_function=activation))
        data = RandomTokens(4096, size["n_positions"], size["vocab_size"])
        per_sample, unit = size["n_positions"], "tokens/s"
    else:
        size = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64) if tiny else dict(image_size=224, patch_size=16, hidden_size=384,
                                                           num_hidden_layers=12, num_attention_heads=6,
                                                           intermediate_size=1536)
        net = DeiTForImageClassification(DeiTConfig(**size, num_labels=100, hidden_act=activation))
        data = RandomImages(2048 if not tiny else 256, size["image_size"], 100)
        per_sample, unit = 1, "images/s"
    return net, data, per_sample, unit


def trainer_for(model, data, output_dir, activation, batch, steps, log_every, callbacks, bf16, cpu, **kgelu):
    from transformers import Trainer, TrainingArguments

    from hf_kgelu.trainer import KGeluTrainer, KGeluTrainingArguments

    common = dict(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=batch, learning_rate=1e-4,
        weight_decay=0.1, logging_steps=log_every, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        bf16=bf16, use_cpu=cpu, dataloader_pin_memory=not cpu, dataloader_drop_last=True,
        dataloader_num_workers=0 if cpu else 2,
    )
    if activation == "kgelu":
        args = KGeluTrainingArguments(**common, **kgelu)
        return KGeluTrainer(model=model, args=args, train_dataset=data, callbacks=callbacks)
    from hf_kgelu.distributed import KGeluDistributedCallback  # the FSDP2 wrap-list fix, for GELU models too

    return Trainer(model=model, args=TrainingArguments(**common), train_dataset=data,
                   callbacks=[*callbacks, KGeluDistributedCallback(check_sync=False)])


def _sync_callback(trainer):
    return next((cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "KGeluDistributedCallback"), None)


def _theta_info(trainer):
    from hf_kgelu.peft_utils import trained_sites

    sites = trained_sites(trainer.model)
    if not sites:
        return {}
    theta = sites[0][1].theta
    lam = [site.lam.detach().double().mean().item() for _, site in sites]  # a collective under FSDP2
    return {
        "theta_type": type(theta).__name__,
        "theta_dtype": str(theta.dtype),
        "theta_local_numel": theta.to_local().numel() if hasattr(theta, "to_local") else theta.numel(),
        "theta_full": [site.full_theta().detach().double().mean().item() for _, site in sites][:2],
        "lambda_mean_final": sum(lam) / len(lam),
    }


# ----------------------------------------------------------------------------------------------
# throughput


def throughput(model_name, activation, args, cpu, scratch) -> dict:
    from transformers import TrainerCallback

    class Window(TrainerCallback):
        def __init__(self):
            self.t = {}

        def on_step_end(self, a, state, control, **kwargs):
            if state.global_step in (args.warmup, args.steps):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t[state.global_step] = time.perf_counter()

    net, data, per_sample, unit = build(model_name, activation, args.tiny)
    batch = args.gpt2_batch if model_name == "gpt2" else args.deit_batch
    window = Window()
    trainer = trainer_for(net, data, Path(scratch) / f"{model_name}-{activation}", activation, batch, args.steps,
                          args.log_every, [window], bf16=not cpu, cpu=cpu, kgelu_anneal_start=0.5)
    trainer.train()
    world = trainer.accelerator.num_processes
    seconds = window.t[args.steps] - window.t[args.warmup]
    steps = args.steps - args.warmup
    result = {
        "model": model_name, "activation": activation, "world_size": world, "per_device_batch": batch,
        "step_ms": 1000 * seconds / steps, "throughput": world * batch * per_sample * steps / seconds, "unit": unit,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    sync = _sync_callback(trainer) if activation == "kgelu" else None  # GELU runs carry it only for the FSDP2 fix
    if sync is not None:
        result["sync"] = {"checked_steps": sync.checked_steps, "switch_step": sync.switch_step, "last_diff": sync.last_diff,
                          "anneal_start_step": trainer.hardness_callback.start_step}
        result.update(_theta_info(trainer))
    del trainer, net
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


# ----------------------------------------------------------------------------------------------
# exactness


def exactness(args, cpu, scratch, tag) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

    import hf_kgelu  # noqa: F401
    from hf_kgelu.peft_utils import trained_sites

    saves = []
    original = GPT2LMHeadModel.save_pretrained

    def counted(self, *a, **k):
        saves.append(str(a[0]) if a else str(k.get("save_directory")))
        return original(self, *a, **k)

    GPT2LMHeadModel.save_pretrained = counted

    class Lambdas(TrainerCallback):
        def __init__(self):
            self.lam = {}

        def on_step_end(self, a, state, control, model=None, **kwargs):
            self.lam[state.global_step] = [site.lam.detach().double().tolist() for _, site in trained_sites(model)]

    from hf_kgelu.distributed import world_size

    world = max(1, world_size())
    global_batch, steps = 16, 24

    def run(output_dir, resume=None):
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                           activation_function="kgelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                           bos_token_id=0, eos_token_id=0))
        from hf_kgelu.trainer import KGeluTrainer, KGeluTrainingArguments

        lambdas = Lambdas()
        targs = KGeluTrainingArguments(
            output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=global_batch // world,
            learning_rate=3e-3, weight_decay=0.1, logging_steps=1, save_strategy="steps", save_steps=12,
            report_to="none", disable_tqdm=True, seed=0, bf16=not cpu, use_cpu=cpu, kgelu_anneal_start=0.25,
        )
        trainer = KGeluTrainer(model=model, args=targs, train_dataset=ByteBlocks(256, 64), callbacks=[lambdas])
        trainer.train(resume_from_checkpoint=resume)
        sync = _sync_callback(trainer)
        state = trainer.accelerator.get_state_dict(trainer.model)  # gathers FSDP2 shards (a collective)
        out = {"lam": {str(k): v for k, v in lambdas.lam.items()}, "checked_steps": sync.checked_steps,
               "switch_step": sync.switch_step, "anneal_start_step": trainer.hardness_callback.start_step,
               "saves_rank0": list(saves)}
        out.update(_theta_info(trainer))
        return trainer, out, state

    result = {}
    base = Path(scratch) / f"exact-{tag}"
    trainer, result["first"], state = run(base / "run")
    if trainer.is_world_process_zero():
        torch.save({k: v.detach().float().cpu() for k, v in state.items()}, Path(scratch) / f"exact-{tag}.pt")
    counts = torch.tensor([len(saves)], device="cuda" if torch.cuda.is_available() and not cpu else "cpu")
    if world > 1:
        gathered = [torch.zeros_like(counts) for _ in range(world)]
        torch.distributed.all_gather(gathered, counts)
        result["saves_per_rank"] = [int(c) for c in gathered]
    else:
        result["saves_per_rank"] = [int(counts)]
    del saves[:]
    trainer, result["resumed"], state = run(base / "resumed", resume=str(base / "run" / "checkpoint-12"))
    if trainer.is_world_process_zero():
        torch.save({k: v.detach().float().cpu() for k, v in state.items()}, Path(scratch) / f"exact-{tag}-resumed.pt")
    GPT2LMHeadModel.save_pretrained = original
    return result


# ----------------------------------------------------------------------------------------------
# compare


def compare(folder: Path, scratch: Path) -> dict:
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.stem != "summary"}
    runs = {tag: run for tag, run in runs.items() if isinstance(run, dict)}
    summary = {"throughput": [], "scaling": [], "gelu_vs_kgelu": [], "exactness": {}, "sync": {}, "errors": {}}
    for tag, run in runs.items():
        summary["sync"][tag] = [{"model": r.get("model"), "activation": r.get("activation"), **r["sync"],
                                 **{k: r.get(k) for k in ("theta_type", "theta_dtype", "theta_local_numel", "lambda_mean_final")}}
                                for r in run.get("throughput", []) if "sync" in r]
        ex = run.get("exactness") or {}
        summary["sync"][tag].append({"exactness_saves_per_rank": ex.get("saves_per_rank"),
                                     **{f"exact_{k}": (ex.get("first") or {}).get(k) for k in
                                        ("checked_steps", "switch_step", "anneal_start_step", "theta_type", "theta_dtype",
                                         "theta_local_numel", "lambda_mean_final")}})
        errors = [r for r in run.get("throughput", []) if "error" in r] + ([ex] if "error" in ex else [])
        if errors:
            summary["errors"][tag] = errors
    one = runs.get("ddp1", {})
    for tag, run in runs.items():
        for r in run.get("throughput", []):
            if "error" in r:
                continue
            summary["throughput"].append({"tag": tag, **{k: r[k] for k in ("model", "activation", "world_size", "per_device_batch",
                                                                            "step_ms", "throughput", "unit")}})
            base = next((b for b in one.get("throughput", []) if b.get("model") == r["model"]
                         and b.get("activation") == r["activation"] and "error" not in b), None)
            if base and r["world_size"] > 1:
                summary["scaling"].append({"tag": tag, "model": r["model"], "activation": r["activation"],
                                           "speedup": r["throughput"] / base["throughput"],
                                           "efficiency": r["throughput"] / (r["world_size"] * base["throughput"])})
        by = {(r.get("model"), r.get("activation")): r for r in run.get("throughput", []) if "error" not in r}
        for model in ("gpt2", "deit"):
            if (model, "gelu") in by and (model, "kgelu") in by:
                summary["gelu_vs_kgelu"].append({"tag": tag, "model": model, "kgelu_over_gelu_step_time":
                                                 by[(model, "kgelu")]["step_ms"] / by[(model, "gelu")]["step_ms"]})
    ref_path = scratch / "exact-ddp1.pt"
    if ref_path.exists():
        ref = torch.load(ref_path)
        for tag in runs:
            for suffix in ("", "-resumed"):
                path = scratch / f"exact-{tag}{suffix}.pt"
                if not path.exists():
                    continue
                other = torch.load(path)
                keys = sorted(set(ref) & set(other))
                diff = max((other[k] - ref[k]).abs().max().item() for k in keys)
                scale = max(ref[k].abs().max().item() for k in keys)
                summary["exactness"][f"{tag}{suffix}"] = {"max_abs_weight_diff_vs_ddp1": diff, "max_abs_weight": scale,
                                                          "keys_compared": len(keys), "keys_missing": sorted(set(ref) ^ set(other))}
        for tag, run in runs.items():
            ex = run.get("exactness") or {}
            first = ex.get("first", {}).get("lam")
            base = (one.get("exactness") or {}).get("first", {}).get("lam")
            if first and base:
                steps = sorted(set(first) & set(base), key=int)
                summary["exactness"].setdefault(tag, {})["max_rel_lambda_diff_vs_ddp1"] = max(
                    abs(a - b) / b for s in steps for va, vb in zip(first[s], base[s]) for a, b in zip(va, vb))
            resumed = ex.get("resumed", {}).get("lam")
            if first and resumed:
                summary["exactness"].setdefault(tag, {})["resume_lambda_identical"] = all(resumed[s] == first[s] for s in resumed)
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--scratch", type=Path, default=None, help="checkpoints and exactness weights (default: a temp dir)")
    parser.add_argument("--models", default="gpt2,deit")
    parser.add_argument("--activations", default="kgelu,gelu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--gpt2-batch", type=int, default=8)
    parser.add_argument("--deit-batch", type=int, default=64)
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--warm-runs", type=int, default=1, help="untimed λ-GELU run per model first (Triton compiles), 0 to skip")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke test)")
    parser.add_argument("--compare", type=Path, default=None, help="summarise the JSON files in this folder")
    args = parser.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="bench_multi_gpu_"))
    scratch.mkdir(parents=True, exist_ok=True)
    if args.compare is not None:
        print(json.dumps(compare(args.compare, scratch), indent=1))
        return 0

    cpu = not torch.cuda.is_available()
    from hf_kgelu.distributed import world_size

    result = {"tag": args.tag, "torch": torch.__version__, "throughput": [], "exactness": None}

    def write():  # after every measurement: a launch cut short by a time limit still reports
        result["world_size"] = world_size()
        if int(os.environ.get("RANK", "0")) == 0 and args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1, default=str))

    # Untimed first: Triton compiles the λ-GELU kernels' specializations on first use (the
    # frozen-θ backward only at the anneal switch), which would otherwise land in the timed window.
    for model in args.models.split(",") if args.warm_runs and "kgelu" in args.activations else []:
        try:
            throughput(model, "kgelu", args, cpu, scratch)
        except Exception:
            traceback.print_exc()
    for model in args.models.split(","):
        for activation in args.activations.split(","):
            started = time.perf_counter()
            try:
                r = throughput(model, activation, args, cpu, scratch)
            except Exception as error:  # keep measuring the rest; the JSON says what failed
                traceback.print_exc()
                r = {"model": model, "activation": activation, "error": repr(error)[:2000]}
            r["wall_s"] = time.perf_counter() - started
            result["throughput"].append(r)
            print(json.dumps(r), flush=True)
            write()
    if not args.skip_exact:
        try:
            result["exactness"] = exactness(args, cpu, scratch, args.tag)
        except Exception as error:
            traceback.print_exc()
            result["exactness"] = {"error": repr(error)[:2000]}
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
