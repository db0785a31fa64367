"""The paper's figures from result rows (dicts of results.json), with matplotlib's Agg.

- :func:`plot_model` — latency vs remaining parameters, one line per pattern (its fastest
  backend at each point), dense as a horizontal line (Figs. 7–10);
- :func:`plot_layer` — latency vs sparsity per pattern/backend, with dense and the
  group-wise ideal (Figs. 11 and 14);
- :func:`plot_steps` — group-wise step breakdown as stacked bars per kept ratio (Figs. 12–13).

Each takes the rows of one subject (one name, one dtype) and returns the PNG path.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")   # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt

from .baseline import best_dense
from .sweep import BASELINE, IDEAL

PATTERN_ORDER = ("element", "2:4", "block", "group", "channel")
STEP_ORDER = ("im2col", "gather", "gemm", "reshape")
_COLORS = dict(zip(PATTERN_ORDER, ("tab:red", "tab:orange", "tab:purple", "tab:green",
                                   "tab:blue"), strict=False))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_STYLES = ("-", (0, (6, 2)), "-.", (0, (3, 1, 1, 1, 1, 1)))   # ":" is the ideal
_DPI = 110


def _look(backend: str, backends: list[str]) -> tuple[str, object]:
    """A marker and line style per backend, so two backends of one pattern stay apart."""
    i = backends.index(backend) if backend in backends else 0
    return _MARKERS[i % len(_MARKERS)], _STYLES[i % len(_STYLES)]


def ok(row: dict) -> bool:
    return row.get("error") is None and row.get("median_ms") is not None


def dense_ms(rows: list[dict]) -> float | None:
    """The best dense baseline's median among ``rows`` (one subject): the fastest of
    eager, CUDA graph and compiled dense measured (``spruce.bench.baseline``)."""
    best = best_dense(rows)
    return None if best is None else best[1]


def pattern_key(pattern: str) -> tuple[int, str]:
    return (PATTERN_ORDER.index(pattern) if pattern in PATTERN_ORDER else len(PATTERN_ORDER),
            pattern)


def best_per_point(rows: list[dict]) -> dict[str, list[dict]]:
    """Pattern → its fastest sparse row at each kept ratio (ideal and step rows excluded)."""
    best: dict[tuple[str, float], dict] = {}
    for r in rows:
        if not ok(r) or r["pattern"] is None or r["backend"] == IDEAL or r["kind"] == "step":
            continue
        key = (r["pattern"], r["density"])
        if key not in best or r["median_ms"] < best[key]["median_ms"]:
            best[key] = r
    out: dict[str, list[dict]] = defaultdict(list)
    for (pattern, _), r in sorted(best.items(), key=lambda kv: (pattern_key(kv[0][0]),
                                                                kv[0][1])):
        out[pattern].append(r)
    return dict(out)


def _finish(fig, ax, path: Path, values: list[float]) -> Path:
    positive = [v for v in values if v and v > 0]
    if positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")   # CSR can be 100× dense: a linear axis would flatten the rest
    ax.grid(True, alpha=0.3)
    return _save(fig, ax, path)


def _save(fig, ax, path: Path) -> Path:
    """Legend outside on the right, then write and close the figure."""
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def _finish_latency(fig, ax, rows: list[dict], values: list[float], xlabel: str, title: str,
                    path: Path) -> Path:
    """Dense as a dashed line, axis labels and title, then write the PNG."""
    base = dense_ms(rows)
    if base is not None:
        ax.axhline(base, color="black", linestyle="--", label=f"dense ({base:.3g} ms)")
        values.append(base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title, fontsize=10)
    return _finish(fig, ax, path, values)


def plot_model(rows: list[dict], title: str, path: Path) -> Path:
    """Figs. 7–10: latency vs remaining-parameter ratio; dense as a horizontal line."""
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    values = []
    for pattern, pts in best_per_point(rows).items():
        pts = sorted(pts, key=lambda r: r["param_ratio"])
        xs = [100 * r["param_ratio"] for r in pts]
        ys = [r["median_ms"] for r in pts]
        backends = sorted({r["backend"] for r in pts})
        ax.plot(xs, ys, "o-", color=_COLORS.get(pattern), label=f"{pattern} "
                f"({'/'.join(backends)})")
        values += ys
    return _finish_latency(fig, ax, rows, values, "remaining parameters (%)", title, path)


def plot_layer(rows: list[dict], title: str, path: Path) -> Path:
    """Figs. 11 and 14: latency vs sparsity per pattern and backend, dense and ideal."""
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if ok(r) and r["pattern"] is not None and r["kind"] == "layer":
            lines[(r["pattern"], r["backend"])].append(r)
    values = []
    backends = sorted({b for _, b in lines if b != IDEAL})
    for (pattern, backend), pts in sorted(lines.items(), key=lambda kv: (
            pattern_key(kv[0][0]), kv[0][1] == IDEAL, kv[0][1])):
        pts = sorted(pts, key=lambda r: r["density"], reverse=True)
        xs = [100 * (1 - r["density"]) for r in pts]
        ys = [r["median_ms"] for r in pts]
        marker, style = ("o", ":") if backend == IDEAL else _look(backend, backends)
        label = "group-wise ideal (compacted GEMM)" if backend == IDEAL \
            else f"{pattern} · {backend}"
        ax.plot(xs, ys, marker=marker, linestyle=style, color=_COLORS.get(pattern),
                label=label, alpha=0.7 if backend == IDEAL else 1.0)
        values += ys
    return _finish_latency(fig, ax, rows, values, "sparsity (%)", title, path)


def step_table(rows: list[dict]) -> dict[float, dict[str, float]]:
    """Kept ratio → {step: median ms} from the step rows of one subject."""
    out: dict[float, dict[str, float]] = defaultdict(dict)
    for r in rows:
        if ok(r) and r["kind"] == "step":
            out[r["density"]][r["extra"].get("step", "?")] = r["median_ms"]
    return dict(sorted(out.items(), reverse=True))


def plot_steps(rows: list[dict], title: str, path: Path) -> Path:
    """Figs. 12–13: each step of group-wise as a stacked bar per kept ratio; the whole
    group-wise layer as a marker and dense as a line."""
    table = step_table(rows)
    fig, ax = plt.subplots(figsize=(8.4, 4.2))
    labels = [f"{100 * d:g}%" for d in table]
    bottom = [0.0] * len(table)
    steps = [s for s in STEP_ORDER if any(s in t for t in table.values())]
    for i, step in enumerate(steps):
        heights = [t.get(step, 0.0) for t in table.values()]
        ax.bar(labels, heights, bottom=bottom, label=f"s{i + 1} {step}")
        bottom = [b + h for b, h in zip(bottom, heights, strict=False)]
    whole = {r["density"]: r["median_ms"] for r in rows
             if ok(r) and r["kind"] == "layer" and r["pattern"] == "group"
             and r["backend"] not in (IDEAL, BASELINE)}
    if whole:
        ax.plot(labels, [whole.get(d, float("nan")) for d in table], "k^",
                label="whole group-wise layer")
    base = dense_ms(rows)
    if base is not None:
        ax.axhline(base, color="black", linestyle="--", label=f"dense ({base:.3g} ms)")
    ax.set_xlabel("kept ratio")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, ax, path)
