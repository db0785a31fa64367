"""characterize: presets, the output folder, results/report/plots, Ctrl-C, the CLI.

A tiny custom preset (a one-block ViT and two small layers) keeps each run to seconds.
No test asserts a speed.
"""

import csv
import dataclasses
import json

import pytest
import torch
import typer
from typer.testing import CliRunner

from spruce.bench import RECORD_FIELDS, validate
from spruce.bench import characterize as char_module
from spruce.bench.characterize import (
    PRESETS,
    Interrupted,
    ModelCase,
    Preset,
    characterize,
    get_preset,
)
from spruce.bench.presets import LAYER_PRESETS, ConvShape, LinearShape
from spruce.bench.sweep import TimingConfig
from spruce.cli.bench import bench_layer, bench_model
from spruce.cli.bench import characterize as characterize_cmd

PNG = b"\x89PNG\r\n\x1a\n"
FAST = TimingConfig(warmup=1, min_runs=3, min_time_s=0.005, threads=1)
TINY_VIT = ModelCase("vit", "cifar10", batch=2, label="vit-tiny",
                     zoo_kwargs={"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64})
TINY = Preset(
    "tiny", "test preset: a one-block ViT and two small layers", device="cpu",
    dtypes=("fp32",), models=(TINY_VIT,),
    layers=(LinearShape("tiny-linear", 48, 32, tokens=16),
            ConvShape("tiny-conv", 8, 16, kernel=3, stride=1, padding=1, hw=8, batch=2)),
    patterns=("2:4", "group", "channel"), densities=(0.5, 0.25),
    model_timing=FAST, layer_timing=FAST)
LAYERS_ONLY = dataclasses.replace(TINY, models=(), patterns=("group",), densities=(0.5,))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    return characterize(TINY, out, progress=False)


# ---------------------------------------------------------------------------- presets

def test_presets_are_records_with_named_fields():
    assert set(PRESETS) >= {"quick", "paper", "gpu"}
    quick, paper, gpu = PRESETS["quick"], PRESETS["paper"], PRESETS["gpu"]
    assert quick.device == "cpu" and quick.dtypes == ("fp32",)
    assert {c.model for c in quick.models} >= {"resnet18", "vit"}  # vgg16: the paper preset
    assert all(c.dataset == "cifar10" for c in quick.models)
    assert {s.name for s in paper.layers} == set(LAYER_PRESETS)
    assert paper.layers == tuple(LAYER_PRESETS.values())   # full size
    assert {c.model for c in paper.models} >= {"vgg16", "resnet18", "vit", "bert_base"}
    assert gpu.device == "cuda" and set(gpu.dtypes) == {"fp32", "fp16"}
    assert {c.batch for c in gpu.models} == {64}
    assert set(paper.patterns) == {"element", "2:4", "block", "group", "channel"}
    assert paper.densities == (0.75, 0.5, 0.25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        quick.device = "cuda"
    assert get_preset(TINY) is TINY


def test_unknown_preset_model_pattern_list_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'fast'; valid: quick, paper, gpu"):
        characterize("fast", tmp_path / "a")
    with pytest.raises(ValueError, match="unknown model.*'alexnet'.*resnet18"):
        characterize(TINY, tmp_path / "b", models=["alexnet"])
    bad = dataclasses.replace(TINY, patterns=("diagonal",))
    with pytest.raises(ValueError, match="unknown pattern 'diagonal'; valid: block"):
        characterize(bad, tmp_path / "c")
    assert not any(tmp_path.iterdir())   # nothing created before the input is checked


def test_pattern_and_layer_overrides_narrow_the_study(tmp_path):
    with pytest.raises(ValueError, match="unknown pattern 'diagonal'"):
        characterize(TINY, tmp_path / "bad", patterns=["diagonal"], layers=False)
    assert not any(tmp_path.iterdir())
    res = characterize(TINY, tmp_path / "g", patterns=["group"], layers=False, progress=False)
    assert {r.kind for r in res.records} == {"model"}
    assert {r.pattern for r in res.records} == {None, "group"}
    assert {r.density for r in res.records if r.pattern == "group"} == set(TINY.densities)
    assert (res.output_dir / "report.md").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_preset_without_cuda_suggests_cpu(tmp_path):
    with pytest.raises(ValueError, match="no CUDA.*--device cpu"):
        characterize("gpu", tmp_path / "g")


# ---------------------------------------------------------------------------- the study

def test_results_json_validates_and_csv_matches(study):
    data = json.loads((study.output_dir / "results.json").read_text())
    validate(data)
    assert data["environment"]["threads"] == 1
    assert len(data["records"]) == len(study.records) > 0
    with open(study.output_dir / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == RECORD_FIELDS and len(rows) == len(study.records) + 1
    kinds = {(r["kind"], r["name"]) for r in data["records"]}
    assert {("model", "vit-tiny"), ("layer", "tiny-conv"), ("step", "tiny-conv")} <= kinds


def test_model_rows_have_param_ratio_and_ratio_to_dense(study):
    rows = [r for r in study.records if r.kind == "model" and r.error is None]
    dense = [r for r in rows if r.backend == "dense"]
    assert len(dense) == 1 and dense[0].param_ratio == 1.0
    group = [r for r in rows if r.backend == "groupwise"]
    assert {r.density for r in group} == {0.5, 0.25}
    for r in group:
        assert 0 < r.param_ratio < 1 and r.ratio_to_dense is not None
        assert r.extra["layers_on_backend"] >= 1


def test_plots_are_real_pngs(study):
    names = {p.name for p in study.plots}
    assert {"model_vit-tiny_fp32.png", "layer_tiny-conv_fp32.png",
            "steps_tiny-conv_fp32.png", "layer_tiny-linear_fp32.png"} <= names
    for path in study.plots:
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 1024, path


def test_report_has_environment_headline_findings_and_paper_tables(study):
    text = study.report.read_text()
    assert text.startswith("# spruce characterization — preset tiny")
    assert "| device | device name | dtype | threads | torch | spruce |" in text
    for section in ("## Headline", "## Findings", "## Models", "## Layers"):
        assert section in text
    assert "| model | parameter % | pattern | backend | latency ms | ratio to dense |" in text
    assert "is the fastest sparse pattern" in text   # a finding computed from the rows
    for plot in study.plots:
        assert f"(plots/{plot.name})" in text
    assert "Interrupted" not in text
    assert study.headline and all("cells" in h for h in study.headline)


# ---------------------------------------------------------------------------- the folder

def test_existing_folder_refused_without_overwrite_and_others_survive(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty; pass --overwrite"):
        characterize(LAYERS_ONLY, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    characterize(LAYERS_ONLY, out, overwrite=True, progress=False)
    first = json.loads((out / "results.json").read_text())["records"]
    characterize(LAYERS_ONLY, out, overwrite=True, progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    again = json.loads((out / "results.json").read_text())["records"]
    assert len(again) == len(first)   # replaced, not appended to


def test_ctrl_c_mid_sweep_keeps_the_rows_so_far(tmp_path):
    seen = []

    def stop_after_five(record):
        seen.append(record)
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        characterize(TINY, tmp_path / "cut", progress=False, on_record=stop_after_five)
    assert isinstance(info.value, KeyboardInterrupt)
    result = info.value.result
    data = json.loads((tmp_path / "cut" / "results.json").read_text())
    validate(data)
    assert len(data["records"]) == len(result.records) == 5
    assert result.interrupted and "**Interrupted**" in result.report.read_text()


# ---------------------------------------------------------------------------- CLI

def _app() -> typer.Typer:
    app, bench = typer.Typer(), typer.Typer()
    bench.command("layer")(bench_layer)
    bench.command("model")(bench_model)
    app.add_typer(bench, name="bench")
    app.command("characterize")(characterize_cmd)
    return app


runner = CliRunner(env={"COLUMNS": "200"})


def test_cli_characterize_prints_headline_and_report(tmp_path, monkeypatch):
    monkeypatch.setitem(char_module.PRESETS, "tiny", LAYERS_ONLY)
    res = runner.invoke(_app(), ["characterize", "-p", "tiny", "-o", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "headline" in res.output and "tiny-conv" in res.output
    assert "report.md" in res.output.replace("\n", "")
    res = runner.invoke(_app(), ["characterize", "-p", "tiny", "-o", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--overwrite" in res.output
    monkeypatch.setitem(char_module.PRESETS, "tiny-models", TINY)
    res = runner.invoke(_app(), ["characterize", "-p", "tiny-models", "-o", str(tmp_path / "d"),
                                 "--pattern", "channel", "--no-layers"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "d" / "results.json").read_text())
    assert {(r["kind"], r["pattern"]) for r in data["records"]} == {
        ("model", None), ("model", "channel")}
    res = runner.invoke(_app(), ["characterize", "-p", "gpu", "-o", str(tmp_path / "g")])
    if not torch.cuda.is_available():
        assert res.exit_code == 2 and "--device cpu" in res.output


def test_cli_ctrl_c_writes_report_and_exits_130(tmp_path, monkeypatch):
    monkeypatch.setitem(char_module.PRESETS, "tiny", TINY)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(char_module, "_run_models", interrupted)   # after the layers
    res = runner.invoke(_app(), ["characterize", "-p", "tiny", "-o", str(tmp_path / "c")])
    assert res.exit_code == 130, res.output
    assert "interrupted" in res.output
    data = json.loads((tmp_path / "c" / "results.json").read_text())
    assert data["records"] and all(r["kind"] != "model" for r in data["records"])
    assert (tmp_path / "c" / "report.md").exists()


def test_cli_bench_layer_and_model(tmp_path):
    res = runner.invoke(_app(), ["bench", "layer", "linear:48:32:16", "conv:8:16:3:8:2",
                                 "-p", "group", "-d", "0.5", "-b", "groupwise",
                                 "--min-time", "0.005", "--threads", "1",
                                 "-o", str(tmp_path / "l")])
    assert res.exit_code == 0, res.output
    assert "ideal" in res.output and "step gemm" in res.output
    validate(json.loads((tmp_path / "l" / "results.json").read_text()))
    assert (tmp_path / "l" / "report.md").exists()
    res = runner.invoke(_app(), ["bench", "layer", "linear:48:32"])
    assert res.exit_code == 2 and "linear:IN:OUT:TOKENS" in res.output
    res = runner.invoke(_app(), ["bench", "model", "alexnet"])
    assert res.exit_code == 2 and "resnet18" in res.output


def test_bench_model_runs_bert_on_dict_inputs_with_the_accuracy_hook():
    from spruce.bench.model import ModelOptions, bench_model

    tiny_bert = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2,
                 "intermediate_size": 128}
    seen = []
    rows = bench_model("bert_base", ["group"], [0.5], backends=["groupwise"], batch=2,
                       options=ModelOptions(timing=FAST, zoo_kwargs=tiny_bert),
                       evaluate=lambda module: seen.append(module) or 0.75)
    # every dense path the CPU has, then the pruned model; ratios against the fastest dense
    assert [r.backend for r in rows] == ["dense", "dense·compiled", "groupwise"]
    assert all(r.error is None and r.input_shape == [2, 128] for r in rows)
    best = min(rows[:2], key=lambda r: r.median_ms)
    assert rows[2].extra["baseline"] == best.backend == rows[0].extra["baseline"]
    assert rows[2].ratio_to_dense == pytest.approx(rows[2].median_ms / best.median_ms)
    assert rows[2].extra["ratio_to_eager"] == pytest.approx(rows[2].median_ms
                                                            / rows[0].median_ms)
    assert min(r.ratio_to_dense for r in rows[:2]) == pytest.approx(1.0)
    assert rows[1].extra["compile_s"] > 0
    assert rows[2].param_ratio == pytest.approx(0.5, abs=0.01)
    assert [r.extra["accuracy"] for r in rows] == [0.75] * 3 and len(seen) == 2
