"""λ-GELU under two real processes on CPU (gloo), launched the way users launch: `accelerate launch`
with scripts/accelerate_configs/cpu.yaml. One launch (tests/distributed_worker.py) does all the
multi-process work; the single-process twin runs here. What is checked:

- DDP through KGeluTrainer: θ identical on both ranks at every logged step (checked in-run by
  KGeluDistributedCallback and again from the recorded λ), the anneal switch on the same step,
  checkpoints written by rank 0 only, an exact resume, and the same λ trajectory, weights and
  ReLU model as one process with the same global batch;
- the sync check raises on every rank when θ or the switch step differ;
- DDP keeps θ out of its buckets (`kgelu_theta_sync="auto"`): KGeluTrainer all-reduces θ's gradients;
- FSDP2 through accelerate and KGeluTrainer (tests/engines_worker.py, bf16): θ outside the shards, a plain
  float32 tensor on every rank, one all-reduce of all θ gradients per step, the global batch's gradient,
  λ* exact, an exact resume; the old way (`kgelu_theta_sync="engine"`, `fully_shard` by hand: each site
  its own float32 unit replicated over the ranks) still reads, writes and freezes θ through the DTensor;
- DeepSpeed ZeRO-2 and ZeRO-3 through `accelerate launch --config_file scripts/accelerate_configs/deepspeed_zero*.yaml`
  on DeepSpeed's CPU accelerator (skipped without deepspeed): θ's own group (lr × η, no weight decay), a float32 θ
  in the forward next to DeepSpeed's bf16 parameter, λ* exact in the saved model, an exact resume; and the loud
  errors for DeepSpeed configurations that would replace θ's group.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


def _launch(config: Path, *worker_args) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--main_process_port", str(_free_port()), *map(str, worker_args)]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"accelerate launch failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    _launch(CONFIG, HERE / "distributed_worker.py", out)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    return out, ranks


def _engine_launch(tmp_path_factory, engine: str, config: Path):
    out = tmp_path_factory.mktemp(engine)
    _launch(config, HERE / "engines_worker.py", engine, out)
    return out / engine, [json.loads((out / f"{engine}-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def fsdp2(tmp_path_factory):
    return _engine_launch(tmp_path_factory, "fsdp2", CONFIG)


needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")


@pytest.fixture(scope="module", params=[2, 3], ids=["zero2", "zero3"])
def zero(request, tmp_path_factory):
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("needs deepspeed (pip install deepspeed: no CUDA needed, it runs on its CPU accelerator)")
    config = ROOT / "scripts" / "accelerate_configs" / f"deepspeed_zero{request.param}.yaml"
    return _engine_launch(tmp_path_factory, f"zero{request.param}", config)


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


def test_ddp_leaves_theta_to_the_trainer(launched):
    """θ is in DDP's ignore list (no bucket, no broadcast, no unused-parameter wait at the freeze); the
    trainer's one all-reduce keeps it identical (the tests below) and equal to one process's."""
    _, ranks = launched
    for rank in ranks:
        assert rank["first"]["theta_sync"] == "outside"
        assert rank["first"]["ddp_ignored"] == ["transformer.h.0.mlp.act.theta", "transformer.h.1.mlp.act.theta"]


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


# ---- FSDP2 through accelerate: θ outside the shards ---------------------------------------------------


def _float32_lambda(lam: float) -> float:
    """λ as the float32 θ that set_lambda writes produces it: what "λ* exactly" means."""
    from hf_kgelu.modeling.module import KGELU

    site = KGELU()
    site.set_lambda(lam)
    return site.lam.item()


def _resumed_exactly(out: Path, r0: dict, r1: dict) -> None:
    for rank in (r0, r1):
        assert rank["resumed"]["checked_steps"] == [5, 6, 7, 8]
        for step in range(5, 9):  # θ learned on (5, 6) from the restored optimizer, then the schedule
            assert rank["resumed"]["lam"][str(step)] == rank["first"]["lam"][str(step)], step
    assert r0["resumed"]["saved_theta"] == r0["first"]["saved_theta"]
    first = load_file(str(out / "run" / "checkpoint-8" / "model.safetensors"))
    resumed = load_file(str(out / "resumed" / "checkpoint-8" / "model.safetensors"))
    for name, value in first.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-6, msg=name)


def test_fsdp2_keeps_theta_outside_the_shards(fsdp2):
    _, (r0, r1) = fsdp2
    for rank in (r0, r1):
        first = rank["first"]
        assert first["distributed_type"] == "DistributedType.FSDP" and first["engine"] == "fsdp2"
        assert first["theta_sync"] == "outside"
        assert first["block_weight_type"] == "DTensor"  # the blocks are sharded (bf16 compute)...
        # ...θ is not: a plain float32 parameter, handed to the op in float32 next to bf16 activations
        assert {t["type"] for t in first["theta"]} == {"Parameter"} and {t["dtype"] for t in first["theta"]} == {"torch.float32"}
        assert first["theta_type"] == "Parameter" and first["forward_theta_dtype"] == "torch.float32"
        assert first["input_dtype"] == "torch.bfloat16"
        # θ's own group survived accelerate's remapping of the optimizer: lr × η (10), no weight decay
        theta_group = first["groups"][-1]
        assert theta_group["size"] == 2 and theta_group["weight_decay"] == 0.0
        assert theta_group["lr"] == pytest.approx(10 * first["groups"][0]["lr"])


def test_fsdp2_one_all_reduce_of_theta_per_step(fsdp2):
    _, (r0, r1) = fsdp2
    for rank in (r0, r1):
        # one call per optimizer step, reducing both θ while they learn (steps 1-6), nothing once frozen
        assert rank["first"]["sync_calls"] == [2] * 6 + [0] * 2
        assert rank["resumed"]["sync_calls"] == [2] * 2 + [0] * 2


def test_fsdp2_theta_identical_on_every_rank_and_lambda_star_exact(fsdp2):
    _, (r0, r1) = fsdp2
    assert r0["first"]["checked_steps"] == r1["first"]["checked_steps"] == list(range(1, 9))
    assert r0["first"]["lam"] == r1["first"]["lam"] and r0["resumed"]["lam"] == r1["resumed"]["lam"]
    assert r0["first"]["switch_step"] == r0["first"]["anneal_start_step"] == 6
    star = _float32_lambda(target_lambda(0.005))
    assert r0["first"]["lam"]["8"] == [[star], [star]]
    assert all(dtype == "torch.float32" and value == r0["first"]["saved_theta"]["transformer.h.0.mlp.act.theta"][1]
               for dtype, value in r0["first"]["saved_theta"].values())
    assert r0["first"]["gathered_lam"] == [[star], [star]] and r1["first"]["gathered_lam"] is None  # gather_full_model


def test_fsdp2_theta_gradient_is_the_one_process_gradient_of_the_global_batch(fsdp2):
    """After the all-reduce θ's gradient is that of the whole global batch in one process (float32 there,
    bf16 activations under FSDP2), and neither rank's half alone."""
    _, (r0, r1) = fsdp2
    sys.path.insert(0, str(HERE))
    import distributed_worker as worker

    from hf_kgelu.modeling import trained_sites

    def theta_grads(rows):
        model = worker.tiny_gpt2()
        batch = torch.tensor(rows)
        model(input_ids=batch, labels=batch).loss.backward()
        return torch.tensor([site.theta.grad.double().tolist() for _, site in trained_sites(model)])

    reduced = torch.tensor(r0["first"]["first_sync_grads"])
    assert r0["first"]["first_sync_grads"] == r1["first"]["first_sync_grads"]
    full = theta_grads(r0["first"]["first_batch"] + r1["first"]["first_batch"])
    torch.testing.assert_close(reduced, full, rtol=0.05, atol=1e-6)
    for half in (theta_grads(r0["first"]["first_batch"]), theta_grads(r1["first"]["first_batch"])):
        assert (half - full).abs().max() > 4 * (reduced - full).abs().max()


