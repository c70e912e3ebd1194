"""LoRA on a λ-GELU model: θ stays trainable, is saved in the adapter and survives the merge."""

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from trainer_helpers import ThetaWatch, lambdas, make_args, text_blocks, tiny_gpt2

from hf_kgelu import KGELU, target_lambda
from hf_kgelu.modeling import trained_sites
from hf_kgelu.modeling.peft import kgelu_modules_to_save, prepare_peft_model
from hf_kgelu.relu import relu_ize
from hf_kgelu.training import KGeluTrainer

torch.set_num_threads(1)

SITES = ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]


def lora_config(**extra):
    return LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM", **extra)


def test_prepare_peft_model_keeps_theta_trainable():
    config = lora_config(modules_to_save=["ln_f"])
    model = tiny_gpt2()
    assert kgelu_modules_to_save(model) == SITES
    peft_model = prepare_peft_model(model, config)
    assert config.modules_to_save == ["ln_f"]  # the caller's config is not modified
    assert peft_model.peft_config["default"].modules_to_save == ["ln_f", *SITES]
    sites = trained_sites(peft_model)
    assert [name for name, _ in sites] == [f"base_model.model.{s}.modules_to_save.default" for s in SITES]
    assert all(site.theta.requires_grad for _, site in sites)
    originals = [site for name, site in peft_model.named_modules() if isinstance(site, KGELU) and "original_module" in name]
    assert len(originals) == 2 and not any(site.theta.requires_grad for site in originals)
    with pytest.raises(ValueError, match="no λ-GELU"):
        prepare_peft_model(tiny_gpt2(activation="gelu_new"), lora_config())


def test_lora_training_saves_theta_in_the_adapter_and_merges(tmp_path):
    base = tiny_gpt2()
    peft_model = prepare_peft_model(base, lora_config())
    watch = ThetaWatch()
    args = make_args(tmp_path, max_steps=12, kgelu_anneal_start=0.5, learning_rate=1e-2)
    trainer = KGeluTrainer(model=peft_model, args=args, train_dataset=text_blocks()["train"], callbacks=[watch])
    thetas = {id(site.theta) for _, site in trained_sites(peft_model)}
    trainer.train()
    theta_group = [g for g in trainer.optimizer.param_groups if {id(p) for p in g["params"]} == thetas]
    assert len(theta_group) == 1 and theta_group[0]["weight_decay"] == 0.0

    assert all(watch.moved(step) for step in range(1, 7))  # θ learns through LoRA training...
    assert not any(watch.moved(step) for step in range(7, 13))  # ...and is frozen while annealing
    target = target_lambda(0.005)
    trained = lambdas(peft_model)
    assert all(abs(v.item() - target) <= 1e-5 * target for v in trained.values())
    assert any(e.get("kgelu/lambda/h.0") for e in trainer.state.log_history)

    # θ is in the saved adapter, and a fresh base model loading it gets the trained λ
    trainer.save_model(str(tmp_path / "adapter"))
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    theta_keys = sorted(k for k in saved if k.endswith(".theta"))
    assert theta_keys == [f"base_model.model.{s}.theta" for s in SITES]
    for key, (name, site) in zip(theta_keys, trained_sites(peft_model)):
        assert torch.equal(saved[key], site.theta.detach())
    reloaded = PeftModel.from_pretrained(tiny_gpt2(seed=1), str(tmp_path / "adapter"))
    assert [v.item() for v in lambdas(reloaded).values()] == [v.item() for v in trained.values()]

    # the substitution report merges a copy and leaves the trained PEFT model as it was
    report = trainer.evaluate_substitution(text_blocks()["validation"])
    assert report.metric == "perplexity" and abs(report.kgelu_after / report.kgelu_before - 1) < 0.01
    assert isinstance(trainer.model, PeftModel)

    # merge_and_unload: a plain λ-GELU model with the trained λ, ready for relu_ize
    inputs = {"input_ids": text_blocks()["validation"][:2]["input_ids"]}
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    merged = peft_model.merge_and_unload()
    assert [type(merged.get_submodule(s)) for s in SITES] == [KGELU, KGELU]
    assert [merged.get_submodule(s).lam.item() for s in SITES] == [v.item() for v in trained.values()]
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, expected, atol=1e-5)
    relu_model, relu_report = relu_ize(merged)
    assert not any(isinstance(m, KGELU) for m in relu_model.modules()) and len(relu_report.sites) == 2
