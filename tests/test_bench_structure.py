"""The structure benchmark's pure pieces: FLOPs, best dense path and ratios, degenerate
references, floors, the results file and its table; and one row end to end (eager only)."""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spruce
from spruce.errors import SpruceError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "structure"))

import bench_structure as bench  # noqa: E402
from structure_metrics import (add_ratios, best_dense, count_flops, degenerate,  # noqa: E402
                               ratio, rel_error)
from structure_models import (FAMILIES, PRESETS, VARIANTS, Case, kept,  # noqa: E402
                              resnet_floor_widths)
from structure_profile import kernel_class  # noqa: E402
from structure_render import HEADER, merge, merge_files, render  # noqa: E402
from structure_timing import Plan  # noqa: E402

HALF = lambda n: kept(n, 0.5)  # noqa: E731


# ------------------------------------------------------------------------------ FLOPs

def test_flops_of_linear_and_conv_are_twice_the_multiply_adds():
    assert count_flops(nn.Linear(8, 4, bias=False), torch.randn(3, 8)) == 2 * 3 * 8 * 4
    conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(1, 2, 5, 5)) == 2 * 4 * 2 * 9 * 25


class _Attention(nn.Module):
    def forward(self, q):  # (B, H, S, D)
        return F.scaled_dot_product_attention(q, q, q)


def test_attention_flops_are_its_two_matrix_products():
    b, h, s, d = 1, 2, 4, 8
    assert count_flops(_Attention(), torch.randn(b, h, s, d)) == 2 * (2 * b * h * s * d * s)


# ---------------------------------------------------------------------- ratios, errors

def test_best_dense_is_the_fastest_measured_path_ties_to_the_simplest():
    row = {"dense_eager_ms": 3.0, "dense_graph_ms": None, "dense_compiled_ms": 2.0}
    assert best_dense(row) == ("dense_compiled_ms", 2.0)
    assert best_dense({"dense_eager_ms": 2.0, "dense_graph_ms": 2.0}) == ("dense_eager_ms", 2.0)
    assert best_dense({"dense_eager_ms": None}) is None


def test_ratios_against_best_dense_eager_and_floor():
    row = add_ratios({"dense_eager_ms": 4.0, "dense_graph_ms": 2.5, "dense_compiled_ms": 2.0,
                      "compacted_eager_ms": 3.0, "compacted_compiled_ms": 1.5,
                      "floor_compiled_ms": 1.2, "flops_dense": 100, "flops_compacted": 26,
                      "flops_floor": 25})
    assert row["best_dense"] == "dense_compiled_ms" and row["best_dense_ms"] == 2.0
    assert row["ratio_best"] == 0.75 and row["ratio_eager"] == 0.75
    assert row["ratio_floor"] == pytest.approx(1.25)
    assert row["flop_ratio"] == 0.26 and row["floor_flop_ratio"] == 0.25
    assert ratio(1.0, None) is None and ratio(1.0, 0.0) is None and ratio(None, 2.0) is None


def test_rel_error_is_scaled_by_the_reference_range():
    ref = torch.tensor([[1.0, -2.0]])
    assert rel_error(torch.tensor([[1.0, -1.5]]), ref) == 0.25
    assert rel_error(ref.clone(), ref) == 0.0
    assert rel_error(torch.zeros(2, 1), ref) == math.inf


def test_degenerate_references_are_named_and_healthy_ones_pass():
    g = torch.Generator().manual_seed(0)
    healthy = torch.randn(4, 10, generator=g)
    assert degenerate(healthy) is None
    assert "tiny" in degenerate(torch.zeros(4, 10))
    assert "tiny" in degenerate(healthy * 1e-6)
    assert "inf/nan" in degenerate(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]))
    same = torch.randn(1, 10, generator=g).expand(4, 10)
    assert "same output" in degenerate(same)
    assert degenerate(same[:1]) is None   # one sample: no spread to judge


# ---------------------------------------------------------------------------- floors

def _resnet_case(arch: str) -> Case:
    return Case(arch, "resnet", 2, {"arch": arch, "dataset": "imagenet"})


def test_resnet_floor_widths_per_variant():
    r18, r50 = _resnet_case("resnet18"), _resnet_case("resnet50")
    assert resnet_floor_widths(r18, VARIANTS["coupled"], HALF) == {
        "stem_width": 32, "widths": (32, 64, 128, 256), "out_widths": (32, 64, 128, 256)}
    assert resnet_floor_widths(r18, VARIANTS["inner"], HALF) == {
        "stem_width": 64, "widths": (32, 64, 128, 256), "out_widths": (64, 128, 256, 512)}
    assert resnet_floor_widths(r50, VARIANTS["inner"], HALF) == {
        "stem_width": 32, "widths": (32, 64, 128, 256),
        "out_widths": (256, 512, 1024, 2048)}