def test_fsdp2_resumes_exactly(fsdp2):
    out, (r0, r1) = fsdp2
    _resumed_exactly(out, r0, r1)


def test_theta_gradient_sync_with_sites_some_ranks_never_reached(fsdp2):
    """A θ with a gradient on one rank only averages with zeros; one with none anywhere keeps none."""
    _, ranks = fsdp2
    for rank in ranks:
        assert rank["partial"]["grads"] == [[1.5], [2.0], None]


# ---- DeepSpeed ZeRO-2 / ZeRO-3 through accelerate launch -----------------------------------------------


@needs_deepspeed
def test_deepspeed_keeps_theta_group_and_a_float32_theta(zero):
    _, (r0, r1) = zero
    for rank in (r0, r1):
        first = rank["first"]
        assert first["distributed_type"] == "DistributedType.DEEPSPEED" and first["theta_sync"] == "engine"
        # DeepSpeed casts every parameter to bf16; the op computes with the float32 θ kept from the masters
        assert first["param_dtype"] == "torch.bfloat16" and first["input_dtype"] == "torch.bfloat16"
        assert first["forward_theta_dtype"] == "torch.float32"
        groups = first["groups"]  # DeepSpeed kept the Trainer's groups: θ's has lr × η and no weight decay
        assert len(groups) == 3 and groups[-1]["weight_decay"] == 0.0
        assert groups[-1]["lr"] == pytest.approx(10 * groups[0]["lr"])


