"""The digits coupled-pruning benchmark, one seed cut short: the compacted model computes
what the masked one does, at exactly the widths the coupled groups keep."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from spruce.patterns.base import kept_count

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "structure"))  # its sibling digits_report.py


def _bench():
    spec = importlib.util.spec_from_file_location(
        "digits_accuracy_bench", ROOT / "benchmarks" / "structure" / "digits_accuracy.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bench():
    return _bench()


@pytest.fixture(scope="module")
def one_seed(bench):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        recipe = bench.Recipe(epochs=1, finetune_epochs=1, batch=32, limit_train=64,
                              limit_test=48)
        return bench.run_seed(0, recipe)
    finally:
        torch.set_num_threads(threads)


def test_compacted_logits_equal_the_masked_ones(one_seed):
    r = one_seed
    assert r["test_images"] == 48
    assert r["max_abs_logit_diff"] <= 1e-4
    assert r["same_predictions"] == 48
    assert r["top1"]["compacted"] == r["top1"]["finetuned"]


def test_compacted_model_is_plain_and_smaller(one_seed):
    r, small = one_seed, one_seed["model"]
    assert not any(parametrize.is_parametrized(m) for m in small.modules())
    assert r["params"]["compacted"] == sum(p.numel() for p in small.parameters())
    assert r["params"]["compacted"] < r["params"]["dense"]
    assert r["macs"]["compacted"] < r["macs"]["dense"]
    # zoo resnet18 for cifar10 has 11,173,962; its stem loses 2 of 3 input channels
    assert r["params"]["dense"] == 11_173_962 - 2 * 64 * 9


def test_every_group_keeps_exactly_half_its_units(bench, one_seed):
    groups = one_seed["groups"]
    assert bench.check_kept(one_seed, 0.5) == []
    assert [g["kept"] for g in groups if g["reason"] is None] == \
        [kept_count(0.5, g["units"]) for g in groups if g["reason"] is None]
    whole = [g for g in groups if g["reason"] is not None]
    assert [(g["group"], g["kept"]) for g in whole] == [("fc channels", 10)]  # the logits


def test_compacted_widths_are_half_the_dense_ones(one_seed):
    dense, small = one_seed["widths"]["dense"], one_seed["widths"]["compacted"]
    assert dense.keys() == small.keys()
    for name, (c_in, c_out) in dense.items():
        want_in = c_in if name == "conv1" else c_in // 2  # the image keeps its channel
        want_out = c_out if name == "fc" else c_out // 2  # the logits keep their classes
        assert small[name] == [want_in, want_out], name
    assert isinstance(one_seed["model"].fc, nn.Linear) and small["fc"] == [256, 10]


def test_render_has_one_row_per_seed_and_the_mean(bench, one_seed):
    run = {k: v for k, v in one_seed.items() if k != "model"}
    res = {"date": "d", "command": "c", "environment": bench.environment(),
           "recipe": {**bench.Recipe().__dict__}, "model": "m", "data": "x",
           "run": {"threads": 1, "jobs": 1}, "runs": [run, {**run, "seed": 7}],
           "summary": bench.summary([run, {**run, "seed": 7}])}
    text = bench.render(res)
    rows = [line for line in text.splitlines() if line.startswith(("| 0 |", "| 7 |", "| mean"))]
    assert len(rows) == 3
    drop = run["top1"]["dense"] - run["top1"]["compacted"]
    assert res["summary"]["drop"] == (pytest.approx(drop), 0.0)
    assert res["summary"]["within_target_every_seed"] == (drop <= bench.TARGET_DROP)