def test_resnet18_floor_is_resnet18_at_half_width_everywhere():
    with torch.device("meta"):
        floor = FAMILIES["resnet"].floor(_resnet_case("resnet18"), VARIANTS["coupled"], HALF)
        dense = spruce.zoo.build("resnet18", "imagenet")
    assert [n for n, _ in floor.named_modules()] == [n for n, _ in dense.named_modules()]
    for (name, p), q in zip(floor.named_parameters(), dense.parameters(), strict=True):
        kept_dims = {"conv1.weight": {1}, "fc.weight": {0}, "fc.bias": {0}}.get(name, set())
        want = [s // 2 if i < 2 and i not in kept_dims else s for i, s in enumerate(q.shape)]
        assert list(p.shape) == want, name   # out and in channels halved, kernels kept


def test_llama_floor_halves_heads_kv_heads_and_mlp_keeping_head_dim():
    case = PRESETS["cpu-smoke"].cases[4]
    c = case.size["config"]
    floor = FAMILIES["llama"].floor(case, VARIANTS["coupled"], HALF)
    attn, mlp = floor.layers[0].self_attn, floor.layers[0].mlp
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    assert attn.q_proj.weight.shape == (c["num_attention_heads"] // 2 * head_dim,
                                        c["hidden_size"])
    assert attn.k_proj.weight.shape == (c["num_key_value_heads"] // 2 * head_dim,
                                        c["hidden_size"])
    assert attn.o_proj.weight.shape == (c["hidden_size"], c["num_attention_heads"] // 2 *
                                        head_dim)
    assert mlp.gate_proj.out_features == mlp.up_proj.out_features == c["intermediate_size"] // 2
    assert mlp.down_proj.in_features == c["intermediate_size"] // 2


def test_vit_floor_keeps_head_dim_with_half_the_heads():
    case = PRESETS["cpu-smoke"].cases[3]
    c = case.size["config"]
    floor = FAMILIES["vit"].floor(case, VARIANTS["coupled"], HALF)
    linears = {n: m for n, m in floor.named_modules() if isinstance(m, nn.Linear)}
    query = next(m for n, m in linears.items() if n.endswith(("query", "q_proj")))
    assert query.weight.shape == (c["hidden_size"] // 2, c["hidden_size"])
    assert sum(m.out_features == c["intermediate_size"] // 2 for m in linears.values()) == \
        c["num_hidden_layers"]


# --------------------------------------------------------------------- results, table

def _row(model: str, variant: str, **kw) -> dict:
    return {"model": model, "variant": variant, "errors": {}, **kw}


def test_merge_replaces_rows_measured_again_and_drops_empty_runs():
    first = {"runs": [{"command": "a", "rows": [_row("r18", "coupled"), _row("r18", "inner")]}]}
    second = merge(first, {"command": "b", "rows": [_row("r18", "coupled", x=1)]})
    assert [r["command"] for r in second["runs"]] == ["a", "b"]
    assert [r["variant"] for r in second["runs"][0]["rows"]] == ["inner"]
    assert len(first["runs"][0]["rows"]) == 2                     # not changed
    third = merge(second, {"command": "c", "rows": [_row("r18", "inner")]})
    assert [r["command"] for r in third["runs"]] == ["b", "c"]


def test_merging_files_of_separate_calls_keeps_each_model_once():
    a = {"runs": [{"command": "a", "rows": [_row("r18", "coupled"), _row("r50", "coupled")]}]}
    b = {"runs": [{"command": "b", "rows": [_row("r50", "coupled", x=2)]}]}
    merged = merge_files(merge_files(None, a), b)
    rows = [(r["model"], r.get("x")) for run in merged["runs"] for r in run["rows"]]
    assert rows == [("r18", None), ("r50", 2)]


def test_render_is_one_table_with_flags_failures_and_floor_source():
    ok = add_ratios(_row("r18", "coupled", dense_eager_ms=4.0, dense_graph_ms=2.5,
                         dense_compiled_ms=2.0, compacted_eager_ms=3.0,
                         compacted_compiled_ms=1.5, floor_compiled_ms=1.2, flops_dense=100,
                         flops_compacted=26, max_rel_err=1.5e-3,
                         floor_source="compacted shapes"))
    failed = add_ratios(_row("bert", "coupled", dense_eager_ms=1.0,
                             errors={"prune": "TypeError: no"}))
    flagged = _row("vit", "coupled", degenerate="dense reference: the output is tiny")
    crashed = _row("llama", "coupled", errors={"case": "OutOfMemoryError: ..."})
    text = render({"runs": [{"rows": [ok]}, {"rows": [failed, flagged, crashed]}]})
    table, _, runs = text.strip().partition("\n\nRuns")
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(HEADER) + " |" and len(lines) == 6
    assert lines[2] == ("| r18 | coupled | 4.000 | 2.500 | 2.000 | 1.500 (eager 3.000) | "
                        "0.75× (eager 0.75×) | 0.75× | 1.200 (compacted shapes) | 1.25× | "
                        "0.260 | 1.5e-03 |")
    assert "1. r18 coupled: " in runs and "2. bert coupled, vit coupled, llama coupled" in runs
    assert "| failed (prune) |" in lines[3] and "| failed (floor) |" not in lines[3]
    assert lines[5].count("failed (case)") == 2          # the compacted and floor cells
    assert lines[4].startswith("| vit | coupled | flagged: dense reference: the output is tiny")
    assert all(line.count("|") == len(HEADER) + 1 for line in lines)


def test_kernel_classes_by_name():
    assert kernel_class("sm90_xmma_gemm_f16f16_f16f32_f32_tn_n_tilesize") == "gemm/conv"
    assert kernel_class("cudnn::ops::nchwToNhwcKernel") == "layout"
    assert kernel_class("triton_poi_fused_convolution_relu_3") == "elementwise"
    assert kernel_class("triton_poi_fused__native_batch_norm_legit_no_training_0") == "norm"
    assert kernel_class("triton_red_fused_add_mean_mul_pow_rsqrt_2") == "norm"
    assert kernel_class("pytorch_flash::flash_fwd_kernel") == "attention"
    assert kernel_class("triton_tem_fused_mm_4") == "gemm/conv"
    assert kernel_class("aten::addmm") == "gemm/conv"
    assert kernel_class("void at::native::vectorized_elementwise_kernel<4, add>") == \
        "elementwise"
    assert kernel_class("something_new") == "other"


def test_selecting_unknown_models_or_variants_names_the_valid_ones():
    with pytest.raises(SpruceError, match="valid: resnet18, resnet50"):
        bench.select("cpu-smoke", "resnet18,gpt2", None)
    with pytest.raises(SpruceError, match="valid: coupled, inner"):
        bench.select("cpu-smoke", None, "outer")
    _, chosen = bench.select("cpu-smoke", "resnet18,bert_base", "inner")
    assert [(c.name, v) for c, v in chosen] == [("resnet18", ["inner"]), ("bert_base", [])]


# ------------------------------------------------------------------ one row, eager only

PLAN = Plan(torch.device("cpu"), min_runs=1, min_time_s=0.0, warmup=1, compile=False)


def _keep_everything(monkeypatch):
    """prune that removes nothing and compact that copies: the compacted model must then
    equal the pruned reference exactly, and its FLOPs the dense model's."""
    monkeypatch.setattr(spruce, "prune", lambda model, **kw: {"kwargs": kw})
    monkeypatch.setattr(spruce, "compact", lambda model, **kw: copy.deepcopy(model))


def test_a_row_end_to_end_checks_errors_flops_and_the_floor(monkeypatch):
    _keep_everything(monkeypatch)
    case = PRESETS["cpu-smoke"].cases[0]
    (row,) = bench.run_case(case, PLAN, torch.float32, 0.5, ["inner"])
    assert row["errors"] == {} and row["degenerate"] is None
    assert row["max_rel_err"] < 1e-5 and row["err_ok"]   # channels-last vs contiguous
    assert row["flop_ratio"] == 1.0 and 0.0 < row["floor_flop_ratio"] < 1.0
    assert row["floor_source"] == "config" and row["floor_same_shapes"] is False
    assert row["best_dense"] == "dense_eager_ms" and row["ratio_eager"] > 0
    assert row["prune_call"] == {"pattern": "channel", "density": 0.5, "scope": "coupled",
                                 "exclude": [], "coupled": {"stream": False}}


def test_a_failed_prune_is_recorded_and_the_floor_still_measured(monkeypatch):
    def refuse(model, **kw):
        raise TypeError("scope 'coupled' is unknown")

    monkeypatch.setattr(spruce, "prune", refuse)
    case = PRESETS["cpu-smoke"].cases[0]
    (row,) = bench.run_case(case, PLAN, torch.float32, 0.5, ["coupled"])
    assert row["errors"] == {"prune": "TypeError: scope 'coupled' is unknown"}
    assert row["params_floor"] < row["params_dense"] and row["ratio_best"] is None
    assert "failed (prune)" in render({"runs": [{"rows": [row]}]})


def test_floor_from_compacted_shapes_needs_the_compacted_model(monkeypatch):
    _keep_everything(monkeypatch)
    case = PRESETS["cpu-smoke"].cases[2]    # BERT: no floor from its config
    (row,) = bench.run_case(case, PLAN, torch.float32, 0.5, ["coupled"])
    assert row["floor_source"] == "compacted shapes" and row["floor_same_shapes"] is True
    assert row["flops_floor"] == row["flops_compacted"] == row["flops_dense"]
