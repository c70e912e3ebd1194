"""λ-GELU under two real processes on CPU (gloo), launched the way users launch: `accelerate launch`
with scripts/accelerate_configs/cpu.yaml. One launch (tests/distributed_worker.py) does all the
multi-process work; the single-process twin runs here. What is checked:

- DDP through KGeluTrainer: θ identical on both ranks at every logged step (checked in-run by
  KGeluDistributedCallback and again from the recorded λ), the anneal switch on the same step,
  checkpoints written by rank 0 only, an exact resume, and the same λ trajectory, weights and
  ReLU model as one process with the same global batch;
- the sync check raises on every rank when θ or the switch step differ;
- FSDP2 (`fully_shard` with a bf16 parameter policy, as accelerate applies it): each λ-GELU site is
  its own float32 unit replicated over the ranks (`shard_kgelu_sites`), θ stays whole and float32
  in the forward, gets the global batch's mean gradient, and reads/writes/freezes correctly
  through the DTensor while the blocks around it are sharded.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_kgelu import target_lambda
from hf_kgelu.relu import relu_ize

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIG = ROOT / "scripts" / "accelerate_configs" / "cpu.yaml"

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
               "--main_process_port", str(_free_port()), str(HERE / "distributed_worker.py"), str(out)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The same training in one process with the global batch (2 × 4 = 8)."""
    sys.path.insert(0, str(HERE))
    import distributed_worker as worker

    model, result = worker.run_trainer(tmp_path_factory.mktemp("single") / "run", batch=2 * worker.PER_DEVICE_BATCH)
    return model, result


def test_two_processes_train_with_ddp(launched):
    _, ranks = launched
    for rank in ranks:
        assert rank["first"]["distributed_type"] == "DistributedType.MULTI_CPU"
        assert rank["first"]["num_processes"] == 2


def test_theta_identical_on_every_rank_at_every_logged_step(launched):
    _, (r0, r1) = launched
    for run, steps in (("first", range(1, 9)), ("resumed", range(5, 9))):
        assert r0[run]["checked_steps"] == r1[run]["checked_steps"] == list(steps)
        assert r0[run]["lam"] == r1[run]["lam"]  # bit for bit
    # every training log line carries the in-run check's result
    assert r0["first"]["logged_sync_diffs"] == [0.0] * 8


def test_sync_check_raises_on_every_rank_when_ranks_diverge(launched):
    _, ranks = launched
    for rank in ranks:
        assert "different θ" in rank["caught"]["theta"]
        assert "anneal switch" in rank["caught"]["switch"]


def test_annealing_starts_on_the_same_step_everywhere(launched):
    _, ranks = launched
    target = target_lambda(0.005)
    for rank in ranks:
        first = rank["first"]
        assert first["anneal_start_step"] == 2  # round(0.25 × 8)
        assert first["switch_step"] == 2  # every rank saw θ frozen from that step on
        assert all(abs(v[0] - target) <= 1e-5 * target for v in first["lam"]["8"])


def test_checkpoints_are_written_once_and_resume_exactly(launched):
    out, (r0, r1) = launched
    assert r0["first"]["saves"] == [str(out / "run" / "checkpoint-4"), str(out / "run" / "checkpoint-8")]
    assert r1["first"]["saves"] == []
    assert r0["resumed"]["saves"] == [str(out / "resumed" / "checkpoint-8")] and r1["resumed"]["saves"] == []
    checkpoint = out / "run" / "checkpoint-4"
    assert sorted(p.name for p in checkpoint.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    history = json.loads((out / "run" / "hardness_history.json").read_text())
    steps = [entry["step"] for entry in history["steps"]]
    assert steps == sorted(set(steps)) and steps[-1] == 8
    for step in range(5, 9):
        assert r0["resumed"]["lam"][str(step)] == r0["first"]["lam"][str(step)]
    first, resumed = load_file(str(out / "ddp_final.safetensors")), load_file(str(out / "resumed_final.safetensors"))
    for name, value in first.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)


