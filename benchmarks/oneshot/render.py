"""Table (markdown) and plot of the one-shot MiniLM study, from its JSON alone."""

from __future__ import annotations

import json
from pathlib import Path

ORDER = ("magnitude", "lamp", "taylor", "wanda", "sparsegpt", "sparsegpt-dense", "permutation",
         "learned", "learned + reconstruction")
PATTERN_ORDER = ("2:4", "element 0.5", "group 0.75", "group 0.5", "channel 0.75")
MARKERS = {"2:4": "s", "element 0.5": "o", "group 0.75": "^", "group 0.5": "^",
           "channel 0.75": "D"}


def load_rows(paths: list[Path]) -> tuple[list[dict], list[dict]]:
    rows, runs = {}, []
    for p in paths:
        data = json.loads(p.read_text())
        runs += [{**r, "file": str(p)} for r in data.get("runs", [])]
        for r in data["rows"]:
            rows[(r["pattern"], r["criterion"])] = {**r, "file": str(p)}
    def key(r):
        return (PATTERN_ORDER.index(r["pattern"]) if r["pattern"] in PATTERN_ORDER else 99,
                ORDER.index(r["criterion"]) if r["criterion"] in ORDER else 99)
    return sorted(rows.values(), key=key), runs


def table(rows: list[dict]) -> str:
    head = ("| pattern | criterion | cosine | NN@1 | NN@10 | prose cosine | prose NN@1 | "
            "prose NN@10 | Δ cosine | wall s | device |\n|---|---|---|---|---|---|---|---|---|"
            "---|---|\n")
    lines = []
    for r in rows:
        h, p = r["heldout"], r["prose"]
        dev = "cuda" if "h200" in r["file"] or "cuda" in r["file"] else "cpu"
        lines.append(f"| {r['pattern']} | {r['criterion']} | {h['cosine']:.3f} | "
                     f"{h['nn1_agreement']:.3f} | {h['nn10_overlap']:.3f} | {p['cosine']:.3f} | "
                     f"{p['nn1_agreement']:.3f} | {p['nn10_overlap']:.3f} | "
                     f"{p['cosine'] - h['cosine']:+.3f} | {r['wall_s']} | {dev} |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, crit in enumerate(c for c in ORDER if any(r["criterion"] == c for r in rows)):
        mine = [r for r in rows if r["criterion"] == crit]
        dx = (i - 3.5) * 0.006  # spread criteria sharing a kept fraction
        group = sorted((r for r in mine if r["pattern"].startswith("group")),
                       key=lambda r: r["kept"])
        if len(group) > 1:
            ax.plot([r["kept"] + dx for r in group], [r["heldout"]["cosine"] for r in group],
                    "-", color=f"C{i}", alpha=.6)
        for j, r in enumerate(mine):
            ax.scatter(r["kept"] + dx, r["heldout"]["cosine"], color=f"C{i}",
                       marker=MARKERS.get(r["pattern"], "x"), label=crit if j == 0 else None)
            ax.scatter(r["kept"] + dx, r["prose"]["cosine"], facecolors="none",
                       edgecolors=f"C{i}", marker=MARKERS.get(r["pattern"], "x"), alpha=.7)
    for pat, m in MARKERS.items():
        ax.scatter([], [], marker=m, color="gray", label=pat)
    ax.set(xlabel="kept fraction of the encoder's Linear weights",
           ylabel="cosine to dense embeddings (filled: docstrings, hollow: prose)",
           title="all-MiniLM-L6-v2, one-shot criteria per pattern (group joined by lines)")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(paths: list[Path], out: Path) -> None:
    rows, runs = load_rows(paths)
    out.mkdir(parents=True, exist_ok=True)
    envs = "\n".join(f"- `{Path(r['file']).name}`: criteria {', '.join(r['criteria'])}; "
                     f"device {r['env']['device']} ({r['env'].get('gpu') or r['env']['cpu']}), "
                     f"{r['env']['threads']} thread(s), load average {r['env']['loadavg']:.1f}, "
                     f"torch {r['env']['torch']}" for r in runs)
    text = ("# all-MiniLM-L6-v2: one-shot criteria per pattern\n\n"
            "Made by `benchmarks/oneshot/minilm.py` (`--render` regenerates this file and the "
            "plot from the JSON). Every encoder Linear pruned; cosine = mean cosine similarity "
            "to the dense sentence embeddings; NN@1 = nearest-neighbour agreement, NN@10 = "
            "top-10 overlap, on the 500 held-out docstring sentences and on 500 sentences of "
            "README/licence prose (`prose.jsonl`); Δ cosine = prose − docstrings. Calibration: "
            "training docstrings only. wall s = pruning time (learned: training + hardening).\n\n"
            + table(rows) + "\nRuns:\n" + envs + "\n\n![fidelity vs kept fraction](plot.png)\n")
    (out / "README.md").write_text(text)
    plot(rows, out / "plot.png")
    print(table(rows))
