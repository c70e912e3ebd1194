"""One process of the 2-process CPU (gloo) test in test_distributed.py; also runnable by itself:

    accelerate launch --config_file scripts/accelerate_configs/cpu.yaml tests/distributed_worker.py OUT_DIR

Everything that needs the process group happens in this one launch (gloo start-up is slow):

1. DDP through KGeluTrainer: a tiny GPT-2, global batch 2×4, checkpoints at steps 4 and 8,
   θ-sync check at every step (KGeluDistributedCallback), λ recorded per step, and a count of
   `save_pretrained` calls per rank.
2. The same run resumed from its step-4 checkpoint (into another output_dir).
3. FSDP2 by hand with θ in the engine (`kgelu_theta_sync="engine"`: `fully_shard`, bf16 parameter policy
   as accelerate's fsdp.yaml sets it): λ-GELU sites made float32 units, replicated, by the callback's hook;
   how θ is laid out, its dtype inside the forward, its gradient, λ read and written through the DTensor,
   freezing. (θ outside the shards, the default, runs through accelerate in tests/engines_worker.py.)

Each rank writes OUT_DIR/rank{R}.json; rank 0 also writes the trained weights (safetensors).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import GPT2LMHeadModel, TrainerCallback  # noqa: E402

from hf_kgelu.modeling import trained_sites  # noqa: E402
from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments  # noqa: E402
from hf_kgelu.training.distributed import (  # noqa: E402
    ThetaSyncError,
    check_theta_sync,
    gather_full_model,
)

MAX_STEPS, SAVE_STEPS, PER_DEVICE_BATCH, LR = 8, 4, 4, 3e-3


def tiny_gpt2():
    from transformers import GPT2Config

    torch.manual_seed(0)
    # No dropout: the ranks would draw different masks, and the single-process twin others again.
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=256, n_positions=32, activation_function="kgelu",
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config)


def training_args(output_dir, batch: int, **overrides) -> KGeluTrainingArguments:
    settings = dict(
        output_dir=str(output_dir), max_steps=MAX_STEPS, per_device_train_batch_size=batch, learning_rate=LR,
        weight_decay=0.1, logging_steps=1, save_strategy="steps", save_steps=SAVE_STEPS, report_to="none",
        disable_tqdm=True, seed=0, use_cpu=True, dataloader_pin_memory=False, kgelu_anneal_start=0.25,
    )
    settings.update(overrides)
    return KGeluTrainingArguments(**settings)


def train_data():
    from trainer_helpers import text_blocks

    return text_blocks()["train"]


class LambdaPerStep(TrainerCallback):
    def __init__(self):
        self.lam = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.lam[state.global_step] = [site.lam.detach().double().tolist() for _, site in trained_sites(model)]


def count_saves():
    """Wrap GPT2LMHeadModel.save_pretrained to count calls in this process."""
    calls = []
    original = GPT2LMHeadModel.save_pretrained

    def counted(self, *args, **kwargs):
        calls.append(str(args[0]) if args else kwargs.get("save_directory"))
        return original(self, *args, **kwargs)

    GPT2LMHeadModel.save_pretrained = counted
    return calls


def run_trainer(output_dir, batch=PER_DEVICE_BATCH, resume=None):
    model = tiny_gpt2()
    watch = LambdaPerStep()
    trainer = KGeluTrainer(model=model, args=training_args(output_dir, batch), train_dataset=train_data(),
                           callbacks=[watch])
    trainer.train(resume_from_checkpoint=resume)
    sync = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "KGeluDistributedCallback")
    hardness = trainer.hardness_callback
    logged = [entry.get("kgelu/theta_sync_max_diff") for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "lam": {str(k): v for k, v in watch.lam.items()},
        "checked_steps": sync.checked_steps,
        "switch_step": sync.switch_step,
        "anneal_start_step": hardness.start_step,
        "logged_sync_diffs": logged,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "num_processes": trainer.accelerator.num_processes,
        "theta_sync": sync.theta_sync,
        "ddp_ignored": sorted(getattr(trainer.model_wrapped, "parameters_to_ignore", None) or []),
    }
    return trainer.accelerator.unwrap_model(trainer.model), result


def through_the_trainer_hook(model) -> tuple[str | None, int]:
    """Run KGeluDistributedCallback.on_init_end as under accelerate's bf16 FSDP2 with θ in the engine
    (`kgelu_theta_sync="engine"`, what a stock Trainer gets); accelerate's FSDP state is stood in for
    (test_distributed's FSDP2 launch runs accelerate's own)."""
    from types import SimpleNamespace

    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy

    from hf_kgelu.training.distributed import KGeluDistributedCallback

    shared = AcceleratorState._shared_state
    saved = {key: shared.get(key) for key in ("fsdp_plugin", "distributed_type")}
    plugin = SimpleNamespace(fsdp_version=2, cpu_offload=None, cpu_ram_efficient_loading=True,
                             mixed_precision_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16))
    shared.update(fsdp_plugin=plugin, distributed_type=DistributedType.FSDP)
    args = SimpleNamespace(kgelu_theta_sync="engine")
    try:
        refused = None
        try:
            KGeluDistributedCallback().on_init_end(args, None, None, model=model)
        except ValueError as error:
            refused = str(error)
        plugin.cpu_ram_efficient_loading = False
        KGeluDistributedCallback().on_init_end(args, None, None, model=model)
    finally:
        shared.update(saved)
    return refused, sum(isinstance(site, FSDPModule) for _, site in trained_sites(model))


def fsdp2_theta(out: Path, rank: int) -> dict:
    """θ under FSDP2 with a bf16 parameter policy (what accelerate applies for mixed_precision: bf16)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from trainer_helpers import text_blocks

    model = tiny_gpt2()
    refused, sites_sharded = through_the_trainer_hook(model)  # before the blocks: they then leave the sites alone
    bf16 = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mp_policy=bf16)
    fully_shard(model, mp_policy=bf16)
    sites = [site for _, site in trained_sites(model)]
    seen = {}

    def record_dtype(module, inputs):  # inside the forward: the gathered θ the op really uses
        seen["theta_dtype"] = str(module.theta.dtype)
        seen["theta_is_plain"] = not hasattr(module.theta, "full_tensor")
        seen["input_dtype"] = str(inputs[0].dtype)

    sites[0].register_forward_pre_hook(record_dtype)
    layout = {
        "refused_with_ram_efficient_loading": refused,
        "sites_sharded": sites_sharded,
        "type": type(sites[0].theta).__name__,
        "placements": [str(p) for p in sites[0].theta.placements],
        "local_numel": [site.theta.to_local().numel() for site in sites],
        "global_shape": list(sites[0].theta.shape),
        "dtype": str(sites[0].theta.dtype),
        "block_rows": model.transformer.h[0].mlp.c_fc.weight.shape[0],
        "block_local_rows": model.transformer.h[0].mlp.c_fc.weight.to_local().shape[0],
    }
    blocks = text_blocks()["train"]["input_ids"][:16]
    mine = blocks[rank * 8 : rank * 8 + 8]  # a global batch of 16, 8 per rank
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    lam_learned, first_grads = [], []
    for step in range(4):
        if step == 2:  # the anneal switch: freeze θ and set λ by hand, as the callback does
            lam_learned = [site.lam.detach().double().tolist() for site in sites]
            for site in sites:
                site.freeze()
                site.set_lambda(40.0)
        loss = model(input_ids=mine, labels=mine).loss
        loss.backward()
        if step == 0:  # reduce-scattered in float32 over the ranks: the global batch's mean gradient
            first_grads = [site.theta.grad.full_tensor().double().tolist() for site in sites]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    lam_after_freeze = [site.lam.detach().double().tolist() for site in sites]
    grads = [site.theta.grad is None for site in sites]
    thetas = [site.full_theta().detach().tolist() for site in sites]
    reference_fc = model.transformer.h[0].mlp.c_fc.weight.full_tensor()  # a collective, like the gather below
    plain = gather_full_model(model)
    gathered = None
    if plain is not None:
        gathered = {
            "type": type(plain).__name__,
            "any_dtensor": any(hasattr(p, "full_tensor") for p in plain.parameters()),
            "lam": [site.lam.detach().double().tolist() for _, site in trained_sites(plain)],
            "fc_equal": torch.equal(plain.transformer.h[0].mlp.c_fc.weight, reference_fc),
            "tied": plain.lm_head.weight.data_ptr() == plain.transformer.wte.weight.data_ptr(),
        }
    dist.barrier()
    return {**layout, "gathered_model": gathered, **seen, "first_grads": first_grads, "lam_learned": lam_learned, "lam_after_freeze": lam_after_freeze,
            "theta_grad_is_none_after_freeze": grads, "full_theta": thetas}


