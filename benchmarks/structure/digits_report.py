"""The digits coupled-pruning benchmark's results: the summary over seeds (mean ± sd,
whether the compacted model stays within a point of dense), the machine it ran on, and the
``README.md`` rendered from ``results.json``."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch

import spruce

TARGET_DROP = 1.0  # points of top-1: "within 1% of dense"


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    drop = [r["top1"]["dense"] - r["top1"]["compacted"] for r in runs]
    out = {k: mean_sd([r["top1"][k] for r in runs])
           for k in ("dense", "pruned", "finetuned", "compacted")}
    out["drop"] = mean_sd(drop)
    out["max_abs_logit_diff"] = max(r["max_abs_logit_diff"] for r in runs)
    out["within_target_every_seed"] = all(x <= TARGET_DROP for x in drop)
    out["within_target_mean"] = out["drop"][0] <= TARGET_DROP
    return out


def environment() -> dict[str, Any]:
    import numpy

    try:
        import sklearn
        sk = sklearn.__version__
    except ImportError:
        sk = None
    return {"torch": torch.__version__, "spruce": spruce.__version__, "numpy": numpy.__version__,
            "scikit-learn": sk, "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count()}


def rec_threads(res: dict[str, Any]) -> str:
    run = res.get("run", {})
    return f"{run.get('threads', '?')} thread(s) per seed, {run.get('jobs', 1)} seed(s) at a time"


def _pm(ms: list[float] | tuple[float, float], digits: int = 2) -> str:
    return f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def _seed_table(res: dict[str, Any]) -> list[str]:
    s = res["summary"]
    rows = ["| seed | dense | pruned (no fine-tune) | fine-tuned (masked) | compacted | "
            "drop vs dense (pts) | max abs logit diff | same argmax |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {r['seed']} | {r['top1']['dense']:.2f} | {r['top1']['pruned']:.2f} | "
             f"{r['top1']['finetuned']:.2f} | {r['top1']['compacted']:.2f} | "
             f"{r['top1']['dense'] - r['top1']['compacted']:+.2f} | "
             f"{r['max_abs_logit_diff']:.1e} | {r['same_predictions']}/{r['test_images']} |"
             for r in res["runs"]]
    rows.append(f"| mean ± sd | {_pm(s['dense'])} | {_pm(s['pruned'])} | "
                f"{_pm(s['finetuned'])} | {_pm(s['compacted'])} | {_pm(s['drop'])} | "
                f"{s['max_abs_logit_diff']:.1e} (max) | |")
    return rows


def _sizes(r0: dict[str, Any]) -> list[str]:
    p, m = r0["params"], r0["macs"]
    return ["| | dense | compacted | ratio |", "|---|---:|---:|---:|",
            f"| parameters | {p['dense']:,} | {p['compacted']:,} | "
            f"{p['compacted'] / p['dense']:.3f} |",
            f"| multiply-adds per image (conv + linear) | {m['dense']:,} | {m['compacted']:,} | "
            f"{m['compacted'] / m['dense']:.3f} |"]


def _protocol(rec: dict[str, Any]) -> str:
    return (
        f"Per seed: dense training from scratch for {rec['epochs']} epochs (SGD, Nesterov "
        f"momentum {rec['momentum']}, weight decay {rec['weight_decay']}, batch "
        f"{rec['batch']}, LR {rec['lr']} with a per-step cosine to 0, no augmentation); "
        f"`spruce.prune(pattern='channel', density={rec['density']}, scope='coupled', "
        f"criterion='magnitude')`; fine-tune with the masks for {rec['finetune_epochs']} "
        f"epochs, same recipe at LR {rec['finetune_lr']}; `spruce.compact` then "
        f"`spruce.bake` (drops the all-ones mask parametrizations left on the compacted "
        f"layers). \"pruned\" is the masked model before any fine-tune (BatchNorm running "
        f"statistics still the dense ones). The split is spruce's fixed one, whatever the "
        f"seed; the seed sets the initialisation and the data order.")


def render(res: dict[str, Any]) -> str:
    """The README: what ran, one row per seed, mean ± sd, the verdict, sizes, notes."""
    s, r0, env = res["summary"], res["runs"][0], res["environment"]
    verdict = "yes" if s["within_target_every_seed"] else \
        "on the mean only" if s["within_target_mean"] else "no"
    secs = {k: statistics.fmean(r["seconds"][k] for r in res["runs"]) for k in r0["seconds"]}
    notes = [f"- {n}" for n in res.get("notes", [])]
    return "\n".join([
        "# Coupled channel pruning on digits: ResNet-18 at 50% width", "",
        f"Made by `{res['command']}` on {res['date']} (torch {env['torch']}, spruce "
        f"{env['spruce']}, {env['machine']}, {env['cpus']} CPUs, {rec_threads(res)}).", "",
        f"Model: {res['model']}. Data: {res['data']}. Top-1 in % on the held-out split "
        f"({r0['test_images']} images: one image is {100 / r0['test_images']:.2f} points).", "",
        *_seed_table(res), "",
        f"**Within {TARGET_DROP:g} point of dense top-1 (compacted vs dense): {verdict}.** "
        f"Compacted logits vs the masked model's over the whole held-out split: largest "
        f"absolute difference {s['max_abs_logit_diff']:.1e}.", "",
        *_sizes(r0), "",
        "FLOPs = 2 × multiply-adds. Counts are the same for every seed (the widths are).", "",
        "## Protocol", "", _protocol(res["recipe"]), "",
        f"Mean seconds per phase ({rec_threads(res)}, shared machine: a rough cost, not a "
        "benchmark): " + ", ".join(f"{k} {v:.0f}" for k, v in secs.items()) + ".", "",
        *(["## Notes", "", *notes, ""] if notes else []),
        f"## Groups (seed {r0['seed']})", "",
        "| group | kind | units | kept | kept whole because |", "|---|---|---:|---:|---|",
        *[f"| {g['group']} | {g['kind']} | {g['units']} | {g['kept']} | {g['reason'] or ''} |"
          for g in r0["groups"]], "",
    ])
