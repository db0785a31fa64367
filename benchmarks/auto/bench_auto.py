"""backend="auto" against dense and against the best single backend, whole models.

For each model × pattern × kept ratio: time dense, every single backend made for the
pattern, and auto (its own per-layer timing, then its whole-model check). Dense and auto
are timed in alternation (``--rounds`` rounds, median of the round medians) so the
auto/dense ratio is a paired measurement. Rows are appended to ``$OUT/auto-<dtype>.json``
as they are measured; a table is printed last.

Single backends per pattern: element → csr (its only one); 2:4 → semi24; block 32×32 →
bsr; group → groupwise, groupwise_fused. CSR serves every pattern, but in the first run
(``benchmarks/results/h200/auto/auto-first-run.json``) it was 4–30× slower than the
pattern's own backend on every 2:4/block/group row, so it is timed on element rows only
(auto still considers it for every layer).

    PYTHONPATH=src python3 benchmarks/auto/bench_auto.py --device cuda --dtype fp16 \\
        --models bert_base/qqp vit/imagenet
    PYTHONPATH=src python3 benchmarks/auto/bench_auto.py --device cpu --quick   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time

import torch

import spruce
from spruce.auto import AutoTiming
from spruce.bench import make_inputs, time_fn
from spruce.view import prunable_layers, view_shape

MODELS = ["bert_base/qqp", "vit/imagenet", "resnet18/tiny-imagenet", "vgg16/tiny-imagenet"]
PATTERNS = {"element": ({}, [0.75, 0.5, 0.25], ["csr"]),
            "2:4": ({}, [0.5], ["semi24"]),
            "block": ({"block": (32, 32)}, [0.75, 0.5, 0.25], ["bsr"]),
            "group": ({}, [0.75, 0.5, 0.25], ["groupwise", "groupwise_fused"])}
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
ERRORS = (ValueError, RuntimeError, NotImplementedError)


def model_ms(model, inputs: list, device, runs: int = 10) -> float:
    """Median ms of ``model`` on ``inputs`` (random batches made once per model)."""
    call = (lambda v: model(**v)) if isinstance(inputs[0], dict) else model
    return time_fn(call, inputs, device=device, warmup=2, min_runs=runs, min_time_s=0.1,
                   max_time_s=2.0).median_ms


def paired_ms(dense, fast, inputs, device, rounds: int) -> tuple[float, float]:
    """Median over ``rounds`` of (dense, auto) medians taken one after the other."""
    d, a = [], []
    for _ in range(rounds):
        d.append(model_ms(dense, inputs, device))
        a.append(model_ms(fast, inputs, device))
    return statistics.median(d), statistics.median(a)


def run_row(base, x, inputs, dense, name, pattern, kept, args, dev, dt, timing) -> dict:
    kw, _, singles = PATTERNS[pattern]
    small = [n for n, m in prunable_layers(base)[0].items() if min(view_shape(m)) < 32]
    pruned = copy.deepcopy(base)
    spruce.prune(pruned, pattern, None if pattern == "2:4" else kept,
                 exclude=small if kw else (), **kw)
    row = {"model": name, "batch": args.batch, "dtype": args.dtype, "pattern": pattern,
           "kept": kept, "single_ms": {}, "errors": {}}
    t0 = time.perf_counter()
    for b in singles:
        try:
            fast = spruce.convert(pruned, b, dtype=dt, example_input=x)
            row["single_ms"][b] = model_ms(fast, inputs, dev)
        except ERRORS as e:
            row["errors"][b] = f"{type(e).__name__}: {str(e)[:160]}"
        finally:
            fast = None
            torch.cuda.empty_cache() if dev.type == "cuda" else None
    row["singles_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = spruce.convert(pruned, "auto", dtype=dt, example_input=x, timing=timing)
    row["auto_convert_s"] = time.perf_counter() - t0
    row["dense_ms"], row["auto_ms"] = paired_ms(dense, fast, inputs, dev, args.rounds)
    plan = fast.spruce_plan
    row["auto_choices"] = {}
    for c in plan.layers.values():
        row["auto_choices"][c.choice] = row["auto_choices"].get(c.choice, 0) + 1
    row["auto_reverted"] = sum(c.reverted for c in plan.layers.values())
    row["auto_probed"] = sum(len(c.probed) for c in plan.layers.values())
    row["plan_model_ms"] = plan.model_ms
    best = min(row["single_ms"].items(), key=lambda kv: kv[1], default=(None, None))
    row["best_single"], row["best_single_ms"] = best
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | pattern | kept | dense ms | best single | auto ms | auto/dense | "
             "auto/best | auto's choices |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        best = f"{r['best_single']} {r['best_single_ms']:.3f}" if r["best_single"] else "-"
        vs_best = f"{r['auto_ms'] / r['best_single_ms']:.3f}×" if r["best_single_ms"] else "-"
        choices = ", ".join(f"{k} ×{v}" for k, v in sorted(r["auto_choices"].items()))
        lines.append(f"| {r['model']} | {r['pattern']} | {r['kept']} | {r['dense_ms']:.3f} | "
                     f"{best} | {r['auto_ms']:.3f} | {r['auto_ms'] / r['dense_ms']:.3f}× | "
                     f"{vs_best} | {choices} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    ap.add_argument("--models", nargs="+", default=MODELS, help="NAME/DATASET ...")
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS))
    ap.add_argument("--kept", nargs="+", type=float, default=None, help="subset of kept ratios")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="CPU smoke test: one small model")
    args = ap.parse_args()
    if args.quick:
        args.models, args.batch, args.rounds = ["resnet18/cifar10"], 2, 1
    dev, dt = torch.device(args.device), DTYPES[args.dtype]
    os.makedirs(os.environ.get("OUT", "."), exist_ok=True)
    out = os.path.join(os.environ.get("OUT", "."), f"auto-{args.dtype}.json")
    rows: list[dict] = json.load(open(out))["rows"] if os.path.exists(out) else []
    timing = AutoTiming(warmup=1, min_runs=5, min_time_s=0.01, max_time_s=0.05, abandon=3.0)
    for spec in args.models:
        name, ds = spec.split("/")
        base = spruce.zoo.build(name, ds, seed=0).eval().to(dev)
        x = spruce.zoo.example_input(name, ds, batch=args.batch)
        x = {k: v.to(dev) for k, v in x.items()} if isinstance(x, dict) else x.to(dev, dt)
        dense = spruce.convert(base, "dense", dtype=dt, verify=False)
        inputs = make_inputs(x, n=2, device=dev)
        for pattern in args.patterns:
            for kept in PATTERNS[pattern][1]:
                if args.kept and kept not in args.kept:
                    continue
                row = run_row(base, x, inputs, dense, spec, pattern, kept, args, dev, dt,
                              timing)
                rows.append(row)
                with open(out, "w") as f:
                    json.dump({"device": spruce.bench.device_name(dev),
                               "torch": torch.__version__, "rows": rows}, f, indent=1)
                print(json.dumps({k: row[k] for k in ("model", "pattern", "kept", "dense_ms",
                                                      "auto_ms", "best_single",
                                                      "best_single_ms", "auto_convert_s")}),
                      flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
