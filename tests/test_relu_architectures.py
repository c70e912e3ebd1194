"""relu_ize on the architecture shapes the matrix (tests/test_architectures.py) exposed: weight-norm
parametrized modules, activation keys without "act" in their name, GELUs no config key reaches."""

import json
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrize import is_parametrized
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BigBirdConfig,
    BigBirdForMaskedLM,
    BloomConfig,
    BloomForCausalLM,
    FunnelConfig,
    FunnelForPreTraining,
    Llama4VisionConfig,
    Llama4VisionModel,
    MT5Config,
    MT5ForConditionalGeneration,
    OpenAIGPTConfig,
    OpenAIGPTLMHeadModel,
    PatchTSTConfig,
    PatchTSTModel,
    Pop2PianoConfig,
    Pop2PianoForConditionalGeneration,
    RecurrentGemmaConfig,
    RecurrentGemmaForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
    Wav2Vec2Config,
    Wav2Vec2ForCTC,
    WhisperConfig,
    WhisperForConditionalGeneration,
)

from hf_kgelu import kgelu_config, relu_ize
from hf_kgelu.modeling import find_sites

TEXT = torch.randint(3, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def _wav2vec2(activation: str = "kgelu") -> Wav2Vec2ForCTC:
    torch.manual_seed(0)
    config = Wav2Vec2Config(
        vocab_size=12, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, hidden_act=activation, feat_extract_activation=activation,
    )
    return Wav2Vec2ForCTC(config).eval()


def test_weight_norm_parametrized_modules_do_not_block_relu_ize(tmp_path):
    """torch gives each weight-normed conv a class of its own (ParametrizedConv1d): the rebuild
    check must compare the class underneath, not refuse every Wav2Vec2/HuBERT-style model."""
    model = _wav2vec2()
    assert is_parametrized(model.wav2vec2.encoder.pos_conv_embed.conv)
    relu_model, report = relu_ize(model)
    assert len(report.sites) == len(find_sites(model)) == 4 and not find_sites(relu_model)
    relu_model.save_pretrained(tmp_path)
    reloaded = Wav2Vec2ForCTC.from_pretrained(tmp_path).eval()
    inputs = torch.randn(2, 400, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(reloaded(inputs).logits, relu_model(inputs).logits)


def _mt5(feed_forward_proj: str) -> MT5ForConditionalGeneration:
    torch.manual_seed(0)
    config = MT5Config(vocab_size=50, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2,
                       feed_forward_proj=feed_forward_proj, decoder_start_token_id=0)
    return MT5ForConditionalGeneration(config).eval()


def test_gated_activation_keys_are_rewritten_whatever_their_name(tmp_path):
    """T5's `feed_forward_proj="gated-kgelu"` has no "act" in its name: relu_ize must make it
    "gated-relu", or config.json keeps naming kgelu and a config rebuilt from that key alone
    (without the derived `dense_act_fn`) fails with KeyError: 'kgelu'."""
    model = _mt5("gated-kgelu")
    assert model.config.dense_act_fn == "kgelu" and model.config.is_gated_act and len(find_sites(model)) == 2
    relu_model, report = relu_ize(model)
    assert (relu_model.config.feed_forward_proj, relu_model.config.dense_act_fn) == ("gated-relu", "relu")
    assert report.config_changes == {"feed_forward_proj": "gated-kgelu", "dense_act_fn": "kgelu"}
    relu_model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "kgelu" not in json.dumps(saved)
    del saved["dense_act_fn"]  # T5Config derives it from feed_forward_proj
    rebuilt = MT5ForConditionalGeneration(MT5Config(**saved))
    assert all(isinstance(block.layer[-1].DenseReluDense.act, nn.ReLU) for block in rebuilt.encoder.block)
    reloaded = MT5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=TEXT, decoder_input_ids=TEXT).logits,
                           relu_model(input_ids=TEXT, decoder_input_ids=TEXT).logits)


