"""One process of the 2-process CPU (gloo) tests of θ under FSDP2 and DeepSpeed ZeRO (test_distributed.py):

    accelerate launch --config_file scripts/accelerate_configs/cpu.yaml tests/engines_worker.py fsdp2 OUT_DIR
    accelerate launch --config_file tests/deepspeed_cpu_zero2.yaml tests/engines_worker.py zero2 OUT_DIR

- fsdp2: KGeluTrainer under accelerate's own FSDP2 (`fsdp2_prepare_model`, bf16 parameters, transformer-based
  wrapping, full state dicts). accelerate runs FSDP only on accelerators, so the worker tells it this gloo
  process group is a multi-GPU one (`PartialState.distributed_type`); everything after that is accelerate's
  and the Trainer's own code.
- zero2 / zero3: KGeluTrainer under DeepSpeed (its CPU accelerator, gloo), bf16: the accelerate config has
  `mixed_precision: bf16`, and transformers' check that bf16 has a GPU is stood in for.

Both: a tiny GPT-2, global batch 2 × 4, 8 steps, checkpoint at 4, anneal start 0.75 (switch at 6), the θ-sync
check at every step; then the same run resumed from checkpoint-4 (θ still learning there). Rank r writes OUT_DIR/<engine>-rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from distributed_worker import LambdaPerStep, tiny_gpt2, train_data, training_args  # noqa: E402
from hf_kgelu.modeling import trained_sites  # noqa: E402
from hf_kgelu.training import KGeluTrainer  # noqa: E402
from hf_kgelu.training.theta_sync import ThetaGradientSync  # noqa: E402

ANNEAL_START = 0.75  # the switch at step 6: the resume from checkpoint-4 continues learning θ, then anneals
FSDP2_ENV = dict(ACCELERATE_USE_FSDP="true", FSDP_VERSION="2", FSDP_AUTO_WRAP_POLICY="TRANSFORMER_BASED_WRAP",
                 FSDP_STATE_DICT_TYPE="FULL_STATE_DICT", FSDP_CPU_RAM_EFFICIENT_LOADING="false",
                 FSDP_RESHARD_AFTER_FORWARD="true")


class Observe(TrainerCallback):
    """What θ looks like inside the run: its type and dtype, what the op gets in the forward, the groups."""

    def __init__(self):
        self.seen, self.groups, self.hooked = {}, None, False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.hooked:
            return
        site = trained_sites(model)[0][1]

        def record(module, inputs):
            theta = module.float32_theta if module.float32_theta is not None else module.full_theta()
            self.seen.update(forward_theta_dtype=str(theta.dtype), input_dtype=str(inputs[0].dtype),
                             param_dtype=str(module.theta.dtype), theta_type=type(module.theta).__name__)

        site.register_forward_pre_hook(record)
        self.hooked = True

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step == 1 and optimizer is not None:
            self.groups = [{"lr": g["lr"], "weight_decay": g["weight_decay"], "size": len(g["params"])}
                           for g in optimizer.param_groups]


def capture_theta_syncs():
    """Count ThetaGradientSync calls and keep the θ gradients of the first one (after the all-reduce)."""
    calls, first = [], {}
    original = ThetaGradientSync.__call__

    def counted(self):
        reduced = original(self)
        calls.append(reduced)  # how many θ it reduced (0 once they are frozen: no collective)
        if reduced and not first:
            first["grads"] = [p.grad.double().tolist() for p in self.params]
        return reduced

    ThetaGradientSync.__call__ = counted
    return calls, first, lambda: setattr(ThetaGradientSync, "__call__", original)


class RecordingTrainer(KGeluTrainer):
    """Keeps the first batch this rank trained on (the θ gradient test rebuilds the global batch)."""

    first_batch = None

    def training_step(self, model, inputs, *args, **kwargs):
        if RecordingTrainer.first_batch is None:
            RecordingTrainer.first_batch = inputs["input_ids"].detach().cpu().tolist()
        return super().training_step(model, inputs, *args, **kwargs)


def run(engine: str, output_dir: Path, resume=None) -> dict:
    from hf_kgelu.modeling.sites import find_sites
    from hf_kgelu.training.theta_sync import theta_parameters

    watch, observe = LambdaPerStep(), Observe()
    calls, first, restore = capture_theta_syncs()
    args = training_args(output_dir, 4, bf16=True, use_cpu=engine == "fsdp2", ddp_backend="gloo", kgelu_log_every=1,
                         kgelu_anneal_start=ANNEAL_START)
    if engine == "fsdp2":
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        assert args.device.type == "cpu"  # sets up the process group (gloo) first
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_GPU  # see the module docstring
    trainer = RecordingTrainer(model=tiny_gpt2(), args=args, train_dataset=train_data(), callbacks=[watch, observe])
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        restore()
    sync = trainer.distributed_callback
    model = trainer.accelerator.unwrap_model(trainer.model)
    result = {
        "distributed_type": str(trainer.accelerator.distributed_type),
        "lam": {str(k): v for k, v in watch.lam.items()},
        "checked_steps": sync.checked_steps, "switch_step": sync.switch_step,
        "anneal_start_step": trainer.hardness_callback.start_step,
        "theta_sync": sync.theta_sync, "engine": sync.engine,
        "sync_calls": calls, "first_sync_grads": first.get("grads"), "groups": observe.groups, **observe.seen,
        "theta": [{"type": type(site.theta).__name__, "dtype": str(site.theta.dtype),
                   "float32_theta": None if site.float32_theta is None else site.float32_theta.tolist()}
                  for _, site in find_sites(model)],
        "block_weight_type": type(model.transformer.h[0].mlp.c_fc.weight).__name__,
        "first_batch": RecordingTrainer.first_batch,
        "theta_names": [name for name, _ in theta_parameters(model)],
        "global_step": trainer.state.global_step,
    }
    # the pipeline's plain copy on rank 0 (a collective)
    from hf_kgelu.training.distributed import gather_full_model
    from hf_kgelu.training.zero import gather_deepspeed_model

    plain = gather_full_model(trainer.model) if engine == "fsdp2" else gather_deepspeed_model(trainer)
    result["gathered_lam"] = None if plain is None else [s.lam.tolist() for _, s in trained_sites(plain)]
    saved = Path(output_dir) / "checkpoint-8" / "model.safetensors"
    if trainer.is_world_process_zero() and saved.exists():
        from safetensors.torch import load_file

        result["saved_theta"] = {k: [str(v.dtype), v.tolist()] for k, v in load_file(str(saved)).items() if k.endswith("theta")}
    RecordingTrainer.first_batch = None
    return result


def partial_gradients(rank: int) -> dict:
    """ThetaGradientSync where the ranks' batches reached different sites: θ0 has a gradient on both ranks,
    θ1 on rank 1 only, θ2 on none."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    params[0].grad = torch.full((1,), 1.0 + rank)
    if rank == 1:
        params[1].grad = torch.full((1,), 4.0)
    ThetaGradientSync(params)()
    return {"grads": [None if p.grad is None else p.grad.tolist() for p in params]}


def main(engine: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    if engine == "fsdp2":
        os.environ.update(FSDP2_ENV)
    else:
        import transformers.training_args as training_arguments

        training_arguments.is_torch_bf16_gpu_available = lambda: True  # DeepSpeed bf16 on its CPU accelerator
    out = Path(out_dir)
    rank = int(os.environ.get("RANK", "0"))
    first = run(engine, out / engine / "run")
    resumed = run(engine, out / engine / "resumed", resume=str(out / engine / "run" / "checkpoint-4"))
    result = {"rank": rank, "first": first, "resumed": resumed}
    if engine == "fsdp2":
        result["partial"] = partial_gradients(rank)
    (out / f"{engine}-rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
