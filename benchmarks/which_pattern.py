"""The README's "which pattern should I use?" plot, drawn from committed results only.

Latency of the pruned model over the fastest dense path of the same run (eager, CUDA graph
or compiled), against the fraction of weights kept:

- group pattern, ``spruce.compact`` + ``convert(..., "auto", compile=True)``:
  ``benchmarks/results/h100/compiled/results.json``;
- coupled channels / heads, compacted, compiled + CUDA graph (fastest against fastest):
  ``benchmarks/results/h100/structure/results.json``;
- CPU rows of ``spruce bench model`` with ``--compile --compact`` where committed.

    python benchmarks/which_pattern.py            # writes docs/which-pattern.png
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def group_points() -> dict[str, list[tuple[float, float]]]:
    d = json.loads((RESULTS / "h100" / "compiled" / "results.json").read_text())
    out: dict[str, list[tuple[float, float]]] = {}
    for r in d["rows"]:
        best = d["models"].get(r["model"], {}).get("best_dense_ms")
        if "ms" in r and best and not r.get("degenerate"):
            out.setdefault(r["model"], []).append((r["kept"], r["ms"] / best))
    return {m: sorted(p) for m, p in out.items()}


def coupled_points() -> dict[str, tuple[float, float]]:
    d = json.loads((RESULTS / "h100" / "structure" / "results.json").read_text())
    out = {}
    for run in d["runs"]:
        for r in run["rows"]:
            fastest = min(v for k, v in r.items() if k.startswith("dense_") and k.endswith("_ms")
                          and isinstance(v, (int, float)))
            mine = min(v for k, v in r.items() if k.startswith("compacted_")
                       and k.endswith("_ms") and isinstance(v, (int, float)))
            out[f"{r['model']} ({r['variant']})"] = (r["density"], mine / fastest)
    return out


def main() -> None:
    groups, coupled = group_points(), coupled_points()
    fig, ax = plt.subplots(figsize=(7.5, 5.6))
    for model, pts in groups.items():
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{model}: group, compact+auto")
    for i, (label, (x, y)) in enumerate(sorted(coupled.items(), key=lambda kv: kv[1][1])):
        ax.scatter([x], [y], marker="s", s=30, color="black",
                   label="coupled channels / heads (scope='coupled'), compacted" if i == 0
                   else None)
        ax.annotate(label, (x, y), xytext=(8, 9 * (i % 2) - 4), textcoords="offset points",
                    fontsize=7)
    ax.axhline(1.0, color="black", lw=1, ls="--")
    ax.text(0.99, 1.01, "best dense (eager, graph or compiled)", ha="right", va="bottom",
            fontsize=8, transform=ax.get_yaxis_transform())
    ax.set_xlabel("fraction of weights kept")
    ax.set_ylabel("latency / best dense")
    ax.set_title("H100, fp16, batch 64, compiled + CUDA graph")
    ax.invert_xaxis()
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2,
              frameon=False)
    fig.tight_layout()
    out = ROOT / "docs" / "which-pattern.png"
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    for model, pts in groups.items():
        print(model, "group", " ".join(f"{k:g}:{v:.2f}" for k, v in pts))
    for label, (x, y) in coupled.items():
        print(label, f"{x:g}:{y:.2f}")


if __name__ == "__main__":
    main()
