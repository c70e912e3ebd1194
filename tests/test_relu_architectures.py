"""relu_ize on the architecture shapes the matrix (tests/test_architectures.py) exposed: weight-norm
parametrized modules, activation keys without "act" in their name, GELUs no config key reaches."""

import torch
from torch.nn.utils.parametrize import is_parametrized
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from hf_kgelu import find_sites, relu_ize


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
