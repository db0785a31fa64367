"""report.md from result rows: environment, headline, findings computed from the data, the
paper's tables (model | parameter % | pattern | backend | latency | ratio to dense) and plots.

    report, plots = write_report("runs/quick", writer.records, writer.environment, title="...")

Works on ``Record`` objects or on the dicts of a results.json, so a report can be rebuilt
from the files alone. Nothing here measures; every sentence is computed from the rows.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from . import plots
from .baseline import best_dense, eager_dense, is_dense_path
from .plots import best_per_point, dense_ms, ok, pattern_key, step_table
from .records import Record
from .sweep import BASELINE, IDEAL

REPORT_FILES = ("results.json", "results.csv", "report.md", "plots/*.png")
NOISY_SPREAD = 0.5   # (p90 − p10) / median above which a row is called noisy


def rows_of(records) -> list[dict]:
    return [r.to_dict() if isinstance(r, Record) else r for r in records]


def subjects(rows: list[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """(``"model"`` | ``"layer"``, name, dtype) → its rows (steps go with their layer),
    in the order first measured."""
    out: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        kind = "model" if r["kind"] == "model" else "layer"
        out.setdefault((kind, r["name"], r["dtype"] or "?"), []).append(r)
    return out


def _ms(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}" if v >= 1 \
        else f"{v:.3g}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")


def _table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in body]
    return "\n".join(lines)


# ---------------------------------------------------------------- headline and findings

def headline(records) -> list[dict]:
    """Per subject: the best dense latency (the fastest of eager, CUDA graph and compiled
    dense measured) and, at each kept ratio, the fastest sparse pattern and backend with
    its ratio to that best dense."""
    out = []
    for (kind, name, dtype), rs in subjects(rows_of(records)).items():
        cells: dict[float, dict] = {}
        for pts in best_per_point(rs).values():
            for r in pts:
                d = r["density"]
                if d not in cells or r["median_ms"] < cells[d]["ms"]:
                    cells[d] = {"pattern": r["pattern"], "backend": r["backend"],
                                "ms": r["median_ms"], "ratio": r["ratio_to_dense"]}
        best = best_dense(rs)
        out.append({"subject": name, "kind": kind, "dtype": dtype,
                    "dense_ms": dense_ms(rs), "dense_path": best[0] if best else None,
                    "eager_ms": eager_dense(rs), "cells": cells})
    return out


PATH_SHORT = {"dense": "eager", "dense·graph": "graph", "dense·compiled": "compiled"}


def headline_rows(records, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """The headline as a header and string rows. ``compact`` (the terminal, 80 columns):
    the pattern alone in each cell; otherwise pattern·backend."""
    heads = headline(records)
    kept = sorted({d for h in heads for d in h["cells"]}, reverse=True)
    header = ["subject", "dtype", "best dense ms"] + \
        [f"{100 * d:g}%" if compact else f"best at kept {100 * d:g}%" for d in kept]
    body = []
    for h in heads:
        cells = [("—" if not c else f"{c['pattern']} {_x(c['ratio'])}" if compact
                  else f"{c['pattern']}·{c['backend']} {_x(c['ratio'])}")
                 for c in (h["cells"].get(d) for d in kept)]
        path = PATH_SHORT.get(h["dense_path"], "—")
        body.append([h["subject"], h["dtype"], f"{_ms(h['dense_ms'])} {path}", *cells])
    return header, body


def findings(records) -> list[str]:
    rows = rows_of(records)
    out = (_slower_than_dense(rows) + _fastest_pattern(rows) + _beats_dense(rows)
           + _ideal_gap(rows) + _step_shares(rows) + _caveats(rows))
    return out or ["no row was measured"]


def _sparse(rows: list[dict]) -> list[dict]:
    return [r for r in rows if ok(r) and r["kind"] in ("layer", "model")
            and r["pattern"] is not None and r["backend"] != IDEAL
            and not is_dense_path(r["backend"]) and r["ratio_to_dense"] is not None]


def _slower_than_dense(rows: list[dict]) -> list[str]:
    by_backend = defaultdict(list)
    for r in _sparse(rows):
        by_backend[r["backend"]].append(r["ratio_to_dense"])
    return [f"**{b}** is slower than dense in {sum(x > 1 for x in xs)} of {len(xs)} measured "
            f"rows (ratio to dense {min(xs):.2f}–{max(xs):.2f}×, median "
            f"{statistics.median(xs):.2f}×)." for b, xs in sorted(by_backend.items())]


def _fastest_pattern(rows: list[dict]) -> list[str]:
    winners: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (kind, name, dtype), rs in subjects(rows).items():
        best: dict[float, dict] = {}
        for pts in best_per_point(rs).values():
            for r in pts:
                if r["density"] not in best or r["median_ms"] < best[r["density"]]["median_ms"]:
                    best[r["density"]] = r
        if best:
            tally = Counter(r["pattern"] for r in best.values())
            top = max(tally.items(), key=lambda kv: (kv[1], -pattern_key(kv[0])[0]))
            winners[(kind, top[0])].append(f"{name} ({dtype}, {top[1]}/{len(best)} kept "
                                           "ratios)")
    return [f"**{pattern}** is the fastest sparse pattern for {kind}s: {', '.join(names)}."
            for (kind, pattern), names in sorted(winners.items())]


def _beats_dense(rows: list[dict]) -> list[str]:
    lines: dict[tuple[str, str], list[str]] = defaultdict(list)
    never = []
    for (_, name, dtype), rs in subjects(rows).items():
        curves = defaultdict(list)
        for r in _sparse(rs):
            curves[(r["pattern"], r["backend"])].append(r)
        any_win = False
        for key, pts in curves.items():
            limit = None
            for r in sorted(pts, key=lambda r: r["density"]):   # fewest kept first
                if r["ratio_to_dense"] >= 1:
                    break
                limit = r["density"]
            if limit is not None:
                any_win = True
                lines[key].append(f"{name} ({dtype}) at kept ≤ {100 * limit:g}%")
        if curves and not any_win:
            never.append(f"{name} ({dtype})")
    out = [f"**{p} · {b}** beats dense on {', '.join(where)}."
           for (p, b), where in sorted(lines.items(), key=lambda kv: pattern_key(kv[0][0]))]
    if never:
        out.append(f"No sparse pattern beats dense at any measured kept ratio on "
                   f"{', '.join(never)}.")
    return out


def _ideal_gap(rows: list[dict]) -> list[str]:
    gaps = [r["median_ms"] / r["extra"]["ideal_ms"] for r in rows
            if ok(r) and r["kind"] == "layer" and (r["extra"] or {}).get("ideal_ms")]
    if not gaps:
        return []
    return [(f"Group-wise runs at {min(gaps):.2f}–{max(gaps):.2f}× its ideal (the compacted "
            f"GEMM alone; median {statistics.median(gaps):.2f}× over {len(gaps)} rows): the "
            "rest is the gather, and im2col for convs.")]


def _step_shares(rows: list[dict]) -> list[str]:
    out = []
    for (_kind, name, dtype), rs in subjects(rows).items():
        table = step_table(rs)
        if not table:
            continue
        d = sorted(table)[len(table) // 2]   # the middle kept ratio
        total = sum(table[d].values())
        parts = ", ".join(f"{s} {100 * v / total:.0f}%" for s, v in sorted(
            table[d].items(), key=lambda kv: plots.STEP_ORDER.index(kv[0])
            if kv[0] in plots.STEP_ORDER else 9))
        out.append(f"Group-wise steps on {name} ({dtype}) at kept {100 * d:g}%: {parts} of "
                   f"{_ms(total)} ms summed.")
    return out


def _caveats(rows: list[dict]) -> list[str]:
    out = []
    noisy = [r for r in rows if ok(r) and (r["extra"] or {}).get("spread", 0) > NOISY_SPREAD]
    if noisy:
        out.append(f"{len(noisy)} of {sum(map(ok, rows))} timed rows are noisy (p90 − p10 > "
                   f"{NOISY_SPREAD:.0%} of the median): read their ratios with care.")
    flagged = sorted({r["name"] for r in rows if (r.get("extra") or {}).get(
        "degenerate_reference")})
    if flagged:
        out.append(f"**Degenerate reference** for {', '.join(flagged)}: the dense output is "
                   "tiny, non-finite or the same for every sample, so its ratios and errors "
                   "do not judge anything (calibrate BatchNorm statistics or use real "
                   "weights).")
    errors = [r for r in rows if not ok(r)]
    if errors:
        out.append(f"{len(errors)} cases could not be measured (see *Not measured*).")
    return out


# ---------------------------------------------------------------------------- tables

def _model_table(rs: list[dict]) -> str:
    name = rs[0]["name"]
    body = [[name, _pct(r["param_ratio"]), r["pattern"], r["backend"], _ms(r["median_ms"]),
             _x(r["ratio_to_dense"])]
            for r in sorted(_sparse_or_ideal(rs), key=lambda r: (
                pattern_key(r["pattern"]), -r["density"], r["backend"]))]
    body += [[name, "100.0", "dense", r["backend"], _ms(r["median_ms"]),
              _x(r["ratio_to_dense"])]
             for r in rs if ok(r) and r["pattern"] is None and r["kind"] != "step"]
    return _table(["model", "parameter %", "pattern", "backend", "latency ms",
                   "ratio to dense"], body)


def _layer_table(rs: list[dict]) -> str:
    rows = sorted(_sparse_or_ideal(rs), key=lambda r: (pattern_key(r["pattern"]),
                                                       -r["density"], r["backend"] == IDEAL))
    body = [[r["name"], _pct(r["density"]), _pct(r["param_ratio"]), r["pattern"],
             r["backend"], _ms(r["median_ms"]), f"{_ms(r['p10_ms'])}–{_ms(r['p90_ms'])}",
             _x(r["ratio_to_dense"])] for r in rows]
    body += [[r["name"], "100", "100.0", "dense", r["backend"], _ms(r["median_ms"]),
              f"{_ms(r['p10_ms'])}–{_ms(r['p90_ms'])}", _x(r["ratio_to_dense"])]
             for r in rs if ok(r) and r["pattern"] is None]
    return _table(["layer", "kept %", "parameter %", "pattern", "backend", "latency ms",
                   "p10–p90 ms", "ratio to dense"], body)


def _steps_table(rs: list[dict]) -> str:
    table = step_table(rs)
    steps = [s for s in plots.STEP_ORDER if any(s in t for t in table.values())]
    whole = {r["density"]: r["median_ms"] for r in rs if ok(r) and r["kind"] == "layer"
             and r["pattern"] == "group" and r["backend"] not in (IDEAL, BASELINE)}
    body = [[f"{100 * d:g}", *(_ms(t.get(s)) for s in steps), _ms(sum(t.values())),
             _ms(whole.get(d))] for d, t in table.items()]
    return _table(["kept %", *(f"s{i + 1} {s} ms" for i, s in enumerate(steps)),
                   "sum of steps ms", "whole layer ms"], body)


def _sparse_or_ideal(rs: list[dict]) -> list[dict]:
    return [r for r in rs if ok(r) and r["kind"] != "step" and r["pattern"] is not None]


def _errors_table(rows: list[dict]) -> str:
    body = [[r["name"], r["dtype"] or "", r["pattern"] or "dense",
             _pct(r["density"]) if r["density"] is not None else "", r["backend"] or "",
             r["error"] or "no timing"] for r in rows if not ok(r)]
    return _table(["subject", "dtype", "pattern", "kept %", "backend", "why"], body)


def _environment(env: dict, rows: list[dict]) -> str:
    dtypes = ", ".join(sorted({r["dtype"] for r in rows if r["dtype"]})) or "—"
    header = ["device", "device name", "dtype", "threads", "torch", "spruce", "python",
              "cuda", "date"]
    return _table(header, [[str(env.get("device")), str(env.get("device_name")), dtypes,
                            str(env.get("threads")), str(env.get("torch")),
                            str(env.get("spruce")), str(env.get("python")),
                            str(env.get("cuda") or "—"), str(env.get("date"))]])


def _method(rows: list[dict]) -> str:
    timed = [r for r in rows if ok(r)]
    methods = sorted({(r["extra"] or {}).get("method", "?") for r in timed})
    runs = [r["runs"] for r in timed] or [0]
    return (f"Latency is the median of {min(runs)}–{max(runs)} timed runs per row after "
            f"warm-up ({', '.join(methods)}), inputs rotated over several buffers. The ratio "
            "to dense divides by the dense median of the same subject in the same run. "
            "Group-wise *ideal* is the dense GEMM on the compacted K·r problem with inputs "
            "gathered beforehand: the floor group-wise can reach.")


# ---------------------------------------------------------------------------- writing

def prepare_output(out_dir: str | Path, overwrite: bool) -> Path:
    """The output folder, created; refused if it holds files, unless ``overwrite`` — and
    even then nothing is deleted: only the files a report writes are replaced."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} is a file; give a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"output folder {out} exists and is not empty; pass --overwrite "
                         f"(only {', '.join(REPORT_FILES)} are replaced) or pick another folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(out_dir: str | Path, records, environment: dict | None, title: str,
                 interrupted: bool = False) -> tuple[Path, list[Path]]:
    """Write plots/*.png and report.md under ``out_dir``; returns (report, plots)."""
    out = Path(out_dir)
    rows = rows_of(records)
    parts = [f"# spruce characterization — {title}", ""]
    if interrupted:
        parts += [(f"> **Interrupted**: this report holds the {len(rows)} rows measured "
                  "before Ctrl-C."), ""]
    parts += [_environment(environment or {}, rows), "", "## Headline", "",
              "Every ratio is to the **best dense path measured in the same run**: the "
              "fastest of eager dense (`dense`), dense replayed as a CUDA graph "
              "(`dense·graph`, GPU) and `torch.compile`d dense (`dense·compiled`), where "
              "the run measured them; the *best dense ms* column names the winner. The "
              "per-subject tables list every dense path measured with its ratio to the "
              "best.", "",
              _table(*headline_rows(rows)), "", "## Findings", "",
              *(f"- {f}" for f in findings(rows)), ""]
    written: list[Path] = []
    groups = subjects(rows)
    sections = {"model": "## Models (Tables 1–8, Figs. 7–10)",
                "layer": "## Layers (Figs. 11–14)"}
    for kind, heading in sections.items():
        items = [(k, rs) for k, rs in groups.items() if k[0] == kind]
        if items:
            parts += [heading, ""]
        for (_, name, dtype), rs in items:
            parts += _subject_section(out, kind, name, dtype, rs, written)
    errors = [r for r in rows if not ok(r)]
    if errors:
        parts += ["## Not measured", "", _errors_table(errors), ""]
    parts += ["## How it was measured", "", _method(rows), ""]
    report = out / "report.md"
    report.write_text("\n".join(parts))
    return report, written


def _subject_section(out: Path, kind: str, name: str, dtype: str, rs: list[dict],
                     written: list[Path]) -> list[str]:
    first = next((r for r in rs if r["kind"] != "step"), rs[0])
    what = (first["extra"] or {}).get("shape") or f"batch {first['batch']}"
    parts = [f"### {name} — {dtype}, {what}", ""]
    timed = any(ok(r) for r in rs)
    if timed:
        slug = f"{kind}_{_slug(name)}_{dtype}"
        title = f"{name} ({dtype}, {first['device']})"
        plot = plots.plot_model if kind == "model" else plots.plot_layer
        path = plot(rs, title, out / "plots" / f"{slug}.png")
        written.append(path)
        parts += [f"![{name}](plots/{path.name})", ""]
    parts += [_model_table(rs) if kind == "model" else _layer_table(rs), ""]
    if kind == "layer" and step_table(rs):
        path = plots.plot_steps(rs, f"{name}: group-wise steps ({dtype})",
                                out / "plots" / f"steps_{_slug(name)}_{dtype}.png")
        written.append(path)
        parts += ["Group-wise step breakdown (Figs. 12–13):", "",
                  f"![{name} steps](plots/{path.name})", "", _steps_table(rs), ""]
    return parts