def test_kgelu_config_turns_gated_gelu_into_gated_kgelu():
    config = kgelu_config(_mt5("gated-gelu").config)
    assert (config.feed_forward_proj, config.dense_act_fn) == ("gated-kgelu", "kgelu")
    model = MT5ForConditionalGeneration(config)
    assert len(find_sites(model)) == 2 and model.config.is_gated_act


def test_activation_key_without_act_in_its_name_openai_gpt_afn(tmp_path):
    """OpenAI GPT names its activation `afn`: the direct GELU → ReLU swap must rewrite it."""
    torch.manual_seed(0)
    gelu = OpenAIGPTLMHeadModel(OpenAIGPTConfig(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2, afn="gelu")).eval()
    relu_model, report = relu_ize(gelu, include_gelu=True)
    assert relu_model.config.afn == "relu" and report.config_changes == {"afn": "gelu"}
    relu_model.save_pretrained(tmp_path)
    reloaded = OpenAIGPTLMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(TEXT).logits, relu_model(TEXT).logits)


ENCODER = {"vocab_size": 50, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def _relu_ize_recording_warnings(model, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        relu_model, report = relu_ize(model, **kwargs)
    return relu_model, report, [str(w.message) for w in caught]


@pytest.mark.parametrize("include_gelu", [False, True])
def test_gelus_no_config_key_reaches_are_reported_not_hidden(include_gelu):
    """RoBERTa's LM head calls the `gelu` function and Whisper's conv stem `nn.functional.gelu`:
    no swap reaches them, so the report (and a warning) must say the ReLU model still has them."""
    roberta = RobertaForMaskedLM(RobertaConfig(**ENCODER, hidden_act="kgelu"))
    _, report, caught = _relu_ize_recording_warnings(roberta, include_gelu=include_gelu)
    assert report.remaining_gelu == ["functional gelu in RobertaLMHead.forward (lm_head)"]
    assert any("still computes GELU" in message and "RobertaLMHead.forward" in message for message in caught)

    whisper = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=50, d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=16, activation_function="kgelu",
        pad_token_id=1, bos_token_id=1, eos_token_id=2, decoder_start_token_id=3))
    _, report, _ = _relu_ize_recording_warnings(whisper, include_gelu=include_gelu)
    assert report.remaining_gelu == ["functional nn.functional.gelu in WhisperEncoder.forward (model.encoder)"]


def test_pure_relu_result_reports_no_remaining_gelu():
    _, report, caught = _relu_ize_recording_warnings(BertForMaskedLM(BertConfig(**ENCODER, hidden_act="kgelu")))
    assert report.remaining_gelu == [] and not [m for m in caught if "GELU" in m]


def test_hard_coded_gelu_module_is_named_when_nothing_can_be_swapped():
    """BLOOM builds its own `BloomGelu` with no config key: include_gelu cannot swap it, and the
    refusal must say why instead of claiming the model has no GELU."""
    bloom = BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.mlp\.gelu_impl \(BloomGelu\).*no config activation key"):
        relu_ize(bloom, include_gelu=True)


def test_modules_the_model_switched_itself_are_no_reason_to_refuse(tmp_path):
    """BigBird swaps its block-sparse attention for full attention when an input is short, without
    touching the config: the rebuild check must not blame the activation swap for that."""
    torch.manual_seed(0)
    model = BigBirdForMaskedLM(BigBirdConfig(**ENCODER, hidden_act="kgelu", max_position_embeddings=64)).eval()
    with torch.no_grad():
        model(TEXT)  # short: BigBird switches itself to original_full attention
    assert model.bert.encoder.layer[0].attention.self.__class__.__name__ == "BigBirdSelfAttention"
    relu_model, report = relu_ize(model)
    assert len(report.sites) == 2
    relu_model.save_pretrained(tmp_path)
    reloaded = BigBirdForMaskedLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(TEXT).logits, relu_model(TEXT).logits)


