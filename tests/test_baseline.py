"""The best dense baseline: degenerate references are caught, BatchNorm calibration keeps a
random network's activations O(1), the compiled-baseline grid runs and checks its rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from spruce.bench.baseline import (
    DENSE_PATHS,
    best_dense,
    calibrate_batchnorm,
    degenerate,
    paths_for,
)

GRID = Path(__file__).resolve().parents[1] / "benchmarks" / "compiled"


def test_degenerate_references_are_named():
    assert degenerate(torch.randn(8, 10)) is None
    assert "tiny" in degenerate(torch.randn(8, 10) * 1e-8)
    assert "inf/nan" in degenerate(torch.tensor([[1.0, float("nan")]]))
    same = torch.randn(1, 10).expand(8, 10)
    assert "same output" in degenerate(same)
    # fp16 underflow is what the check is for: 6e-8 is a valid fp32 output but not a judge
    assert degenerate(torch.full((4, 4), 6e-8)) is not None


def deep_random_cnn() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(12):
        conv = nn.Conv2d(8, 8, 3, padding=1)
        nn.init.normal_(conv.weight, std=0.02)  # shrinks activations at every layer
        layers += [conv, nn.BatchNorm2d(8), nn.ReLU()]
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), *layers).eval()


def test_calibrated_batchnorm_keeps_activations_order_one():
    model = deep_random_cnn()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        before = model(x)
    assert degenerate(before) is not None  # default statistics: the signal vanishes
    n = calibrate_batchnorm(model, [torch.randn(4, 3, 8, 8) for _ in range(3)])
    assert n == 12 and not model.training
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        after = model(x)
    assert degenerate(after) is None
    assert 0.1 < after.pow(2).mean().sqrt().item() < 10


def test_dense_paths_and_the_best_of_them():
    assert paths_for("cpu") == ["dense", "dense·compiled"]
    assert paths_for("cuda") == list(DENSE_PATHS)
    rows = [{"backend": "dense", "pattern": None, "median_ms": 3.0, "error": None},
            {"backend": "dense·compiled", "pattern": None, "median_ms": 1.5, "error": None},
            {"backend": "dense·graph", "pattern": None, "median_ms": None, "error": "x"},
            {"backend": "groupwise", "pattern": "group", "median_ms": 0.5, "error": None}]
    assert best_dense(rows) == ("dense·compiled", 1.5)
    assert best_dense(rows[2:]) is None


@pytest.mark.slow
def test_the_grid_runs_on_the_cpu_and_checks_every_row(tmp_path):
    sys.path.insert(0, str(GRID))
    try:
        import grid
    finally:
        sys.path.remove(str(GRID))
    grid.main(["--models", "smoke_cnn", "--device", "cpu", "--dtype", "float32",
               "--batch", "2", "--patterns", "group", "--kept", "0.5",
               "--flows", "compact", "--min-time", "0.01", "--output", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    dense = results["models"]["smoke_cnn"]
    assert {"dense_eager_ms", "dense_compiled_ms", "best_dense"} <= set(dense)
    assert dense["best_dense"] in ("eager", "compiled") and dense["degenerate"] is None
    [row] = results["rows"]
    assert row["rel_err"] < 1e-4
    # the compacted model was timed against the uncompacted dense twin; which one was kept
    # depends on those times (noisy on a shared CPU), the parameters say which
    assert {"compacted", "dense, uncompacted"} <= set(row["auto_check_ms"])
    compacted_kept = row["auto_check_ms"]["compacted"] <= \
        row["auto_check_ms"]["dense, uncompacted"]
    assert row["compacted"] == compacted_kept
    if compacted_kept:
        assert row["params_after"] < row["params_before"]
    text = (tmp_path / "README.md").read_text()
    assert "| smoke_cnn | group | 0.5 | compact |" in text and "vs best" in text


def test_the_grid_leaves_layers_smaller_than_a_block_dense():
    """VGG-16's first conv has a 64 × 27 view: a 32 × 32 block does not fit, so block rows
    prune every other layer instead of failing."""
    import spruce
    from spruce.patterns.base import kept_count

    sys.path.insert(0, str(GRID))
    try:
        import grid
        from grid_models import MODELS
    finally:
        sys.path.remove(str(GRID))
    model = MODELS["smoke_cnn"].build().eval()  # convs 16×27, 32×144, 32×288; head excluded
    kw = grid.prune_kwargs("block", MODELS["smoke_cnn"], model)
    assert kw["block"] == (32, 32) and set(kw["exclude"]) == {"11", "0"}
    spruce.prune(model, "block", 0.5, **kw)
    masked = {n for n, m in model.named_modules() if hasattr(m, "parametrizations")}
    assert masked == {"3", "6"}
    w = model.get_submodule("6").weight.reshape(32, 9, 32)  # a 32 × 288 view: 9 blocks
    kept = w.ne(0).any(dim=(0, 2))
    assert bool((w.ne(0).sum(dim=(0, 2)) == 32 * 32 * kept).all())  # whole blocks only
    assert int(kept.sum()) == kept_count(0.5, 9)


def test_bench_model_flags_a_degenerate_reference(tmp_path):
    from spruce.bench.model import ModelOptions, bench_model
    from spruce.bench.report import findings
    from spruce.bench.sweep import TimingConfig

    model = deep_random_cnn()  # default BatchNorm statistics: the output vanishes
    x = torch.randn(2, 3, 8, 8)
    opts = ModelOptions(timing=TimingConfig(warmup=1, min_runs=2, min_time_s=0.0),
                        baselines=("dense",))
    rows = bench_model(model, ["group"], [0.5], backends=["groupwise"], example_input=x,
                       options=opts)
    assert all(r.extra.get("degenerate_reference") for r in rows)
    assert any("Degenerate reference" in f for f in findings(rows))
    from spruce.bench.report import write_report
    report, _ = write_report(tmp_path, rows, None, "degenerate")
    assert "**Degenerate reference** for Sequential" in report.read_text()
    calibrate_batchnorm(model, [torch.randn(2, 3, 8, 8) for _ in range(2)])
    rows = bench_model(model, ["group"], [0.5], backends=["groupwise"], example_input=x,
                       options=opts)
    assert not any("degenerate_reference" in r.extra for r in rows)
