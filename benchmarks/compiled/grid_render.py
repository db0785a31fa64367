"""The README of a compiled-baseline grid, generated from its results.json."""

from __future__ import annotations

from typing import Any

NOISE = 1.02   # a spruce model slower than this × best dense misses "never slower"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}" if v < 10 else f"{v:.2f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _layers(layers: dict[str, int] | None) -> str:
    return " ".join(f"{b}:{n}" for b, n in sorted((layers or {}).items())) or "—"


def dense_table(models: dict[str, dict]) -> list[str]:
    lines = ["| model | source | batch | dense eager ms | dense graph ms | dense compiled+graph "
             "ms | best | compile s | reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in models.items():
        lines.append(f"| {name} | {d.get('source', '')} | {d.get('batch')} | "
                     f"{_ms(d.get('dense_eager_ms'))} | {_ms(d.get('dense_graph_ms'))} | "
                     f"{_ms(d.get('dense_compiled_ms'))} | {d.get('best_dense', '—')} | "
                     f"{d.get('dense_compiled_build_s', '—')} | "
                     f"{'**degenerate**: ' + d['degenerate'] if d.get('degenerate') else 'ok'} |")
    return lines


def best_ms(r: dict, d: dict) -> float | None:
    """The fastest dense path's time for row ``r``: timed again beside the row where the run
    did that, else the model's time from the start of its run."""
    return r.get("best_dense_ms_now") or d.get("best_dense_ms")


def row_cells(r: dict, d: dict) -> list[str]:
    best, eager = best_ms(r, d), d.get("dense_eager_ms")
    if "ms" not in r:
        note = r.get("error") or f"not run ({r.get('not_run')})"
        return [r["model"], r.get("pattern", "—"), f"{r.get('kept', '—')}", r.get("flow", "—"),
                "—", "—", "—", "—", "—", "—", note.replace("|", "/")]
    ratio = r["ms"] / best if best else None
    notes = []
    if r.get("degenerate") or d.get("degenerate"):
        notes.append("**degenerate reference: not a valid speed-up**")
    elif ratio is not None and ratio > NOISE:
        notes.append(f"slower than best dense ({ratio:.2f}×)")
    if r.get("reverted"):
        notes.append(f"{r['reverted']} layers sent back to dense")
    if r.get("flow") == "compact" and r.get("compacted") is False:
        notes.append("compaction dropped: slower than the uncompacted dense twin")
    if r.get("compaction_error"):
        notes.append(f"nothing compacted: {r['compaction_error'][:80]}")
    elif r.get("params_after") == r.get("params_before") is not None:
        notes.append("nothing compacted (params 1.00)")
    elif r.get("params_after"):
        notes.append(f"params {r['params_after'] / r['params_before']:.2f}")
    return [r["model"], r["pattern"], f"{r['kept']:g}", r["flow"], _ms(r["ms"]),
            f"**{_x(ratio)}**", _x(r["ms"] / eager if eager else None),
            f"{r['rel_err']:.1e}", f"{r['convert_s']:.0f}", _layers(r.get("layers")),
            "; ".join(notes)]


def _commands(command: str | list[str] | None) -> list[str]:
    if isinstance(command, list):
        return ["Commands (one run each; their rows gathered here):", "",
                *(f"- `{c}`" for c in command)]
    return [f"Command: `{command}`"]


def render(results: dict[str, Any]) -> str:
    env, models, rows = results["environment"], results["models"], results["rows"]
    lines = ["# Pruned models against the best dense model (compiled)", "",
             f"Device: {env.get('device_name', env.get('device'))}; torch {env.get('torch')}, "
             f"triton {env.get('triton')}, transformers {env.get('transformers')}, "
             f"torchvision {env.get('torchvision')}; {env.get('dtype')}; compile mode "
             f"`{env.get('compile')}`; date {env.get('date')}.", "",
             *_commands(env.get("command")), "",
             "Ratios are medians of the spruce model over the **fastest dense path of the same "
             "run** (*vs best*; where the run recorded it, that path timed again right after "
             "the row), and over eager dense (*vs eager*, from the model's dense table). "
             "Every spruce model is `spruce.convert(..., \"auto\", compile=True)` "
             "(Inductor + CUDA graph on a GPU); "
             "*compact* runs `spruce.compact` first. *err* is the relative error of the timed "
             "output to the pruned fp32 model on the same input. *convert s* includes "
             "auto's timing and compilation.", "", "## Dense paths", "", *dense_table(models),
             "", "## Pruned", "",
             "| model | pattern | kept | flow | ms | vs best | vs eager | err | convert s | "
             "layers | note |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = row_cells(r, models.get(r["model"], {}))
        lines.append("| " + " | ".join(cells) + " |")
    timed = [r for r in rows if "ms" in r and not r.get("degenerate")
             and not models.get(r["model"], {}).get("degenerate")]
    auto = [r for r in timed if r["flow"] == "auto"]
    if auto:
        def ratio(r: dict) -> float:
            return r["ms"] / best_ms(r, models[r["model"]])

        worst = max(auto, key=ratio)
        w = ratio(worst)
        over = sum(ratio(r) > NOISE for r in auto)
        lines += ["", f"`auto` + compile: {len(auto)} rows, {over} above {NOISE}× best dense; "
                      f"the worst is {worst['model']} {worst['pattern']} {worst['kept']:g} at "
                      f"{w:.2f}×."]
    missing = [r for r in rows if "ms" not in r]
    if missing:
        lines += ["", f"{len(missing)} rows have no timing (errors or not run); see the "
                      "table."]
    return "\n".join(lines) + "\n"