def test_same_result_as_one_process_with_the_same_global_batch(launched, single):
    out, (r0, _) = launched
    model, result = single
    assert result["anneal_start_step"] == r0["first"]["anneal_start_step"]
    for step in range(1, 9):  # learned λ (steps 1-2) and the schedule built on it
        torch.testing.assert_close(torch.tensor(r0["first"]["lam"][str(step)]), torch.tensor(result["lam"][str(step)]),
                                   rtol=1e-5, atol=0, msg=f"step {step}")
    ddp = load_file(str(out / "ddp_final.safetensors"))
    reference = {k: v.detach() for k, v in model.state_dict().items()}
    assert set(ddp) == set(reference)
    for name, value in ddp.items():
        torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=2e-5, msg=name)

    # the published artefact: the ReLU model of the DDP run behaves like the single-process one
    import distributed_worker as worker

    twin = worker.tiny_gpt2()
    twin.load_state_dict(ddp)
    relu_ddp, _ = relu_ize(twin)
    relu_single, _ = relu_ize(model)
    ids = torch.arange(64).reshape(2, 32) % 256
    with torch.no_grad():
        torch.testing.assert_close(relu_ddp.eval()(input_ids=ids).logits, relu_single.eval()(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_fsdp2_keeps_theta_whole_and_float32_next_to_bf16_blocks(launched):
    _, (r0, r1) = launched
    f0, f1 = r0["fsdp2"], r1["fsdp2"]
    assert f0["sites_sharded"] == f1["sites_sharded"] == 2
    for f in (f0, f1):
        assert "fsdp_cpu_ram_efficient_loading: false" in f["refused_with_ram_efficient_loading"]
        # a DTensor replicated over the ranks (HSDP with one-rank shards): whole θ on every rank
        assert f["type"] == "DTensor" and f["placements"] == ["R", "S(0)"] and f["global_shape"] == [1]
        assert f["local_numel"] == [1, 1] and f["dtype"] == "torch.float32"
        # inside the forward FSDP2 hands the op the gathered θ, in float32 next to bf16 activations
        assert f["theta_is_plain"] and f["theta_dtype"] == "torch.float32" and f["input_dtype"] == "torch.bfloat16"
    # the blocks around the sites are sharded as usual: rank 1 holds the second half of c_fc
    assert f0["block_local_rows"] + f1["block_local_rows"] == f0["block_rows"] and f1["block_local_rows"] > 0
    # gathers agree, and after the freeze set_lambda wrote λ through the DTensor, untouched by the optimizer
    assert f0["first_grads"] == f1["first_grads"] and f0["lam_learned"] == f1["lam_learned"]
    assert f0["lam_after_freeze"] == f1["lam_after_freeze"] == [[40.0], [40.0]]
    assert f0["full_theta"] == f1["full_theta"]
    assert all(f0["theta_grad_is_none_after_freeze"]) and all(f1["theta_grad_is_none_after_freeze"])


def test_gather_full_model_gives_rank0_a_plain_copy(launched):
    _, (r0, r1) = launched
    assert r1["fsdp2"]["gathered_model"] is None
    gathered = r0["fsdp2"]["gathered_model"]
    assert gathered["type"] == "GPT2LMHeadModel" and not gathered["any_dtensor"]
    assert gathered["lam"] == [[40.0], [40.0]] and gathered["fc_equal"] and gathered["tied"]


def test_fsdp2_theta_gradient_is_the_global_batch_mean(launched):
    """θ's gradient under FSDP2 is the mean over both ranks' halves: it matches the full batch in
    one process (float32, no sharding), and neither half alone."""
    _, (r0, _) = launched
    sys.path.insert(0, str(HERE))
    import distributed_worker as worker
    from trainer_helpers import text_blocks

    from hf_kgelu.modeling import trained_sites

    blocks = text_blocks()["train"]["input_ids"][:16]

    def theta_grads(batch):
        model = worker.tiny_gpt2()
        model(input_ids=batch, labels=batch).loss.backward()
        return torch.tensor([site.theta.grad.double().tolist() for _, site in trained_sites(model)])

    sharded = torch.tensor(r0["fsdp2"]["first_grads"])
    full, halves = theta_grads(blocks), [theta_grads(blocks[:8]), theta_grads(blocks[8:])]
    torch.testing.assert_close(sharded, full, rtol=0.05, atol=1e-6)  # bf16 activations in the FSDP run
    for half in halves:
        assert (half - full).abs().max() > 4 * (sharded - full).abs().max()


def test_fsdp2_wrap_list_leaves_out_the_class_holding_the_input_embeddings():
    """accelerate shards `get_input_embeddings()` on its own after the `_no_split_modules` units;
    for DeiT/ViT/BERT (whose *Embeddings are in that list) that second shard crashed. The fix
    drops exactly those classes, and leaves GPT-2 (tied embeddings, GPT2Block only) alone."""
    from types import SimpleNamespace

    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DeiTConfig,
        DeiTForImageClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    from hf_kgelu.training.distributed import keep_input_embeddings_wrappable

    def plugin(**kw):
        return SimpleNamespace(fsdp_version=2, auto_wrap_policy=transformer_auto_wrap_policy, transformer_cls_names_to_wrap=None, **kw)

    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    deit = DeiTForImageClassification(DeiTConfig(**small, image_size=16, patch_size=8, hidden_act="kgelu"))
    p = plugin()
    assert keep_input_embeddings_wrappable(deit, p) == ["DeiTLayer"] and p.transformer_cls_names_to_wrap == ["DeiTLayer"]
    bert = BertForSequenceClassification(BertConfig(**small, vocab_size=50))
    assert keep_input_embeddings_wrappable(bert, plugin()) == ["BertLayer"]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16))
    assert keep_input_embeddings_wrappable(gpt2, plugin()) is None
    # an explicit wrap list, another policy, or FSDP1/no FSDP: untouched
    explicit = plugin()
    explicit.transformer_cls_names_to_wrap = ["DeiTEmbeddings", "DeiTLayer"]
    assert keep_input_embeddings_wrappable(deit, explicit) is None
    other_policy = SimpleNamespace(fsdp_version=2, auto_wrap_policy=None, transformer_cls_names_to_wrap=None)
    assert keep_input_embeddings_wrappable(deit, other_policy) is None
    assert keep_input_embeddings_wrappable(deit) is None  # no accelerate FSDP2 state in this process
