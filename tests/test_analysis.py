"""Downstream value of ReLU: activation sparsity (exact zeros, APoZ, near-zeros), `hf-kgelu analyze`, ONNX export."""

import json

import pytest
import torch
from tiny_models import tiny_inputs, tiny_model
from torch import nn
from trainer_helpers import text_blocks, tiny_gpt2

from hf_kgelu.analysis import (
    activation_modules,
    activation_sparsity,
    check_onnx,
    export_onnx,
)
from hf_kgelu.cli import main as cli_main
from hf_kgelu.relu import relu_ize

torch.set_num_threads(1)


def _outputs(model, batches):
    """Every activation output over the real positions, collected in full (the reference)."""
    seen = {}
    mask = {}

    def hook(name):
        def record(module, inputs, output):
            values = output[mask["m"].bool()] if mask["m"] is not None else output.reshape(-1, output.shape[-1])
            seen.setdefault(name, []).append(values.detach().reshape(-1, output.shape[-1]))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in activation_modules(model)]
    with torch.no_grad():
        for batch in batches:
            mask["m"] = batch.get("attention_mask")
            model.eval()(**batch)
    for h in handles:
        h.remove()
    return {name: torch.cat(values) for name, values in seen.items()}


def test_sparsity_counts_match_a_full_recount():
    gelu = tiny_gpt2(activation="gelu")
    relu, _ = relu_ize(gelu, include_gelu=True)
    ids = text_blocks()["validation"][:8]["input_ids"]
    mask = torch.ones_like(ids)
    mask[:, 20:] = 0  # padded tail: not counted
    batches = [{"input_ids": ids[:4], "attention_mask": mask[:4]}, {"input_ids": ids[4:], "attention_mask": mask[4:]}]
    for model in (relu, gelu):
        report = activation_sparsity(model, batches, near_zero=1e-2)
        reference = _outputs(model, batches)
        assert [layer.name for layer in report.layers] == list(reference)
        for layer in report.layers:
            values = reference[layer.name]
            assert values.shape[0] == 8 * 20 and layer.outputs == values.numel()  # padding left out
            assert layer.zero_fraction == pytest.approx((values == 0).double().mean().item(), abs=1e-12)
            apoz = (values == 0).double().mean(0)
            assert layer.apoz_mean == pytest.approx(apoz.mean().item()) and layer.apoz_max == pytest.approx(apoz.max().item())
            assert layer.dead_channels == int((apoz >= 0.99).sum())
            scale = values.abs().double().mean().item()
            assert layer.mean_abs == pytest.approx(scale, rel=1e-6)
            # near zeros: |f| < 0.01·scale, counted from a 0.01-decade histogram (threshold within 2.3 %)
            low = (values.abs() < 1e-2 * scale / 1.024).double().mean().item()
            high = (values.abs() < 1e-2 * scale * 1.024).double().mean().item()
            assert low - 1e-9 <= layer.near_zero_fraction <= high + 1e-9
    relu_report, gelu_report = activation_sparsity(relu, batches), activation_sparsity(gelu, batches)
    assert relu_report.zero_fraction > 0.3 and gelu_report.zero_fraction == 0.0  # ReLU zeros are exact, GELU's are not
    assert gelu_report.near_zero_fraction < relu_report.zero_fraction
    with pytest.raises(ValueError, match="no ReLU"):
        activation_sparsity(nn.Linear(3, 3), [{"pixel_values": torch.zeros(1, 3)}])


def test_analyze_command_prints_a_table_and_writes_json(tmp_path, capsys):
    gelu = tiny_gpt2(activation="gelu")
    relu, _ = relu_ize(gelu, include_gelu=True)
    gelu.save_pretrained(tmp_path / "gelu")
    relu.save_pretrained(tmp_path / "relu")
    text_blocks().save_to_disk(str(tmp_path / "data"))
    out = tmp_path / "sparsity.json"
    code = cli_main(["analyze", str(tmp_path / "relu"), "--compare", str(tmp_path / "gelu"), "--data", str(tmp_path / "data"),
                     "--split", "validation", "--batch-size", "4", "--max-batches", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "| h.0 |" in printed and "| h.1 |" in printed and "APoZ" in printed and "exact zeros" in printed
    reports = json.loads(out.read_text())
    assert [len(r["layers"]) for r in reports] == [2, 2]
    assert reports[0]["layers"][0]["activation"] == "ReLU" and reports[0]["zero_fraction"] > 0.3
    assert reports[1]["zero_fraction"] == 0.0 and reports[1]["layers"][0]["outputs"] == 4 * 2 * 32 * 128
    assert cli_main(["analyze", str(tmp_path / "relu"), "--data", str(tmp_path / "missing")]) == 2
    try:
        import onnx  # noqa: F401, E401
        import onnxruntime
    except ImportError:
        return
    code = cli_main(["analyze", str(tmp_path / "relu"), "--data", str(tmp_path / "data"), "--split", "validation",
                     "--batch-size", "4", "--max-batches", "1", "--onnx", str(tmp_path / "relu.onnx")])
    printed = capsys.readouterr().out
    assert code == 0 and "Relu ×2" in printed and "Erf" not in printed and (tmp_path / "relu.onnx").is_file()


@pytest.mark.parametrize("arch", ["gpt2", "deit", "bert"])
def test_relu_ized_model_exports_to_onnx_with_plain_relu(tmp_path, arch):
    for package in ("onnx", "onnxruntime"):  # skipped here only: the tests above need neither
        pytest.importorskip(package, reason="ONNX export needs `pip install onnx onnxruntime` (the [onnx] extra)")
    model = tiny_model(arch)  # λ-GELU sites
    for _, site in model.named_modules():
        if hasattr(site, "set_lambda"):
            site.set_lambda(160.0)
    relu, report = relu_ize(model)
    ops = export_onnx(relu, tmp_path / "model.onnx", tiny_inputs(arch))
    assert ops.count("Relu") == len(report.sites)  # one Relu per MLP site, nothing else nonlinear in the MLPs
    assert not {"Erf", "Gelu", "Tanh", "Sigmoid"} & set(ops)
    # a batch size and inputs the export never saw: onnxruntime agrees with PyTorch
    assert check_onnx(relu, tmp_path / "model.onnx", tiny_inputs(arch, batch=5, seed=7)) < 1e-5
    # the GELU original exports its activation as Erf: the check above can tell them apart
    gelu = tiny_model(arch, activation="gelu")
    assert "Erf" in export_onnx(gelu, tmp_path / "gelu.onnx", tiny_inputs(arch))
