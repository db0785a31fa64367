"""Whole-model group-wise at 0.5 kept, with and without producer-side compaction (fp16).

For BERT-base (QQP, 128 tokens) and ResNet-18 (ImageNet 224²), batch 64: dense; pruned
(group 0.5) converted with ``groupwise``; compacted then converted; each eager and as a
CUDA graph. Medians from ``spruce.bench.time_fn``; ratios against dense in the same run.
Writes $OUT/compact.json and prints a table. Run from the repo root with PYTHONPATH=src.
"""

from __future__ import annotations

import json
import os

import torch

import spruce
from spruce.bench import make_inputs, time_fn

CASES = [("bert_base", "qqp", 64), ("resnet18", "imagenet", 64)]


def timed(model, example, graph: bool) -> float:
    if graph:
        model = spruce.graphs.CudaGraphModule(model, example)
    inputs = make_inputs(example, n=2, dtype=torch.float16, device="cuda")
    call = (lambda x: model(**x)) if isinstance(example, dict) else model
    return time_fn(call, inputs, device="cuda", warmup=3, min_runs=20, min_time_s=0.2).median_ms


def main() -> None:
    import spruce.graphs  # noqa: F401

    rows = []
    for name, ds, batch in CASES:
        model = spruce.zoo.build(name, ds, seed=0).eval().cuda()
        x = spruce.zoo.example_input(name, ds, batch=batch)
        x = {k: v.cuda() for k, v in x.items()} if isinstance(x, dict) else x.cuda().half()
        dense = spruce.convert(model, "dense", dtype=torch.float16, verify=False)
        spruce.prune(model, "group", 0.5, exclude=["classifier", "fc"])
        small = spruce.compact(model, x if isinstance(x, dict) else x.float())
        variants = {
            "groupwise": spruce.convert(model, "groupwise", dtype=torch.float16, example_input=x),
            "compact+groupwise": spruce.convert(small, "groupwise", dtype=torch.float16,
                                                example_input=x),
        }
        for graph in (False, True):
            d = timed(dense, x, graph)
            for v, m in variants.items():
                ms = timed(m, x, graph)
                rows.append({"model": f"{name}/{ds}", "batch": batch, "variant": v,
                             "cuda_graph": graph, "dense_ms": d, "ms": ms, "ratio": ms / d})
                print(rows[-1], flush=True)
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "compact.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "rows": rows}, f, indent=1)
    print("| model | variant | cuda graph | dense ms | ms | ratio |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['cuda_graph']} | {r['dense_ms']:.3f} | "
              f"{r['ms']:.3f} | {r['ratio']:.2f}× |")


if __name__ == "__main__":
    main()
