"""relu_ize: the ReLU twin of an annealed λ-GELU model, its config, the rebuild check, the
closed-form bound, PEFT and no-site errors, and the substitution report."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import VOCAB, tiny_model
from torch import nn

import hf_kgelu
from hf_kgelu import target_lambda
from hf_kgelu.hardness import ACT_SUP_CONSTANT, BOUNDS, tolerance_at
from hf_kgelu.metrics import accuracy, evaluate_model, perplexity
from hf_kgelu.modeling import find_sites
from hf_kgelu.ops import kgelu
from hf_kgelu.relu import relu_ize
from hf_kgelu.substitution import substitution_report

LAMBDA_STAR = target_lambda(0.005, "gate_l1")  # ≈ 159.6, the paper's target


def _inputs(arch: str, batch: int = 3, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if arch.startswith(("gpt2", "bert")):
        return {"input_ids": torch.randint(0, VOCAB, (batch, 12), generator=g)}
    return {"pixel_values": torch.randn(batch, 1, 8, 8, generator=g)}


def _annealed(arch: str, lam: float = LAMBDA_STAR, seed: int = 0):
    """A tiny λ-GELU model at λ = `lam` everywhere (per channel: λ spread over [lam, 2·lam])."""
    per_channel = arch.endswith("-per-channel")
    model = tiny_model(arch.removesuffix("-per-channel"), seed=seed, **({"kgelu_per_channel": True} if per_channel else {}))
    for _, site in find_sites(model):
        site.set_lambda(torch.linspace(lam, 2 * lam, site.num_channels) if site.per_channel else lam)
    return model


MODELS = ("gpt2", "deit", "vit", "bert", "gpt2-per-channel")
ACTIVATION_KEY = {"gpt2": "activation_function"}

# Runs with `import hf_kgelu` made impossible: stock transformers must load every folder alone.
CHILD = textwrap.dedent(
    """
    import json, sys
    import torch, transformers
    from safetensors.torch import load_file
    from transformers.activations import ACT2CLS
    try:
        import hf_kgelu
        blocked = False
    except ImportError:
        blocked = True
    torch.set_num_threads(1)
    auto = {"ForCausalLM": "AutoModelForCausalLM", "LMHeadModel": "AutoModelForCausalLM",
            "ForImageClassification": "AutoModelForImageClassification", "ForMaskedLM": "AutoModelForMaskedLM"}
    results = {"blocked": blocked, "kgelu_registered": "kgelu" in ACT2CLS}
    for name, folder, expected_file in json.loads(sys.argv[1]):
        config = transformers.AutoConfig.from_pretrained(folder)
        arch = config.architectures[0]
        cls = getattr(transformers, next(v for k, v in auto.items() if arch.endswith(k)))
        model, info = cls.from_pretrained(folder, output_loading_info=True)
        model.eval()
        expected = load_file(expected_file)
        inputs = {k[len("input."):]: v for k, v in expected.items() if k.startswith("input.")}
        with torch.no_grad():
            out = model(**inputs).logits
        acts = {k: v for k, v in config.to_dict().items() if isinstance(v, str) and "act" in k}
        results[name] = {
            "activations": acts,
            "kgelu_keys": [k for k in config.to_dict() if k.startswith("kgelu_")],
            "theta": [k for k in model.state_dict() if k.endswith("theta")],
            "missing": list(info["missing_keys"]), "unexpected": list(info["unexpected_keys"]),
            "relu_modules": sum(isinstance(m, torch.nn.ReLU) for m in model.modules()),
            "max_diff": (out - expected["logits"]).abs().max().item(),
        }
    print(json.dumps(results))
    """
)


def test_relu_ized_models_load_in_stock_transformers(tmp_path):
    """Annealed (λ = λ*) → relu_ize → save_pretrained → loaded by the Auto classes in a process
    where hf_kgelu cannot be imported: config says relu, no θ, same outputs as in memory."""
    torch.set_num_threads(1)
    jobs, sites_per_model = [], {}
    for name in MODELS:
        model = _annealed(name)
        relu_model, report = relu_ize(model)
        key = ACTIVATION_KEY.get(name.split("-")[0], "hidden_act")
        assert getattr(relu_model.config, key) == "relu" and report.config_changes == {key: "kgelu"}
        assert getattr(model.config, key) == "kgelu", "relu_ize(inplace=False) must not touch the original"
        assert not [k for k in vars(relu_model.config) if k.startswith("kgelu_")]
        assert not [k for k in relu_model.state_dict() if k.endswith("theta")]
        assert find_sites(relu_model) == [] and len(find_sites(model)) == len(report.sites)
        for site in report.sites:
            if name.endswith("per-channel"):
                assert site.num_channels == 128 and report.kgelu_settings == {"kgelu_per_channel": True}
                assert site.lam == pytest.approx(1.5 * LAMBDA_STAR, rel=1e-4)
                assert (site.lam_min, site.lam_max) == (pytest.approx(LAMBDA_STAR, rel=1e-5), pytest.approx(2 * LAMBDA_STAR, rel=1e-5))
            else:
                assert site.lam == pytest.approx(LAMBDA_STAR, rel=1e-5)
            # the guarantee is taken at the site's smallest λ
            assert site.tolerance == {b: pytest.approx(tolerance_at(LAMBDA_STAR, b), rel=1e-4) for b in BOUNDS}
        assert report.tolerance("gate_l1") == pytest.approx(0.005, rel=1e-4)
        sites_per_model[name] = len(report.sites)

        folder = tmp_path / name
        relu_model.save_pretrained(folder)
        inputs = _inputs(name.split("-")[0])
        with torch.no_grad():
            logits = relu_model(**inputs).logits
        expected = tmp_path / f"{name}.expected.safetensors"
        save_file({"logits": logits.contiguous(), **{f"input.{k}": v for k, v in inputs.items()}}, str(expected))
        jobs.append((name, str(folder), str(expected)))

    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['hf_kgelu'] = None  # `import hf_kgelu` fails\n")
    env = {**os.environ, "PYTHONPATH": str(shim), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(jobs)], env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    assert results["blocked"] and not results["kgelu_registered"]
    for name in MODELS:
        r = results[name]
        key = ACTIVATION_KEY.get(name.split("-")[0], "hidden_act")
        assert r["activations"][key] == "relu" and "kgelu" not in r["activations"].values(), r["activations"]
        assert r["kgelu_keys"] == [] and r["theta"] == [] and r["missing"] == [] and r["unexpected"] == []
        assert r["relu_modules"] == sites_per_model[name]
        assert r["max_diff"] <= 1e-6, (name, r["max_diff"])


# (site in layer 0, the linear layer right after it) per architecture.
FIRST_MLP = {
    "gpt2": ("transformer.h.0.mlp.act", "transformer.h.0.mlp.c_proj"),
    "vit": ("vit.layers.0.mlp.activation_fn", "vit.layers.0.mlp.fc2"),
    "bert": ("bert.encoder.layer.0.intermediate.intermediate_act_fn", "bert.encoder.layer.0.output.dense"),
}


def _row_abs_sums(linear: nn.Module) -> torch.Tensor:
    # nn.Linear stores (out, in); GPT-2's Conv1D stores (in, out).
    return linear.weight.abs().sum(1) if isinstance(linear, nn.Linear) else linear.weight.abs().sum(0)


@pytest.mark.parametrize("arch", sorted(FIRST_MLP))
def test_annealed_model_and_relu_twin_differ_within_the_closed_form_bound(arch):
    """Activation level, every site: |xΦ(λx) − ReLU(x)| ≤ 0.169971/λ on the inputs the site really
    sees. Model level, first MLP: its input is the same in both models (nothing before it changed),
    so each output of the next linear layer moves by at most Σ_i |W_ji| · 0.169971/λ."""
    lam = target_lambda(0.01, "act_sup")  # λ ≈ 17: a difference large enough to measure
    model = _annealed(arch, lam)
    relu_model, _ = relu_ize(model)
    site_name, next_name = FIRST_MLP[arch]

    site_inputs, outputs = {}, {}
    hooks = [site.register_forward_pre_hook(lambda m, args, n=name: site_inputs.setdefault(n, args[0].detach()))
             for name, site in find_sites(model)]
    for tag, net in (("kgelu", model), ("relu", relu_model)):
        hooks.append(net.get_submodule(next_name).register_forward_hook(
            lambda m, args, out, tag=tag: outputs.setdefault(tag, out.detach())))
    with torch.no_grad():
        model(**_inputs(arch, batch=4))
        relu_model(**_inputs(arch, batch=4))
    for hook in hooks:
        hook.remove()

    eps = ACT_SUP_CONSTANT / lam
    assert len(site_inputs) == len(find_sites(model))
    for name, x in site_inputs.items():
        gap = (kgelu(x, torch.tensor([lam])) - torch.relu(x)).abs().max().item()
        assert 0 < gap <= eps * (1 + 1e-5), (name, gap, eps)
        # the bound has teeth: plain GELU on the same inputs breaks it
        assert (kgelu(x, torch.tensor([1.0])) - torch.relu(x)).abs().max().item() > eps

    bound = _row_abs_sums(model.get_submodule(next_name)) * eps
    gap = (outputs["kgelu"] - outputs["relu"]).abs().amax(dim=tuple(range(outputs["kgelu"].dim() - 1)))
    assert (gap > 0).any() and (gap <= bound * (1 + 1e-4) + 1e-7).all(), (gap / bound).max()


def test_mixed_activations_are_refused_and_nothing_changes():
    model = tiny_model("bert")
    mixed = "bert.encoder.layer.1.intermediate.intermediate_act_fn"
    model.bert.encoder.layer[1].intermediate.intermediate_act_fn = nn.GELU()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="refusing to relu-ize") as error:
        relu_ize(model, inplace=True)
    assert mixed in str(error.value) and "include_gelu" in str(error.value)
    # inplace=True, yet nothing changed: the check runs before the swap
    assert model.config.hidden_act == "kgelu" and len(find_sites(model)) == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    relu_model, report = relu_ize(model, include_gelu=True)  # one key can describe "all ReLU"
    assert [(s.name, s.activation, s.lam) for s in report.sites if s.activation != "kgelu"] == [(mixed, "GELU", 1.0)]
    assert report.tolerance("act_sup") == pytest.approx(ACT_SUP_CONSTANT)  # λ = 1 bounds the whole swap
    assert sum(isinstance(m, nn.ReLU) for m in relu_model.modules()) == 3


def test_a_site_no_config_key_builds_is_refused():
    model = tiny_model("gpt2")
    model.transformer.h[0].mlp.extra_act = hf_kgelu.KGELU()  # from_pretrained would never build this
    with pytest.raises(ValueError, match="transformer.h.0.mlp.extra_act: the ReLU model has ReLU, the rewritten config builds nothing"):
        relu_ize(model)


def test_model_without_sites_is_an_error_and_gelu_swaps_on_request():
    gelu = tiny_model("gpt2", activation="gelu_new")
    with pytest.raises(ValueError, match="no λ-GELU .* include_gelu=True"):
        relu_ize(gelu)
    relu_model, report = relu_ize(gelu, include_gelu=True)
    assert relu_model.config.activation_function == "relu" and report.config_changes == {"activation_function": "gelu_new"}
    assert [s.lam for s in report.sites] == [1.0, 1.0]
    inputs = _inputs("gpt2")
    assert not torch.allclose(gelu(**inputs).logits, relu_model(**inputs).logits)

    with pytest.raises(ValueError, match="no λ-GELU \\(KGELU\\) or GELU activation site"):
        relu_ize(tiny_model("gpt2", activation="relu"), include_gelu=True)


def test_peft_model_needs_merging_first():
    from peft import LoraConfig, get_peft_model

    base = _annealed("gpt2")
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False))
    with pytest.raises(ValueError, match=r"merge_and_unload\(\)"):
        relu_ize(peft_model)
    inputs = _inputs("gpt2")
    with torch.no_grad():
        merged_reference = relu_ize(_merged_copy(peft_model))[0](**inputs).logits
    relu_model, report = relu_ize(peft_model, merge_peft=True)
    assert report.merged_peft and type(relu_model).__name__ == "GPT2LMHeadModel"
    assert not [n for n, m in relu_model.named_modules() if type(m).__module__.startswith("peft")]
    with torch.no_grad():
        assert torch.allclose(relu_model(**inputs).logits, merged_reference, atol=1e-6)
    # the PEFT model passed in is untouched
    assert len(find_sites(peft_model)) == 2 and any("lora_A" in n for n, _ in peft_model.named_parameters())


def _merged_copy(peft_model):
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def test_metrics_are_exact():
    assert accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([1, 1, -100])) == 0.5
    assert accuracy([2, 1, 0], [2, 1, 1]) == pytest.approx(2 / 3)
    assert perplexity(0.0) == 1.0 and perplexity(1e4) == float("inf")

    model = tiny_model("gpt2")
    ids = _inputs("gpt2", batch=4)["input_ids"]
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss.item()
    result = evaluate_model(model, [{"input_ids": row} for row in ids], batch_size=3)  # two uneven batches
    assert result["loss"] == pytest.approx(reference, rel=1e-5) and result["perplexity"] == pytest.approx(torch.tensor(reference).exp().item(), rel=1e-5)
    # padding (attention_mask 0) is not scored: a padded row scores as the short row alone
    short = ids[0, :7]
    padded = {"input_ids": torch.cat([short, torch.zeros(5, dtype=torch.long)])[None], "attention_mask": torch.tensor([[1] * 7 + [0] * 5])}
    with torch.no_grad():
        short_loss = model(input_ids=short[None], labels=short[None]).loss.item()
    assert evaluate_model(model, padded)["loss"] == pytest.approx(short_loss, rel=1e-5)
    with pytest.raises(ValueError, match="task="):
        evaluate_model(nn.Linear(2, 2), [{"input_ids": torch.zeros(2)}])


def test_eval_data_from_a_datasets_folder(tmp_path):
    from datasets import Dataset, DatasetDict

    from hf_kgelu.data import load_eval_data

    model = tiny_model("vit")
    g = torch.Generator().manual_seed(5)
    pixels, labels = torch.randn(9, 1, 8, 8, generator=g), torch.randint(0, 10, (9,), generator=g)
    rows = [{"pixel_values": p, "labels": int(y)} for p, y in zip(pixels, labels)]
    DatasetDict({"validation": Dataset.from_dict({"pixel_values": pixels.numpy(), "label": labels.numpy(),
                                                  "note": ["x"] * 9})}).save_to_disk(str(tmp_path / "digits"))
    data = load_eval_data(tmp_path / "digits")
    assert evaluate_model(model, data, batch_size=4) == evaluate_model(model, rows, batch_size=9)
    with pytest.raises(ValueError, match="split="):
        load_eval_data(tmp_path / "digits", split="train")


def test_substitution_report_is_the_table_row_and_leaves_models_alone():
    lam = target_lambda(0.02, "act_sup")
    model, gelu = _annealed("vit", lam), tiny_model("vit", activation="gelu", seed=0)
    model.train()  # the report must not even switch modes
    g = torch.Generator().manual_seed(3)
    data = [{"pixel_values": torch.randn(1, 8, 8, generator=g), "labels": int(torch.randint(0, 10, (), generator=g))} for _ in range(40)]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    report = substitution_report(model, data, gelu_baseline=gelu, batch_size=16)
    assert report.task == "classification" and report.metric == "accuracy" and report.higher_is_better
    assert model.training and not gelu.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and len(find_sites(model)) == 2

    assert report.kgelu_before == evaluate_model(model, data)["accuracy"]
    assert report.kgelu_after == evaluate_model(relu_ize(model)[0], data)["accuracy"]
    assert report.gelu_before == evaluate_model(gelu, data)["accuracy"]
    assert report.gelu_after == evaluate_model(relu_ize(gelu, include_gelu=True)[0], data)["accuracy"]
    assert report.relu_report is not None and len(report.relu_report.sites) == 2
    table = report.as_markdown()
    assert "λ-GELU → ReLU" in table and "GELU → ReLU (direct swap)" in table and f"{report.gelu_after:.4f}" in table
