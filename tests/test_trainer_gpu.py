"""KGeluTrainer on a CUDA device in bf16 mixed precision (skipped without CUDA).

Self-contained (no `datasets`, no scikit-learn): the GPU machine has neither.
"""

import json

import pytest
import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

from hf_kgelu import target_lambda
from hf_kgelu.modeling import trained_sites
from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments

pytestmark = pytest.mark.gpu

MAX_STEPS, SWITCH, BLOCK = 24, 6, 64


class ByteBlocks(Dataset):
    """The stdlib pydoc topics as UTF-8 byte blocks (vocabulary 256)."""

    def __init__(self, blocks: int = 256):
        from hf_kgelu.data import embedded_text

        data = embedded_text().encode("utf-8")[: blocks * BLOCK]
        self.ids = torch.tensor(list(data)).reshape(blocks, BLOCK)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class Watch(TrainerCallback):
    def __init__(self):
        self.lam, self.before, self.after = {}, {}, {}

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.before[state.global_step + 1] = [s.theta.detach().clone() for _, s in trained_sites(model)]

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step + 1] = [s.theta.detach().clone() for _, s in trained_sites(model)]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.lam[state.global_step] = [s.lam.detach().cpu().clone() for _, s in trained_sites(model)]


def _run(output_dir, resume=None):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=BLOCK,
                                       activation_function="kgelu", bos_token_id=0, eos_token_id=0))
    args = KGeluTrainingArguments(
        output_dir=str(output_dir), max_steps=MAX_STEPS, per_device_train_batch_size=16, learning_rate=3e-3, bf16=True,
        weight_decay=0.1, logging_steps=2, save_strategy="steps", save_steps=8, report_to="none", disable_tqdm=True,
        kgelu_anneal_start=0.25,
    )
    watch = Watch()
    trainer = KGeluTrainer(model=model, args=args, train_dataset=ByteBlocks(), callbacks=[watch])
    trainer.train(resume_from_checkpoint=resume)
    return model, watch


def test_bf16_cuda_run_anneals_and_resumes_exactly(tmp_path):
    assert torch.cuda.is_available()
    model, first = _run(tmp_path / "run")
    target = target_lambda(0.005)
    assert next(model.parameters()).is_cuda
    assert all(site.theta.dtype == torch.float32 for _, site in trained_sites(model))
    assert all(any(not torch.equal(a, b) for a, b in zip(first.before[s], first.after[s])) for s in range(1, SWITCH + 1))
    assert not any(any(not torch.equal(a, b) for a, b in zip(first.before[s], first.after[s]))
                   for s in range(SWITCH + 1, MAX_STEPS + 1))
    assert all(abs(site.lam.item() - target) <= 1e-5 * target for _, site in trained_sites(model))

    # resume from the mid-anneal checkpoint of the same run: the rest of the trajectory is bit-identical
    _, resumed = _run(tmp_path / "run", resume=str(tmp_path / "run" / "checkpoint-8"))
    for step in range(9, MAX_STEPS + 1):
        assert all(torch.equal(a, b) for a, b in zip(resumed.lam[step], first.lam[step])), step
    history = json.loads((tmp_path / "run" / "hardness_history.json").read_text())
    assert history["anneal_start_step"] == SWITCH and history["steps"][-1]["step"] == MAX_STEPS


DDP_WORKER = """
import json, os, sys
sys.path[:0] = [{tests!r}, os.path.dirname({tests!r})]
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from hf_kgelu.modeling import trained_sites
from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments
from test_trainer_gpu import ByteBlocks

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=256, n_positions=64,
                                   activation_function="kgelu", bos_token_id=0, eos_token_id=0))
args = KGeluTrainingArguments(output_dir={out!r}, max_steps=16, per_device_train_batch_size=8, learning_rate=3e-3,
                              bf16=True, report_to="none", disable_tqdm=True, save_strategy="no",
                              kgelu_anneal_start=0.25, gradient_checkpointing={checkpointing!r},
                              ddp_find_unused_parameters={find_unused!r}, kgelu_theta_sync={theta_sync!r})
KGeluTrainer(model=model, args=args, train_dataset=ByteBlocks()).train()
rank = int(os.environ["RANK"])
json.dump([s.lam.tolist() for _, s in trained_sites(model)], open(os.path.join({out!r}, f"rank{{rank}}.json"), "w"))
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("checkpointing, find_unused, theta_sync",
                         [(False, None, "auto"), (True, None, "auto"), (True, None, "engine"), (True, True, "engine")])
def test_ddp_two_gpus_anneal_identically(tmp_path, checkpointing, find_unused, theta_sync):
    """DDP: freezing θ mid-run must not stall gradient reduction, and every rank ends at λ*, with θ outside
    DDP (the default: one all-reduce by the trainer) and inside it (its buckets)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER.format(tests=str(Path(__file__).parent), out=str(tmp_path),
                                        checkpointing=checkpointing, find_unused=find_unused,
                                        theta_sync=theta_sync))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script)],
                   check=True, env=env, timeout=300, cwd=tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    target = target_lambda(0.005)
    assert all(abs(v[0] - target) <= 1e-5 * target for v in ranks[0])
