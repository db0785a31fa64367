"""Write ``README.md`` for the results of ``bench_auto.py``: one table per dtype, every row
checked against the targets (auto ≤ 1.02× dense, ≤ 1.05× the best single backend).

    python benchmarks/auto/report.py benchmarks/results/h200/auto
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DENSE_TARGET, BEST_TARGET = 1.02, 1.05
NOTES = [
    "- *dense* is the unpruned original converted to the dtype; auto and dense are timed in "
    "alternation (3 rounds, median of the round medians), so their ratio is paired. The "
    "single backends are timed once each, right after conversion.",
    "- Rows where auto kept every layer dense still run 0.93–1.00× the original: the same "
    "kernels, but the weights hold zeros. The likely cause (not measured: no clock readings "
    "were taken) is data-dependent power — tensor cores fed with zeros draw less, and the "
    "clock stays higher; the gap grows as fewer weights are kept (BERT element: 0.985 / "
    "0.971 / 0.970 at 0.75 / 0.5 / 0.25 kept). No sparse kernel is involved in those rows.",
    "- fp32 rows: `groupwise_fused` computes fp32 in TF32 (the backend's stated default, "
    "checked against the float64 reference at 5e-3), while dense fp32 is IEEE (TF32 off in "
    "cuBLAS and cuDNN). The BERT/ViT group rows (0.27–0.44×) are therefore mostly TF32 against "
    "IEEE fp32, with the skipped columns on top; at fp16 the same models get 0.77–0.93×.",
    "- Candidates more than 3× slower than dense on one probe call are not timed further "
    "(`AutoTiming.abandon`); `spruce plan show` marks them with `*`.",
    "- 2:4 in fp32: no single backend (semi24 is fp16/bf16 only); auto considered csr and "
    "dense. CSR is timed as a single backend only on element rows (see bench_auto.py).",
    "- CNNs run at Tiny-ImageNet size (64², the paper's setting); ViT-B/16 at 224² (ImageNet); "
    "BERT-base at 128 tokens. VGG-16/ResNet-18 at 224² were not run this time.",
    "- Not measured: fp32 ViT-B block 32×32 at 0.75 and 0.25 kept (those rows were not run).",
    "- The first run (`auto-first-run.json`, BERT-base and ResNet-18 at ImageNet size, 50% "
    "kept, unpaired timings) is kept for reference.",
]


def choices(r: dict) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in sorted(r["auto_choices"].items()))


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | pattern | kept | dense ms | best single ms | auto ms | auto / dense | "
             "auto / best single | auto's choices |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        vd = r["auto_ms"] / r["dense_ms"]
        best = f"{r['best_single']} {r['best_single_ms']:.3f}" if r["best_single"] else \
            "none (" + ", ".join(f"{b} refused {r['dtype']}" if "does not support" in e
                                 else f"{b} failed" for b, e in r["errors"].items()) + ")" \
            if r["errors"] else "none"
        vb = r["auto_ms"] / r["best_single_ms"] if r["best_single_ms"] else None
        pattern = "block 32×32" if r["pattern"] == "block" else r["pattern"]
        lines.append(f"| {r['model']} | {pattern} | {r['kept']} | {r['dense_ms']:.3f} | {best} "
                     f"| {r['auto_ms']:.3f} | {mark(vd, DENSE_TARGET)} | "
                     f"{mark(vb, BEST_TARGET) if vb else '-'} | {choices(r)} |")
    return lines


def mark(v: float, target: float) -> str:
    return f"{v:.3f}" if v <= target else f"**{v:.3f}** (> {target})"


def summary(rows: list[dict]) -> list[str]:
    vd = [r["auto_ms"] / r["dense_ms"] for r in rows]
    vb = [r["auto_ms"] / r["best_single_ms"] for r in rows if r["best_single_ms"]]
    dense_ok = sum(v <= DENSE_TARGET for v in vd)
    best_ok = sum(v <= BEST_TARGET for v in vb)
    return [f"- auto ≤ {DENSE_TARGET}× dense on **{dense_ok} of {len(vd)}** rows "
            f"(worst {max(vd):.3f}×, best {min(vd):.3f}×);",
            f"- auto ≤ {BEST_TARGET}× the best single backend on **{best_ok} of {len(vb)}** rows "
            f"that have one (worst {max(vb):.3f}×);",
            f"- auto's conversion (per-layer timing + whole-model check) took "
            f"{min(r['auto_convert_s'] for r in rows):.1f}–"
            f"{max(r['auto_convert_s'] for r in rows):.1f} s per model; "
            f"{sum(r['auto_probed'] for r in rows)} candidates were dropped after one probe "
            "call (≥ 3× dense), "
            f"{sum(r['auto_reverted'] for r in rows)} layers reverted by the whole-model check."]


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/h200/auto")
    md = ["# backend=\"auto\" against dense and the best single backend", ""]
    for dtype in ("fp16", "fp32"):
        src = folder / f"auto-{dtype}.json"
        if not src.exists():
            continue
        res = json.loads(src.read_text())
        models = list(dict.fromkeys(r["model"] for r in res["rows"]))
        order = ["element", "2:4", "block", "group"]
        rows = sorted(res["rows"], key=lambda r: (models.index(r["model"]),
                                                  order.index(r["pattern"]), -r["kept"]))
        md += [f"## {dtype}, batch {rows[0]['batch']} — {res['device']}, torch {res['torch']}",
               "", f"`PYTHONPATH=src python3 benchmarks/auto/bench_auto.py --device cuda "
               f"--dtype {dtype} --models ...` (the rows of several runs, one model list "
               f"each, merged in `{src.name}`).", "", *summary(rows), "",
               *table(rows), ""]
    md += ["## Reading the tables", "", *NOTES, ""]
    (folder / "README.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