@needs_deepspeed
def test_deepspeed_anneals_to_lambda_star_exactly_and_saves_it_in_float32(zero):
    _, (r0, r1) = zero
    assert r0["first"]["checked_steps"] == list(range(1, 9)) and r0["first"]["lam"] == r1["first"]["lam"]
    star = _float32_lambda(target_lambda(0.005))
    assert r0["first"]["lam"]["8"] == [[star], [star]]
    theta_star = r0["first"]["theta"][0]["float32_theta"]
    assert r0["first"]["saved_theta"] == {name: ["torch.float32", theta_star] for name in r0["first"]["theta_names"]}
    assert r0["first"]["gathered_lam"] == [[star], [star]] and r1["first"]["gathered_lam"] is None  # the pipeline's copy
    # the schedule starts from the λ learned by step 6, which moved (θ trained in its group)
    assert all(abs(v[0] - 1.05) > 1e-3 for v in r0["first"]["lam"]["6"])


@needs_deepspeed
def test_deepspeed_resumes_exactly(zero):
    out, (r0, r1) = zero
    _resumed_exactly(out, r0, r1)


# ---- the choices and the loud errors, without processes -------------------------------------------------


def test_theta_sync_mode_per_engine():
    from hf_kgelu.training.theta_sync import resolve_mode

    assert resolve_mode("auto", "ddp") == resolve_mode("auto", "fsdp2") == "outside"
    assert resolve_mode("engine", "ddp") == resolve_mode("auto", "deepspeed") == resolve_mode("auto", "fsdp1") == "engine"
    assert resolve_mode("auto", "ddp", reduces_theta=False) == "engine"  # a stock Trainer: θ stays in DDP
    with pytest.raises(ValueError, match="not available under DeepSpeed"):
        resolve_mode("outside", "deepspeed")
    with pytest.raises(ValueError, match="KGeluTrainer does"):
        resolve_mode("outside", "ddp", reduces_theta=False)
    with pytest.raises(ValueError, match="kgelu_theta_sync must be one of"):
        resolve_mode("fast", "ddp")


def test_deepspeed_configs_that_replace_theta_group_are_refused_loudly(monkeypatch):
    from hf_kgelu.training import zero
    from hf_kgelu.training.zero import KGeluDeepSpeedError, KGeluZeroCallback, check_deepspeed_config

    check_deepspeed_config({"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}})  # accelerate's own: fine
    config = {"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "scheduler": {"type": "WarmupLR"},
              "zero_optimization": {"stage": 2}}
    with pytest.raises(KGeluDeepSpeedError) as caught:
        check_deepspeed_config(config)
    message = str(caught.value)
    assert '"optimizer" block (AdamW)' in message and '"scheduler" block (WarmupLR)' in message
    assert "Delete the block" in message and "own optimizer group" in message
    # wired into the trainer's callback: refused when the trainer is built under DeepSpeed, not at the first save
    sys.path.insert(0, str(HERE))
    import distributed_worker as worker

    monkeypatch.setattr(zero, "current_engine", lambda: "deepspeed")
    args = SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config=config))
    with pytest.raises(KGeluDeepSpeedError):
        KGeluZeroCallback().prepare(worker.tiny_gpt2(), args)
    KGeluZeroCallback().prepare(worker.tiny_gpt2(), SimpleNamespace(hf_deepspeed_config=SimpleNamespace(config={})))


def test_float32_theta_is_what_the_forward_computes_with():
    """Under DeepSpeed θ is a bf16 parameter; the site reads, writes and computes with its float32 copy, and
    the gradient still reaches the parameter."""
    from hf_kgelu.modeling.module import KGELU
    from hf_kgelu.training.zero import float32_theta_state

    site, reference = KGELU(), KGELU()
    site.theta.data = site.theta.data.to(torch.bfloat16)
    site.float32_theta = reference.theta.detach().clone()
    for s in (site, reference):
        s.set_lambda(159.577)
    assert site.float32_theta.dtype == torch.float32 and torch.equal(site.float32_theta, reference.theta.detach())
    assert site.lam.item() == reference.lam.item()
    x = torch.randn(64, dtype=torch.bfloat16)
    y, y_reference = site(x), reference(x)
    assert torch.equal(y, y_reference)  # computed with the float32 θ, not the bf16 one
    y.float().sum().backward()
    y_reference.float().sum().backward()
    assert site.theta.grad is not None and site.theta.grad.dtype == torch.bfloat16
    torch.testing.assert_close(site.theta.grad.float(), reference.theta.grad, rtol=1e-2, atol=0)
    model = torch.nn.Sequential(site)
    state = float32_theta_state(model, {"0.theta": site.theta.detach().clone()})
    assert state["0.theta"].dtype == torch.float32 and torch.equal(state["0.theta"], site.float32_theta)