def test_a_refusal_says_what_differs_on_its_first_line():
    """The architecture matrix (and a CLI) shows one line per refusal: that line must name the problem."""
    model = BertForMaskedLM(BertConfig(**ENCODER, hidden_act="kgelu"))
    model.bert.encoder.layer[0].intermediate.intermediate_act_fn = nn.GELU()  # a key builds λ-GELU here
    with pytest.raises(ValueError) as error:
        relu_ize(model)
    first = str(error.value).splitlines()[0]
    assert first.startswith("refusing to relu-ize BertForMaskedLM: its config cannot describe the network")
    assert "bert.encoder.layer.0.intermediate.intermediate_act_fn: the ReLU model has GELU, the rewritten config builds ReLU" in first


def test_a_config_key_naming_kgelu_that_builds_nothing_is_named_in_the_refusal():
    """Pop2Piano reads `feed_forward_proj` only for "gated" (its activation is `dense_act_fn`); Llama 4's
    vision tower hard-codes nn.GELU beside an unused `hidden_act`. The refusal must say that the key
    builds nothing, not advise setting the very key that is already set."""
    pop2piano = Pop2PianoForConditionalGeneration(Pop2PianoConfig(
        vocab_size=50, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2, feed_forward_proj="gated-kgelu"))
    with pytest.raises(ValueError, match=r"its config names kgelu \(feed_forward_proj\) but Pop2PianoForConditionalGeneration builds no λ-GELU"):
        relu_ize(pop2piano)
    llama4 = Llama4VisionModel(Llama4VisionConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8,
        vision_output_dim=32, projector_input_dim=32, projector_output_dim=32, hidden_act="kgelu"))
    with pytest.raises(ValueError, match=r"names kgelu \(hidden_act\) .* model code that no config key builds \(.*\(GELU\)"):
        relu_ize(llama4)


def test_a_model_holding_autograd_state_from_a_training_forward_can_be_relu_ized():
    """RecurrentGemma keeps its recurrent states as module attributes; after a forward with autograd
    they are non-leaf tensors, which copy.deepcopy refuses: relu_ize(inplace=False) must still copy."""
    torch.manual_seed(0)
    model = RecurrentGemmaForCausalLM(RecurrentGemmaConfig(
        vocab_size=50, hidden_size=32, lru_width=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        head_dim=16, intermediate_size=64, block_types=["recurrent", "attention"], hidden_activation="kgelu"))
    model(TEXT).logits.sum().backward()  # a training forward: the recurrent states now carry autograd history
    relu_model, report = relu_ize(model)
    assert len(report.sites) == len(find_sites(model)) == 3 and not find_sites(relu_model)


def test_a_lambda_gelu_built_at_every_call_is_reported_as_outside_the_bound():
    """Funnel's discriminator head runs `ACT2FN[self.config.hidden_act](x)` in forward: with "kgelu" a
    fresh λ-GELU per call, never trained nor annealed and not among the sites. The config rewrite
    turns it into ReLU all the same: the report must say so instead of claiming the bound."""
    model = FunnelForPreTraining(FunnelConfig(vocab_size=50, block_sizes=[1, 1], d_model=32, n_head=2, d_head=16,
                                              d_inner=64, hidden_act="kgelu"))
    _, report, caught = _relu_ize_recording_warnings(model)
    assert report.call_time_kgelu == [
        "ACT2FN[self.config.hidden_act] in FunnelDiscriminatorPredictions.forward (discriminator_predictions)"]
    assert any("afresh at every call" in message for message in caught)
    _, report, _ = _relu_ize_recording_warnings(BertForMaskedLM(BertConfig(**ENCODER, hidden_act="kgelu")))
    assert report.call_time_kgelu == []
    # PatchTST calls ACT2CLS[config.activation_function]() in __init__: that builds a module, a site
    patchtst = PatchTSTModel(PatchTSTConfig(context_length=16, patch_length=4, patch_stride=4, num_input_channels=2,
                                            d_model=32, num_attention_heads=2, num_hidden_layers=1, ffn_dim=64,
                                            activation_function="kgelu"))
    _, report, _ = _relu_ize_recording_warnings(patchtst)
    assert report.call_time_kgelu == [] and len(report.sites) == 1
