"""backend="auto" against dense and against the best single backend, whole models.

For each model (batch 64 unless --quick) × pattern (element, 2:4, block 32×32, group) at
50% kept: time dense, every single backend that serves the pattern, and auto (its own
per-layer timing + whole-model check). Rows go to $OUT/auto.json as they are measured;
a table is printed last.

    PYTHONPATH=src python3 benchmarks/auto/bench_auto.py --device cuda --dtype fp16
    PYTHONPATH=src python3 benchmarks/auto/bench_auto.py --device cpu --quick   # smoke test
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

import spruce
from spruce.auto import AutoTiming
from spruce.bench import make_inputs, time_fn
from spruce.view import prunable_layers, view_shape

FULL = [("bert_base", "qqp", 64), ("resnet18", "imagenet", 64), ("vit", "imagenet", 64),
        ("vgg16", "imagenet", 64)]
QUICK = [("resnet18", "cifar10", 2)]
PATTERNS = {"element": ({}, 0.5, ["csr"]), "2:4": ({}, None, ["semi24", "csr"]),
            "block": ({"block": (32, 32)}, 0.5, ["bsr", "csr"]),
            "group": ({}, 0.5, ["groupwise", "groupwise_fused", "csr"])}
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def model_ms(model, x, device) -> float:
    inputs = make_inputs(x, n=2, device=device)
    call = (lambda v: model(**v)) if isinstance(x, dict) else model
    return time_fn(call, inputs, device=device, warmup=2, min_runs=10, min_time_s=0.1,
                   max_time_s=2.0).median_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    dev, dt = torch.device(args.device), DTYPES[args.dtype]
    out = os.path.join(os.environ.get("OUT", "."), "auto.json")
    rows: list[dict] = []
    timing = AutoTiming(warmup=1, min_runs=5, min_time_s=0.01, max_time_s=0.05)
    for name, ds, batch in QUICK if args.quick else FULL:
        base = spruce.zoo.build(name, ds, seed=0).eval().to(dev)
        x = spruce.zoo.example_input(name, ds, batch=batch)
        x = {k: v.to(dev) for k, v in x.items()} if isinstance(x, dict) else x.to(dev, dt)
        dense_ms = model_ms(spruce.convert(base, "dense", dtype=dt, verify=False), x, dev)
        for pattern, (kw, density, singles) in PATTERNS.items():
            small = [n for n, m in prunable_layers(base)[0].items()
                     if min(view_shape(m)) < 32]  # block 32×32 does not fit these
            pruned = copy.deepcopy(base)
            spruce.prune(pruned, pattern, density, exclude=small if kw else (), **kw)
            row = {"model": f"{name}/{ds}", "batch": batch, "dtype": args.dtype,
                   "pattern": pattern, "kept": density or 0.5, "dense_ms": dense_ms,
                   "single_ms": {}, "errors": {}}
            for b in singles:
                try:
                    fast = spruce.convert(pruned, b, dtype=dt, example_input=x)
                    row["single_ms"][b] = model_ms(fast, x, dev)
                except (ValueError, RuntimeError, NotImplementedError) as e:
                    row["errors"][b] = f"{type(e).__name__}: {str(e)[:160]}"
            t0 = time.perf_counter()
            fast = spruce.convert(pruned, "auto", dtype=dt, example_input=x, timing=timing)
            row["auto_convert_s"] = time.perf_counter() - t0
            row["auto_ms"] = model_ms(fast, x, dev)
            row["auto_choices"] = {}
            for c in fast.spruce_plan.layers.values():
                row["auto_choices"][c.choice] = row["auto_choices"].get(c.choice, 0) + 1
            row["auto_reverted"] = sum(c.reverted for c in fast.spruce_plan.layers.values())
            best = min(row["single_ms"].items(), key=lambda kv: kv[1], default=(None, None))
            row["best_single"], row["best_single_ms"] = best
            rows.append(row)
            with open(out, "w") as f:
                json.dump({"device": spruce.bench.device_name(dev), "torch": torch.__version__,
                           "rows": rows}, f, indent=1)
            print(json.dumps({k: row[k] for k in ("model", "pattern", "dense_ms", "auto_ms",
                                                  "best_single", "best_single_ms")}),
                  flush=True)
    print("| model | pattern | dense ms | best single | auto ms | auto/dense | auto/best |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        best = f"{r['best_single']} {r['best_single_ms']:.3f}" if r["best_single"] else "-"
        vs_best = r["auto_ms"] / r["best_single_ms"] if r["best_single_ms"] else float("nan")
        print(f"| {r['model']} | {r['pattern']} | {r['dense_ms']:.3f} | {best} | "
              f"{r['auto_ms']:.3f} | {r['auto_ms'] / r['dense_ms']:.2f}× | {vs_best:.2f}× |")


if __name__ == "__main__":
    main()