def divergence_is_caught(rank: int) -> dict:
    """check_theta_sync must raise on every rank when one rank's θ, or its switch step, differs."""
    caught = {}
    model = tiny_gpt2()
    if rank == 1:
        with torch.no_grad():
            trained_sites(model)[1][1].theta.add_(1e-6)
    for case, call in (("theta", lambda: check_theta_sync(model, step=3)),
                       ("switch", lambda: check_theta_sync(tiny_gpt2(), step=3, switch_step=2 + rank))):
        try:
            call()
            caught[case] = None
        except ThetaSyncError as error:
            caught[case] = str(error)
    return caught


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    out = Path(out_dir)
    saves = count_saves()
    model, first = run_trainer(out / "run")
    rank = int(os.environ.get("RANK", "0"))
    first["saves"] = list(saves)
    if rank == 0:
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(out / "ddp_final.safetensors"))

    del saves[:]
    model, resumed = run_trainer(out / "resumed", resume=str(out / "run" / f"checkpoint-{SAVE_STEPS}"))
    resumed["saves"] = list(saves)
    if rank == 0:
        save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, str(out / "resumed_final.safetensors"))

    result = {"rank": rank, "first": first, "resumed": resumed, "caught": divergence_is_caught(rank),
              "fsdp2": fsdp2_theta(out, rank)}
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
