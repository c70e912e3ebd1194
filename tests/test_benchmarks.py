"""The benchmarks' harness (statistics, interleaving, the one CSV schema, the machine kind), the
report that renders docs/results.md from the CSVs, and the scripts' CPU-runnable parts."""

import csv
import sys
import types
from pathlib import Path

import pytest

from benchmarks import harness, kernel, models, report, train_step
from benchmarks.report import paper

ROOT = Path(__file__).resolve().parents[1]


def row(**values):
    base = dict(what="kernel", variant="gelu", dtype="bf16", shape="8192x3072", device="NVIDIA H200", metric="fwd_device_us",
                p50="1.5", p20="1.4", p80="1.6", commit="abc1234", date="2026-12-01 10:00", command="python -m benchmarks.kernel")
    return base | values


# ---- statistics and interleaving -----------------------------------------------------------------


def test_percentiles_interpolate_between_sorted_samples():
    samples = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert harness.percentile(samples, 0.5) == 3.0
    assert harness.percentile(samples, 0.2) == pytest.approx(1.8)
    assert harness.percentile(samples, 0.8) == pytest.approx(4.2)
    assert harness.Stats.of(samples) == harness.Stats(3.0, pytest.approx(1.8), pytest.approx(4.2))
    assert harness.Stats.of([7.0]) == harness.Stats(7.0)  # one sample: no spread
    assert harness.Stats.of([1.0, 2.0, 3.0]).scaled(1e3) == harness.Stats(2000.0, pytest.approx(1400.0), pytest.approx(2600.0))
    assert harness.ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    with pytest.raises(ValueError):
        harness.percentile([], 0.5)


def test_seed_aggregates_are_mean_and_one_standard_deviation():
    stats = harness.Stats.over_seeds([1.0, 2.0, 3.0, None, float("nan")])
    assert stats == harness.Stats(2.0, pytest.approx(1.0), pytest.approx(3.0))
    assert harness.Stats.over_seeds([4.0]) == harness.Stats(4.0)
    assert harness.Stats.over_seeds([None]) is None


