"""Pure helpers of the structure benchmark: FLOPs, best dense path, ratios, errors, sanity.

Nothing here times anything; every function is deterministic on its inputs, so
``tests/test_bench_structure.py`` checks them on tiny models and hand-made rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from spruce.bench.baseline import degenerate  # noqa: F401  (used by bench_structure)

# The dense paths a speed-up is measured against; the fastest one measured is "best dense".
DENSE_PATHS = ("dense_eager_ms", "dense_graph_ms", "dense_compiled_ms")

# A reference output that cannot judge anything (its row is flagged, not reported):
# spruce.bench.baseline.degenerate, re-exported here for the benchmark's modules


def call(model: nn.Module, x: Any) -> Any:
    """``model(**x)`` for keyword inputs (HF models), ``model(x)`` otherwise."""
    return model(**x) if isinstance(x, dict) else model(x)


def first_tensor(out: Any) -> torch.Tensor:
    """The tensor a model's output is judged by: HF ``logits`` / ``last_hidden_state``,
    a plain tensor, or the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    for key in ("logits", "last_hidden_state"):
        value = getattr(out, key, None)
        if isinstance(value, torch.Tensor):
            return value
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"bench_structure: cannot find the output tensor in a "
                    f"{type(out).__name__}; return a tensor, a tuple or an HF ModelOutput")


def count_flops(model: nn.Module, x: Any) -> int:
    """FLOPs of one forward on ``x`` (a multiply-add is 2), from the shapes of the matrix
    products, convolutions and attention it runs (``FlopCounterMode``). Attention runs on
    the math SDPA backend while counting, so every device counts it the same way (as
    batched matrix products; a causal mask is not discounted)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]), counter:
        call(model, x)
    return int(counter.get_total_flops())


def ratio(num: float | None, den: float | None) -> float | None:
    """``num / den``, or None when either is missing or the denominator is not positive."""
    if num is None or den is None or not den > 0:
        return None
    return num / den


def best_dense(row: Mapping[str, Any]) -> tuple[str, float] | None:
    """The fastest dense path measured in ``row`` (a key of DENSE_PATHS and its ms), or None
    when no dense path was measured. Ties go to the simpler path (eager first)."""
    measured = [(row[k], i, k) for i, k in enumerate(DENSE_PATHS)
                if isinstance(row.get(k), (int, float)) and row[k] > 0]
    if not measured:
        return None
    ms, _, key = min(measured)
    return key, ms


def add_ratios(row: dict[str, Any]) -> dict[str, Any]:
    """Fill the row's ratios from its timings and FLOPs (in place; returns the row):

    - ``ratio_best``: compacted (compiled) / fastest dense path;
    - ``ratio_eager``: compacted eager / dense eager;
    - ``ratio_floor``: compacted (compiled) / floor (compiled);
    - ``flop_ratio``: compacted FLOPs / dense FLOPs; ``floor_flop_ratio`` likewise.
    """
    best = best_dense(row)
    row["best_dense"] = best[0] if best else None
    row["best_dense_ms"] = best[1] if best else None
    row["ratio_best"] = ratio(row.get("compacted_compiled_ms"), row["best_dense_ms"])
    row["ratio_eager"] = ratio(row.get("compacted_eager_ms"), row.get("dense_eager_ms"))
    row["ratio_floor"] = ratio(row.get("compacted_compiled_ms"), row.get("floor_compiled_ms"))
    row["flop_ratio"] = ratio(row.get("flops_compacted"), row.get("flops_dense"))
    row["floor_flop_ratio"] = ratio(row.get("flops_floor"), row.get("flops_dense"))
    return row


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|`` in float64: the error of a whole output, scaled by
    the reference's range (``inf`` for shapes that differ)."""
    if out.shape != ref.shape:
        return math.inf
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    scale = ref.abs().max().item()
    return (out - ref).abs().max().item() / scale if scale > 0 else math.inf


def weight_shapes(model: nn.Module) -> list[tuple[int, ...]]:
    """Every parameter's shape, sorted: two models with the same list run the same layers."""
    return sorted(tuple(p.shape) for p in model.parameters())


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
