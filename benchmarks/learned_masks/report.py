"""Write ``results.md`` from the JSON of ``minilm.py`` (and ``cnn.py`` when present).

    PYTHONPATH=src:. python benchmarks/learned_masks/report.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path("benchmarks/results/learned-masks")


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
    return ("PYTHONPATH=src:. python benchmarks/learned_masks/minilm.py "
            f"--steps {a['steps']} --eval-every {a['eval_every']}"
            + ("" if a["skip_baselines"] else f" --perm-iters {a['perm_iters']}")
            + (" --hard" if a["hard"] else "")
            + (f" --tau-schedule exp --tau-end {a['tau_end']}"
               if a["tau_schedule"] != "constant" else "")
            + f" --lr {a['lr']} --tau {a['tau']}"
            + (" --skip-baselines" if a["skip_baselines"] else ""))


def main() -> None:
    src = OUT / "minilm.json"
    if not src.exists():
        sys.exit(f"{src} missing: run benchmarks/learned_masks/minilm.py first")
    res = json.loads(src.read_text())
    a = res["args"]
    rows, cmds, curves = list(res["rows"]), [command(a)], ["minilm-curve.png"]
    extra = OUT / "minilm-learned-only.json"
    if extra.exists():
        more = json.loads(extra.read_text())
        rows += [r for r in more["rows"] if r["method"].startswith("learned")]
        cmds.append(command(more["args"]))
        curves.append("minilm-learned-only-curve.png")
    cmd = "`, then `".join(cmds)
    md = ["# Learned 2:4 masks vs magnitude and channel-permutation 2:4", "",
          "## all-MiniLM-L6-v2 (pretrained, offline), every encoder Linear 2:4, weights frozen",
          "", f"Command: `{cmd}`", "",
          f"Corpus: `benchmarks/learned_masks/corpus.jsonl` — {res['train_sentences']} train / "
          f"{res['heldout_sentences']} held-out sentences from the Python {res['env']['python']}"
          " standard library's docstrings (`make_corpus.py`). Seq len ≤ "
          f"{a['max_len']}, batch {a['batch']}, AdamW lr {a['lr']} ({a['lr_schedule']}) on the "
          f"logits only. CPU, torch {res['env']['torch']}, {a['threads']} threads (shared "
          "machine: wall times are indicative).", "",
          *table(rows), "", *verdict(rows), "",
          "Fidelity is measured on the held-out sentences: cosine between the pruned and the "
          "dense mean-pooled embeddings; NN@1 = the pruned model retrieves the same nearest "
          "held-out neighbour as the dense one; NN@10 = overlap of the 10-NN sets. "
          "`kept Σ|w|` = fraction of the encoder's absolute weight mass the masks keep.", "",
          "Permutation rows: the FFN-out Linear is the only one whose inputs come from a "
          "private producer (intermediate.dense → GELU), so only it can be permuted at no "
          "cost (its producer's rows and bias permuted to match; function unchanged); q/k/v, "
          "attention-output and FFN-in read the LayerNorm'd residual stream shared by several "
          "consumers and stay magnitude 2:4 in that row. The second permutation row permutes "
          "every Linear and gathers its input on the fly (`x[..., perm]`, same function, one "
          "gather per call). Search: bounded stochastic channel-swap local search on the "
          "efficacy (Σ|w| kept), `--perm-iters` iterations of 2048 candidate swaps per layer.",
          "", *[f"![curve]({c})" for c in curves], ""]
    (OUT / "results.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