def test_interleave_rotates_the_order_each_round():
    calls = []
    cases = {name: (lambda name=name: calls.append(name) or len(calls)) for name in "abc"}
    samples = harness.interleave(cases, rounds=3, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_wall_time_is_per_call():
    assert harness.wall_ms(lambda: sum(range(1000)), calls=5) > 0


# ---- the one CSV schema --------------------------------------------------------------------------


def test_rows_append_to_one_file_with_one_header(tmp_path):
    path = tmp_path / "nvidia-h200.csv"
    assert harness.append_rows(path, [row()]) == 1
    assert harness.append_rows(path, [row(variant="kgelu-site", p20=None, p80="")]) == 1
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(harness.SCHEMA) and len(lines) == 3
    assert [r["variant"] for r in harness.read_rows(path)] == ["gelu", "kgelu-site"]


def test_a_row_with_other_columns_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "nvidia-h200.csv"
    wrong = row(unit="us")
    del wrong["command"]
    with pytest.raises(harness.SchemaError, match=r"missing columns \['command'\], unexpected columns \['unit'\]"):
        harness.append_rows(path, [row(), wrong])
    assert not path.exists()
    with pytest.raises(harness.SchemaError, match="p50 = 'fast' is not a number"):
        harness.append_rows(path, [row(p50="fast")])
    with pytest.raises(harness.SchemaError, match="not a number"):
        harness.check_row(row(p80="high"))


def test_a_file_of_another_schema_is_refused(tmp_path):
    path = tmp_path / "old.csv"
    path.write_text("model,variant,step_ms\ngpt2,gelu,47.5\n")
    with pytest.raises(harness.SchemaError, match="is not the results schema"):
        harness.append_rows(path, [row()])
    with pytest.raises(harness.SchemaError):
        harness.read_rows(path)


def test_recorder_stamps_command_commit_date_and_appends_to_the_kind_file(tmp_path, monkeypatch):
    for name in [k for k in __import__("os").environ if k.startswith("HF_KGELU_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HF_KGELU_KERNEL_CONFIG", '{"fwd_block": 1024}')
    monkeypatch.setenv(harness.COMMIT_ENV, "deadbee")
    recorder = harness.Recorder("benchmarks.kernel", ["--rows", "8192"], kind="nvidia-h200", results=tmp_path, device="NVIDIA H200")
    recorder.add("kernel", "gelu", "fwd_device_us", harness.Stats(1.0, 0.9, 1.1), dtype="bf16", shape="8192x3072")
    recorder.add("kernel", "gelu", "peak_bytes_per_element", 4.0, dtype="bf16", shape="8192x3072")
    recorder.add("kernel", "gelu", "kernel_ms", None)  # nothing measured: no row
    assert recorder.save() == tmp_path / "nvidia-h200.csv"
    rows = harness.read_rows(tmp_path / "nvidia-h200.csv")
    assert len(rows) == 2 and rows[1]["p20"] == "" and rows[0]["commit"] == "deadbee"
    assert rows[0]["command"] == "HF_KGELU_KERNEL_CONFIG='{\"fwd_block\": 1024}' python -m benchmarks.kernel --rows 8192"
    # saving as it goes: a later save appends only the rows added since (a time-boxed run keeps what finished)
    recorder.save()
    recorder.add("kernel", "relu", "fwd_device_us", 0.8, dtype="bf16", shape="8192x3072")
    recorder.save()
    assert [r["variant"] for r in harness.read_rows(tmp_path / "nvidia-h200.csv")] == ["gelu", "gelu", "relu"]
    monkeypatch.delenv("HF_KGELU_KERNEL_CONFIG")
    assert harness.Recorder("scripts/reproduce.py", [], kind="x", results=tmp_path).command == "python scripts/reproduce.py"


def test_merge_appends_only_new_rows(tmp_path):
    home, away = tmp_path / "home", tmp_path / "away"
    harness.append_rows(home / "nvidia-h200.csv", [row()])
    harness.append_rows(away / "nvidia-h200.csv", [row(), row(variant="relu")])
    assert harness.merge([away / "nvidia-h200.csv"], home) == 1
    assert harness.merge([away / "nvidia-h200.csv"], home) == 0
    assert [r["variant"] for r in harness.read_rows(home / "nvidia-h200.csv")] == ["gelu", "relu"]


# ---- the machine kind ----------------------------------------------------------------------------


def test_machine_kind_from_the_gpus_or_the_cpu():
    assert harness.kind_for(("NVIDIA H200", 1), "Intel(R) Xeon(R) Processor") == "nvidia-h200"
    assert harness.kind_for(("NVIDIA H200", 2), "") == "nvidia-h200-x2"
    assert harness.kind_for(("NVIDIA H100 80GB HBM3", 8), "") == "nvidia-h100-80gb-hbm3-x8"
    assert harness.kind_for(None, "Intel(R) Xeon(R) Processor") == "cpu-intel-xeon"
    assert harness.kind_for(None, "AMD EPYC 7B13 64-Core Processor") == "cpu-amd-epyc-7b13"
    assert harness.kind_for(None, "Intel(R) Xeon(R) CPU @ 2.20GHz") == "cpu-intel-xeon"


def test_machine_kind_override_and_detection(monkeypatch):
    monkeypatch.setattr(harness, "_gpus", lambda: ("NVIDIA H200", 2))
    assert harness.machine_kind() == "nvidia-h200-x2"
    monkeypatch.setenv(harness.KIND_ENV, "cpu-amd-epyc")
    assert harness.machine_kind() == "cpu-amd-epyc"
    assert harness.machine_kind("nvidia-h200") == "nvidia-h200"  # the flag wins over the environment
    with pytest.raises(ValueError, match="names a CSV file"):
        harness.machine_kind("../elsewhere")
    monkeypatch.delenv(harness.KIND_ENV)
    monkeypatch.setattr(harness, "_gpus", lambda: None)
    monkeypatch.setattr(harness, "cpu_model", lambda: "AMD EPYC")
    assert harness.machine_kind() == "cpu-amd-epyc"


def test_every_benchmark_takes_the_results_options():
    args = train_step.parse_args(["--machine-kind", "nvidia-h200", "--results", "/tmp/x", "--no-save"])
    assert (args.machine_kind, args.results, args.no_save) == ("nvidia-h200", "/tmp/x", True)
    assert kernel.parse_args([]).parts == "table,host"
    from benchmarks import cpu, multi_gpu

    assert cpu.parse_args(["--parts", "flags"]).parts == "flags"
    assert multi_gpu.parse_args(["--compare", "x"]).compare == Path("x")
    for parse, argv in ((train_step.parse_args, ["--variants", "gelu,fast"]), (train_step.parse_args, ["--models", "t5"]),
                        (kernel.parse_args, ["--parts", "tabel"]), (cpu.parse_args, ["--parts", "gpu"])):
        with pytest.raises(SystemExit):
            parse(argv)


# ---- the scripts' CPU parts ----------------------------------------------------------------------


def test_models_table_builds_every_model_with_either_activation():
    from hf_kgelu.modeling import find_sites

    for name in models.MODELS:
        for activation, sites in (("gelu", 0), ("kgelu", 2)):
            net = models.build(name, activation, tiny=True)
            assert (len(find_sites(net)) >= sites) and (sites or not find_sites(net)), (name, activation)
        batch = models.make_batch(name, net.config, 2, models.seq_len(name, tiny=True), "cpu")
        assert net(**batch).loss.ndim == 0
    assert models.shape("gpt2", 8, 1024) == "gpt2-small 8x1024"
    assert models.shape("bert", 32, 128) == "bert-base 32x128"
    assert models.shape("deit", 64, 0) == "deit-small 64x224x224"


def test_train_step_smoke_on_cpu_writes_rows(tmp_path, monkeypatch):
    monkeypatch.setenv(harness.KIND_ENV, "cpu-test")
    argv = ["--models", "bert", "--variants", "gelu,kgelu,naive", "--tiny", "--device", "cpu", "--steps", "2", "--warmup", "0",
            "--results", str(tmp_path)]
    assert train_step.main(argv) == 0
    rows = harness.read_rows(tmp_path / "cpu-test.csv")
    assert {r["variant"] for r in rows} == {"gelu", "kgelu", "naive"}
    assert {r["metric"] for r in rows} == {"step_ms", "ratio_vs_gelu"}
    assert all(r["what"] == "train_step" and r["shape"] == "bert-base (tiny) 32x64" for r in rows)
    assert rows[0]["command"].startswith("python -m benchmarks.train_step --models bert")


@pytest.mark.slow
def test_multi_gpu_smoke_on_cpu_one_process(tmp_path, monkeypatch):
    """One process, tiny models: every variant timed step by step, the exactness run with its resume, the rows."""
    from benchmarks import multi_gpu

    monkeypatch.setenv(harness.KIND_ENV, "cpu-test")
    argv = ["--tiny", "--models", "gpt2", "--activations", "kgelu,gelu,kgelu-engine", "--steps", "5", "--warmup", "2",
            "--log-every", "2", "--warm-runs", "0", "--tag", "ddp1", "--out", str(tmp_path / "ddp1.json"),
            "--scratch", str(tmp_path), "--jsonl", str(tmp_path / "launches.jsonl")]
    assert multi_gpu.main(argv) == 0
    launch = multi_gpu.read_launches(tmp_path)["ddp1"]
    assert [r["activation"] for r in launch["throughput"]] == ["kgelu", "gelu", "kgelu-engine"]
    assert all(len(r["step_s"]) == 3 for r in launch["throughput"])  # steps 3, 4, 5
    assert multi_gpu.main(["--tiny", "--compare", str(tmp_path), "--results", str(tmp_path / "rows")]) == 0
    rows = {(r["what"], r["variant"], r["metric"]): r for r in harness.read_rows(tmp_path / "rows" / "cpu-test.csv")}
    assert float(rows["multi_gpu_throughput", "ddp1/kgelu", "step_ms"]["p50"]) > 0
    for metric in ("lambda_star_exact", "resume_lambda_identical"):
        assert rows["multi_gpu_exactness", "ddp1", metric]["p50"] == "1"
    assert rows["multi_gpu_exactness", "ddp1", "resume_max_abs_weight_diff"]["p50"] == "0"


def test_choose_picks_changes_that_beat_the_defaults_where_they_act():
    sweep = {
        ("bf16", "site", "defaults"): {"fwd_device_us": 10.0, "fwd_bwd_device_us": 20.0},
        ("bf16", "site", "bwd_block=2048 bwd_warps=4"): {"fwd_device_us": 10.0, "fwd_bwd_device_us": 18.0},
        ("bf16", "site", "bwd_block=4096 bwd_warps=4"): {"fwd_device_us": 10.0, "fwd_bwd_device_us": 19.0},
        ("bf16", "site", "fwd_block=1024 fwd_warps=4"): {"fwd_device_us": 9.99, "fwd_bwd_device_us": 15.0},  # within margin
        ("bf16", "channel", "defaults"): {"fwd_device_us": 10.0, "fwd_bwd_device_us": 20.0},
        ("bf16", "channel", "bwd_block=2048 bwd_warps=4"): {"fwd_device_us": 1.0, "fwd_bwd_device_us": 1.0},  # does not act there
    }
    assert kernel.choose(sweep, margin=0.01) == {"bwd_block": 2048, "bwd_warps": 4}
    rows = [row(what="kernel_sweep", variant=f"{layout}: {change}", metric=m, p50=str(v), date="d1")
            for (dtype, layout, change), times in sweep.items() for m, v in times.items()]
    rows += [row(what="kernel_sweep", variant="site: defaults", metric="fwd_device_us", p50="99", date="d0")]
    assert kernel.last_sweep(rows[-1:] + rows[:-1]) == sweep


def _launch_result(tag: str, world: int, step_ms: dict, sync_checks: int, exact: bool) -> dict:
    """A launch's JSON as benchmarks.multi_gpu writes it (GPT-2 small only)."""
    throughput = [{"model": "gpt2", "activation": variant, "world_size": world, "per_device_batch": 8, "step_ms": ms,
                   "step_s": [ms / 1000, ms / 1000 * 1.02, ms / 1000 * 0.98], "unit": "tokens", "peak_mem_gib": 10.0,
                   **({"sync": {"checked_steps": list(range(sync_checks)), "switch_step": 15, "last_diff": 0.0}} if variant != "gelu" else {})}
                  for variant, ms in step_ms.items()]
    lam = {str(s): [[1.0 + s]] for s in range(1, 25)}
    exactness = {"first": {"lam": lam, "checked_steps": list(range(1, 25)), "switch_step": 6, "lambda_star_exact": True},
                 "resumed": {"lam": {k: v for k, v in lam.items() if int(k) > 12}}, "saves_per_rank": [2] + [0] * (world - 1)}
    return {"tag": tag, "precision": "bf16", "world_size": world, "throughput": throughput, "exactness": exactness if exact else None}


def test_multi_gpu_launches_become_the_engine_table(tmp_path, monkeypatch):
    """Launch results (one JSON line each) → rows → the table: engine × GPUs per model, the ratio to GELU,
    scaling against the same engine on 1 GPU (else DDP's), θ sync, resume; and the split of λ-GELU's step."""
    from benchmarks import multi_gpu

    launches = [
        _launch_result("ddp1", 1, {"kgelu": 60.0, "gelu": 59.0}, 0, True),
        _launch_result("ddp2", 2, {"kgelu": 62.0, "gelu": 61.0, "kgelu-engine": 66.0, "kgelu-learn": 61.5}, 3, True),
        _launch_result("zero3-2", 2, {"kgelu": 80.0, "gelu": 79.0}, 3, True),
        _launch_result("zero3-1", 1, {"kgelu": 70.0, "gelu": 69.0}, 0, False),
    ]
    (tmp_path / "launches.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in launches))
    monkeypatch.setenv(harness.KIND_ENV, "nvidia-h200-x2")
    args = multi_gpu.parse_args(["--compare", str(tmp_path), "--results", str(tmp_path / "results")])
    recorder = harness.Recorder.from_args(args, "benchmarks.multi_gpu", ["--compare", "OUT"])
    multi_gpu.compare(tmp_path, tmp_path, args, recorder)
    recorder.save()
    text = report.render(tmp_path / "results")
    assert "| gpt2-small 8x1024 | DDP | 2 | 264 258 | 268 590 | 1.02 | 0.97 / 0.97 | 3 checks, max Δθ 0.0 | λ identical, λ* exact |" in text
    # scaling of ZeRO-3 against ZeRO-3 on 1 GPU (70 ms → 80 ms: 0.88), not against DDP's
    assert "| gpt2-small 8x1024 | DeepSpeed ZeRO-3 | 2 | 204 800 | 207 392 | 1.01 | 0.88 / 0.87 |" in text
    assert "| gpt2-small 8x1024 | DeepSpeed ZeRO-3 | 1 | 117 029 | 118 725 | 1.01 | — | — | – |" in text
    assert "| gpt2-small 8x1024 | DDP × 2 | 1.02 | 1.08 | 1.01 |" in text  # θ outside / in the engine / no annealing


# ---- the report ----------------------------------------------------------------------------------


def write(folder, kind, rows):
    harness.append_rows(folder / f"{kind}.csv", rows)


def test_report_shows_the_latest_row_and_numbers_its_sources(tmp_path):
    old = dict(date="2026-11-01", command="old command")
    write(tmp_path, "nvidia-h200", [
        row(what="train_step", variant="gelu", shape="gpt2-small 8x1024", metric="step_ms", p50="50", **old),
        row(what="train_step", variant="kgelu", shape="gpt2-small 8x1024", metric="ratio_vs_gelu", p50="1.5", **old),
        row(what="train_step", variant="kgelu", shape="gpt2-small 8x1024", metric="ratio_vs_gelu", p50="1.01", p20="0.99", p80="1.03"),
    ])
    text = report.render(tmp_path)
    assert "1.010 (0.990–1.030)" in text and "1.500" not in text  # the later row replaces the earlier one
    assert "| gpt2-small 8x1024¹ | eager | GELU |" in text and "¹ `old command` on `nvidia-h200`" in text
    assert "² `python -m benchmarks.kernel` on `nvidia-h200` (NVIDIA H200), 2026-12-01 10:00 UTC, commit abc1234" in text
    assert "_No rows yet._" in text  # the topics without rows still have their section
    assert "## Architectures" not in text and "## Bad inputs" not in text


def test_report_renders_the_other_tools_data_files_when_they_exist(tmp_path):
    with open(tmp_path / "architectures.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(report.DATA_FILES["architectures.csv"])
        writer.writerow(["bert", "BertModel", "text", "6", "ok", "", "5.24.0", "2026-12-01"])
    (tmp_path / "bad_inputs.csv").write_text("area,input,message\ncli,--budget -1,budget must be positive | or a share\n")
    text = report.render(tmp_path)
    assert "## Architectures" in text and "| bert | BertModel | text | 6 | ok |  | 5.24.0 | 2026-12-01 |" in text
    assert "## Bad inputs" in text and "budget must be positive \\| or a share" in text
    (tmp_path / "bad_inputs.csv").write_text("area,message\ncli,x\n")
    with pytest.raises(harness.SchemaError, match=r"\['input'\] missing"):
        report.render(tmp_path)


def test_paper_rows_render_as_the_paper_tables():
    shape = "MLP 3×16 / Adult — MLP(hidden_size=16)"
    cmd = dict(command="python scripts/reproduce.py --preset smoke", kind="cpu-x", device="test machine", commit="", date="d")
    rows = [row(what="paper_table1", variant=f"mlp-adult/{v}", shape=shape, metric=m, p50=p50, p20=p20, p80=p80, **cmd)
            for v in ("gelu", "kgelu-annealed") for m, p50, p20, p80 in
            (("seeds", "3", "", ""), ("best_val_accuracy", "0.849", "0.8483", "0.8497"), ("best_epoch", "4", "3", "5"))]
    rows += [row(what="paper_table2", variant="mlp-adult/kgelu-annealed", shape=shape, metric="original_accuracy", p50="0.8", p20="",
                 p80="", **cmd)]
    rows += [row(what="paper_grid", variant=f"mlp-adult/tau={t} eta={e}", shape=shape, metric=m, p50=p50, p20="0", p80=p80, **cmd)
             for t, e, m, p50, p80 in (("0.1", "10", "delta_bvs", "-0.001", "0.001"), ("1", "1", "delta_bvs", "0.0", "0.001"),
                                        ("0.1", "10", "drift", "0.05", "0.06"), ("1", "1", "drift", "0.0003", "0.0004"))]
    text = paper.paper_tables(rows)
    assert "| GELU | 3 | 0.8490 ± 0.0007 | 4.0 ± 1.0 | – | – |" in text
    assert "| λ-GELU annealed → ReLU | 0.8000 |" in text
    assert "#### τ × η grid (§IV-A) on mlp-adult" in text and "best mean ΔBVS is at τ = 1, η = 1 (+0.0000)" in text
    assert "within one seed standard deviation" in text
    assert text.startswith("Source: `python scripts/reproduce.py --preset smoke` on `cpu-x` (test machine)")


def test_reproduce_writes_its_tables_as_rows():
    """scripts/reproduce.py's output part: PipelineResults of fake runs -> rows of the schema
    (tests/test_reproduce.py runs the script end to end)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import reproduce
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    settings, grid = reproduce.presets("smoke")
    results = {}
    for variant in reproduce.VARIANTS:
        for seed in (0, 1):
            results[reproduce.Run("mlp-adult", variant, seed)] = types.SimpleNamespace(
                best_score=0.8 + seed / 100, best_epoch=1.0, mean_lambda=None if variant in ("gelu", "relu") else 1.5,
                drift=0.1, lambda_learned={"layers.0": 1.0 + seed, "layers.1": 2.0},
                substitution={"before": 0.8, "after": 0.79, "loss_before": 0.3, "loss_after": 0.31})
    rows = reproduce.paper_rows(settings, grid, results, [0, 1])
    by = {(what, variant, metric): stats for what, variant, metric, stats, _ in rows}
    assert by[("paper_table1", "mlp-adult/gelu", "best_val_accuracy")].p50 == pytest.approx(0.805)
    assert by[("paper_table1", "mlp-adult/gelu", "seeds")] == harness.Stats(2.0)
    assert ("paper_table1", "mlp-adult/gelu", "mean_lambda") not in by
    assert by[("paper_table2", "mlp-adult/kgelu-annealed", "change")].p50 == pytest.approx(-0.01)
    assert ("paper_fig3", "mlp-adult/uniform", "lambda layers.0") in by
    assert by[("paper_grid", "mlp-adult/tau=0.1 eta=10", "delta_bvs")].p50 == 0.0


# ---- docs/results.md is generated ----------------------------------------------------------------


def test_committed_csvs_render_the_committed_results_md():
    """docs/results.md is what `python -m benchmarks.report` makes of benchmarks/results/*.csv: edit
    the CSVs (or rerun a benchmark), then regenerate, never the other way round."""
    assert report.render(harness.RESULTS) == (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
