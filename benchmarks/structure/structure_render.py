"""results.json of the structure benchmark: merging runs into it and rendering its table.

A results file holds every run written to its folder: ``{"program": ..., "runs": [run]}``
with a run ``{"env": ..., "command": ..., "preset": ..., "rows": [row]}``. A new run
replaces the rows of the (model, variant) pairs it measured again, so a preset split over
several ``--models`` runs gathers in one file; a run left without rows is dropped.
"""

from __future__ import annotations

import math
from typing import Any

PROGRAM = "benchmarks/structure/bench_structure.py"

HEADER = ("model", "variant", "dense eager ms", "dense graph ms", "dense compile+graph ms",
          "compacted ms", "vs best dense", "fastest vs fastest", "floor ms", "vs floor",
          "FLOP ratio", "max rel err")


def merge(old: dict[str, Any] | None, run: dict[str, Any]) -> dict[str, Any]:
    """``old`` results with ``run`` appended and its (model, variant) rows removed from
    the earlier runs. ``old`` is not changed."""
    new_keys = {(r["model"], r["variant"]) for r in run["rows"]}
    runs = []
    for prior in (old or {}).get("runs", []):
        rows = [r for r in prior["rows"] if (r["model"], r["variant"]) not in new_keys]
        if rows:
            runs.append({**prior, "rows": rows})
    return {"program": PROGRAM, "runs": [*runs, run]}


def merge_files(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """Every run of the results ``new`` merged, in order, into ``old`` (see ``merge``)."""
    merged = old or {"program": PROGRAM, "runs": []}
    for run in new.get("runs", []):
        merged = merge(merged, run)
    return merged


def _ms(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def _x(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, (int, float)) and math.isfinite(value) else "—"


# the stages whose failure leaves a cell empty (error keys start with one of these)
BEFORE_ANY = ("case", "build", "reference")
COMPACTED_STAGES = (*BEFORE_ANY, "prune", "pruned reference", "compact")
FLOOR_STAGES = (*BEFORE_ANY, "floor")


def _failed(row: dict[str, Any], stages: tuple[str, ...]) -> str | None:
    """'failed (stage)' for the first recorded error of one of ``stages``."""
    stage = next((k for k in row.get("errors", {}) if k.startswith(stages)), None)
    return f"failed ({stage})" if stage else None


def _compacted(row: dict[str, Any]) -> str:
    failed = _failed(row, COMPACTED_STAGES)
    if failed and row.get("compacted_compiled_ms") is None:
        return failed
    eager = row.get("compacted_eager_ms")
    text = _ms(row.get("compacted_compiled_ms"))
    return f"{text} (eager {_ms(eager)})" if eager is not None else text


def _floor(row: dict[str, Any]) -> str:
    failed = _failed(row, FLOOR_STAGES)
    if failed and row.get("floor_compiled_ms") is None:
        return failed
    text = _ms(row.get("floor_compiled_ms"))
    return f"{text} (compacted shapes)" if row.get("floor_source") == "compacted shapes" \
        else text


def _compiled(row: dict[str, Any], key: str) -> str:
    text = _ms(row.get(key))
    return f"{text} (no graph)" if row.get(key) is not None and \
        row.get("compiled_mode") == "compile" else text


def fastest_ratio(row: dict[str, Any]) -> float | None:
    """The compacted model's fastest path (eager or compiled + graph) over the fastest dense
    path: what a user who picks the best way to run each model sees."""
    paths = [row.get(k) for k in ("compacted_eager_ms", "compacted_compiled_ms")]
    paths = [v for v in paths if isinstance(v, (int, float)) and math.isfinite(v)]
    best = row.get("best_dense_ms")
    return min(paths) / best if paths and best else None


def table_row(row: dict[str, Any]) -> list[str]:
    """The cells of one row; a row with a degenerate reference is flagged, not reported."""
    head = [row["model"], row["variant"]]
    if row.get("degenerate"):
        return head + [f"flagged: {row['degenerate']}"] + ["—"] * (len(HEADER) - 3)
    ratio = _x(row.get("ratio_best"))
    if row.get("ratio_eager") is not None:
        ratio += f" (eager {_x(row['ratio_eager'])})"
    err = row.get("max_rel_err")
    return head + [_ms(row.get("dense_eager_ms")), _ms(row.get("dense_graph_ms")),
                   _compiled(row, "dense_compiled_ms"), _compacted(row), ratio,
                   _x(fastest_ratio(row)), _floor(row),
                   _x(row.get("ratio_floor")),
                   f"{row['flop_ratio']:.3f}" if row.get("flop_ratio") is not None else "—",
                   f"{err:.1e}" if isinstance(err, (int, float)) else "—"]


def render(results: dict[str, Any]) -> str:
    """The markdown table of every row of every run, in run order."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for run in results.get("runs", []):
        for row in run["rows"]:
            lines.append("| " + " | ".join(table_row(row)) + " |")
    splits = {f"{r['model']}/{r['variant']} {path}": split
              for run in results.get("runs", []) for r in run["rows"]
              for path, split in (r.get("profile") or {}).items()}
    if splits:
        from structure_profile import render_split

        lines += ["", "Kernel time per call (ms) by class, from the profiler:", "",
                  render_split(splits)]
    lines += ["", "Runs (ratios are against the fastest dense path of the same run):", ""]
    for i, run in enumerate(results.get("runs", []), 1):
        env = run.get("env", {})
        models = ", ".join(f"{r['model']} {r['variant']}" for r in run["rows"])
        lines.append(f"{i}. {models}: {env.get('device_name', env.get('device', '?'))}, "
                     f"{env.get('dtype', '?')}, torch {env.get('torch', '?')}, triton "
                     f"{env.get('triton', '?')}, transformers {env.get('transformers', '?')}, "
                     f"{env.get('date', '?')}; `{run.get('command', '?')}`")
    return "\n".join(lines) + "\n"
