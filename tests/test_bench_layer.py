"""Layer shape presets, the shape parser, and bench_layer's rows (no test asserts a speed)."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from spruce.backends import base as backends_base
from spruce.bench import ResultsWriter, validate
from spruce.bench.layer import LayerOptions, bench_layer
from spruce.bench.presets import (
    LAYER_PRESETS,
    ConvShape,
    LinearShape,
    get_shape,
    parse_shape,
    scaled,
)
from spruce.bench.sweep import TimingConfig, pattern_cases

FAST = LayerOptions(timing=TimingConfig(warmup=1, min_runs=3, min_time_s=0.005, threads=1),
                    baselines=("dense",))  # eager dense only: most tests are about the rest
TINY_LINEAR = LinearShape("tiny-linear", in_features=48, out_features=32, tokens=16)
TINY_CONV = ConvShape("tiny-conv", in_channels=8, out_channels=16, kernel=3, stride=1,
                      padding=1, hw=8, batch=2)


# ---------------------------------------------------------------------------- presets

def test_presets_are_frozen_records_with_named_fields():
    conv = LAYER_PRESETS["vgg16-conv"]   # the paper's Fig. 11 layer
    assert (conv.in_channels, conv.out_channels, conv.kernel, conv.padding, conv.hw,
            conv.batch) == (512, 512, 3, 1, 28, 64)
    fc = LAYER_PRESETS["vgg16-fc"]
    assert (fc.in_features, fc.out_features, fc.tokens) == (4096, 4096, 64)
    bert = {n: LAYER_PRESETS[n] for n in ("bert-base-qkv", "bert-base-out", "bert-base-ffn1",
                                          "bert-base-ffn2")}
    assert [(s.in_features, s.out_features) for s in bert.values()] == [
        (768, 2304), (768, 768), (768, 3072), (3072, 768)]
    assert {s.tokens for s in bert.values()} == {128 * 64}
    assert LAYER_PRESETS["vit-b-mlp"].tokens == 197 * 64
    for name, shape in LAYER_PRESETS.items():
        assert shape.name == name and dataclasses.is_dataclass(shape)
        with pytest.raises(dataclasses.FrozenInstanceError):
            shape.name = "x"


def test_build_is_seeded_and_matches_the_shape():
    a, b = TINY_CONV.build(seed=3), TINY_CONV.build(seed=3)
    assert isinstance(a, nn.Conv2d) and torch.equal(a.weight, b.weight)
    assert a(torch.randn(TINY_CONV.input_shape())).shape == (2, 16, 8, 8)
    lin = TINY_LINEAR.build()
    assert isinstance(lin, nn.Linear) and lin.weight.shape == (32, 48)


def test_scaled_shrinks_batch_or_tokens_only():
    conv = scaled(LAYER_PRESETS["vgg16-conv"], 2 / 64)
    assert conv.batch == 2 and conv.in_channels == 512 and conv.hw == 28
    ffn = scaled(LAYER_PRESETS["bert-base-ffn2"], 1 / 32)
    assert ffn.tokens == 256 and (ffn.in_features, ffn.out_features) == (3072, 768)
    assert scaled(TINY_CONV, 1e-6).batch == 1
    with pytest.raises(ValueError, match="> 0"):
        scaled(TINY_CONV, 0)


def test_parse_shape_reads_linear_and_conv():
    lin = parse_shape("linear:768:3072:256")
    assert lin == LinearShape("linear:768:3072:256", 768, 3072, 256)
    conv = parse_shape("conv:512:512:3:28:64")
    assert (conv.kernel, conv.stride, conv.padding, conv.hw, conv.batch) == (3, 1, 1, 28, 64)
    conv = parse_shape("conv:64:128:3:56:8:2:0")
    assert (conv.stride, conv.padding) == (2, 0)
    assert get_shape("vgg16-fc") is LAYER_PRESETS["vgg16-fc"]
    assert get_shape(TINY_LINEAR) is TINY_LINEAR


@pytest.mark.parametrize("text,message", [
    ("linear:768:3072", "linear:IN:OUT:TOKENS"),
    ("linear:a:b:c", "must be an integer"),
    ("dense:1:2:3", "conv:C:O:K:HW:BATCH"),
    ("conv:8:8:3:8", "conv:C:O:K:HW:BATCH"),
    ("conv:8:8:3:8:1:1:1:1", "conv:C:O:K:HW:BATCH"),
    ("conv:0:8:3:8:1", "C=0 must be >= 1"),
    ("linear:8:8:-4", "TOKENS=-4"),
    ("conv:8:8:7:2:1:1:0", "does not fit"),
])
def test_parse_shape_rejects_junk_clearly(text, message):
    with pytest.raises(ValueError, match=message):
        parse_shape(text)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="vgg16-conv.*bert-base-ffn2"):
        get_shape("resnet-conv")


def test_fixed_density_patterns_run_once_and_block_carries_its_tile():
    cases = pattern_cases(["2:4", "block", "group"], [0.75, 0.5, 0.25], block=(16, 16))
    labels = [(c.label, c.density) for c in cases]
    assert labels.count(("2:4", 0.5)) == 1 and len(labels) == 7
    assert all(c.kwargs == {"block": (16, 16)} for c in cases if c.label == "block")
    with pytest.raises(ValueError, match="unknown pattern 'diagonal'.*group"):
        pattern_cases(["diagonal"], [0.5])


# ---------------------------------------------------------------------------- bench_layer

def _by(rows, **want):
    return [r for r in rows if all(getattr(r, k) == v for k, v in want.items())]


@pytest.mark.parametrize("shape,steps", [(TINY_LINEAR, ["gather", "gemm"]),
                                         (TINY_CONV, ["im2col", "gather", "gemm", "reshape"])])
def test_bench_layer_rows_for_dense_groupwise_ideal_and_steps(tmp_path, shape, steps):
    writer = ResultsWriter(tmp_path)
    rows = bench_layer(shape, ["group"], [0.5, 0.25], backends=["groupwise"], writer=writer,
                       options=FAST)
    dense = _by(rows, backend="dense")
    assert len(dense) == 1 and dense[0].pattern is None and dense[0].ratio_to_dense == 1.0
    for d in (0.5, 0.25):
        gw = _by(rows, kind="layer", backend="groupwise", density=d)
        ideal = _by(rows, kind="layer", backend="ideal", density=d)
        assert len(gw) == len(ideal) == 1
        for r in gw + ideal:
            assert r.error is None and r.median_ms > 0 and r.pattern == "group"
            assert r.ratio_to_dense == pytest.approx(r.median_ms / dense[0].median_ms)
            assert r.param_ratio == pytest.approx(d, abs=0.05)
        assert gw[0].extra["ideal_ms"] == ideal[0].median_ms
        got = _by(rows, kind="step", density=d)
        assert [r.extra["step"] for r in got] == steps
        assert all(r.median_ms > 0 and r.ratio_to_dense is not None for r in got)
        gemm = next(r for r in got if r.extra["step"] == "gemm")
        assert gemm.median_ms == ideal[0].median_ms   # the ideal is the GEMM step
    saved = json.loads((tmp_path / "results.json").read_text())
    validate(saved)
    assert len(saved["records"]) == len(rows)
    assert {r["threads"] for r in saved["records"] if r["error"] is None} == {1}


class _Refuser(backends_base.Backend):
    name = "refuser"
    patterns = ("group",)

    @classmethod
    def reason(cls, layer, mask, dtype, device):
        return "refuses every layer (test backend)"


class _Crasher(backends_base.Backend):
    name = "crasher"
    patterns = ("group",)

    @classmethod
    def from_masked(cls, layer, mask):
        raise RuntimeError("kernel exploded (test backend)")


def test_impossible_cases_give_error_rows_and_the_sweep_goes_on(monkeypatch):
    monkeypatch.setitem(backends_base._REGISTRY, "refuser", _Refuser)
    monkeypatch.setitem(backends_base._REGISTRY, "crasher", _Crasher)
    options = dataclasses.replace(FAST, clamp_block=False, steps=False)
    rows = bench_layer(TINY_CONV, ["block", "group"], [0.5],
                       backends=["refuser", "crasher", "groupwise"], options=options)
    block = _by(rows, pattern="block")   # 32×32 tile on a 16×72 view, not clamped
    assert len(block) == 1 and "pruning failed" in block[0].error and "32x32" in block[0].error
    refused = _by(rows, backend="refuser")
    assert len(refused) == 1 and "refuses every layer" in refused[0].error
    assert refused[0].median_ms is None and refused[0].ratio_to_dense is None
    crashed = _by(rows, backend="crasher")
    assert len(crashed) == 1 and "kernel exploded" in crashed[0].error
    gw = _by(rows, backend="groupwise", kind="layer")   # measured after the failures
    assert len(gw) == 1 and gw[0].error is None and gw[0].median_ms > 0


def test_a_pattern_no_requested_backend_serves_is_an_error_row():
    rows = bench_layer(TINY_LINEAR, ["element"], [0.5], backends=["groupwise"], options=FAST)
    assert len(rows) == 2 and "serves the element pattern" in rows[1].error


def test_block_tile_is_clamped_to_small_layers():
    options = dataclasses.replace(FAST, steps=False)   # groupwise serves no block: error rows
    rows = bench_layer(TINY_LINEAR, ["block"], [0.5], backends=["groupwise"], options=options)
    assert _by(rows, pattern="block")[0].extra["pattern_spec"]["block"] == [32, 32]  # fits
    rows = bench_layer(TINY_CONV, ["block"], [0.5], backends=["groupwise"], options=options)
    assert _by(rows, pattern="block")[0].extra["pattern_spec"]["block"] == [16, 32]  # 16×72


def test_every_dense_path_is_a_baseline_row_and_ratios_are_to_the_fastest():
    import dataclasses

    opts = dataclasses.replace(FAST, baselines=None, steps=False, ideal=False)
    rows = bench_layer(TINY_LINEAR, ["group"], [0.5], backends=["groupwise"], options=opts)
    dense = [r for r in rows if r.pattern is None]
    assert [r.backend for r in dense] == ["dense", "dense·compiled"]  # no CUDA graph on a CPU
    assert all(r.error is None and r.extra["path"] == r.backend for r in dense)
    best = min(dense, key=lambda r: r.median_ms)
    assert best.ratio_to_dense == pytest.approx(1.0)
    assert all(r.extra["baseline"] == best.backend for r in dense)
    sparse = [r for r in rows if r.backend == "groupwise"]
    assert sparse and sparse[0].ratio_to_dense == pytest.approx(sparse[0].median_ms
                                                                / best.median_ms)
