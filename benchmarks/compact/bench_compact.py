"""Whole-model group-wise at 0.5 kept, with and without producer-side compaction (fp16).

BERT-base (QQP, 128 tokens) and ResNet-18 (ImageNet 224²), batch 64. Per case the pruned
model (group 0.5; for ResNet-18 also ``unit="channel"``, whose conv groups are whole input
channels) is converted with ``groupwise`` and ``auto``, before and after ``spruce.compact``
(BatchNorms folded), eager and as a CUDA graph; ResNet-18 also in channels-last. Medians
from ``spruce.bench.time_fn``; every ratio is against dense (same memory format, same
graph mode) measured in the same run; every converted output is checked against the
pruned fp32 model. Writes $OUT/compact.json and prints a table. Run from the repo root
with PYTHONPATH=src.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import torch

import spruce
from spruce.bench import make_inputs, time_fn

# (model, dataset, batch, pattern kwargs, channels-last too)
CASES = [("bert_base", "qqp", 64, {}, False),
         ("resnet18", "imagenet", 64, {}, True),
         ("resnet18", "imagenet", 64, {"unit": "channel"}, True)]
VARIANTS = [("groupwise", False), ("auto", False), ("groupwise", True), ("auto", True)]


def timed(model, example, graph: bool, cl: bool) -> float:
    fmt = torch.channels_last if cl else torch.contiguous_format
    inputs = make_inputs(example, n=2, dtype=torch.float16, device=DEVICE)
    if not isinstance(example, dict):
        inputs = [x.contiguous(memory_format=fmt) for x in inputs]
    example = example if isinstance(example, dict) else inputs[0]
    if graph:
        model = spruce.graphs.CudaGraphModule(model, example)
    call = (lambda x: model(**x)) if isinstance(example, dict) else model
    return time_fn(call, inputs, device=DEVICE, warmup=3, min_runs=20, min_time_s=0.2).median_ms


def backends_used(model) -> dict[str, int]:
    """How many layers run on each backend (layout in brackets); plain layers are dense."""
    used = Counter()
    for mod in model.modules():
        c = mod.config() if callable(getattr(mod, "config", None)) else None
        if isinstance(c, dict) and "backend" in c:
            used[c["backend"] + (f"[{c['layout']}]" if "layout" in c else "")] += 1
        elif isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            used["dense"] += 1
    return dict(used)


def max_err(ref, fast, x) -> float:
    with torch.no_grad():
        out = fast(**x) if isinstance(x, dict) else fast(x.half())
        want = ref(**x) if isinstance(x, dict) else ref(x.float())
    out = getattr(out, "logits", out).float()
    want = getattr(want, "logits", want).float()
    return float((out - want).abs().max() / want.abs().max())


def convert(model, backend: str, x, cl: bool):
    m = model.to(memory_format=torch.channels_last) if cl else model
    xe = x if isinstance(x, dict) else \
        x.half().contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    return spruce.convert(m, backend, dtype=torch.float16, example_input=xe)


def case_rows(name, ds, batch, kwargs, with_cl):
    label = f"{name}/{ds}"
    pat = "group" + (f" ({kwargs['unit']})" if kwargs else "")
    model = spruce.zoo.build(name, ds, seed=0).eval().to(DEVICE)
    x = spruce.zoo.example_input(name, ds, batch=batch)
    x = {k: v.to(DEVICE) for k, v in x.items()} if isinstance(x, dict) else x.to(DEVICE)
    spruce.prune(model, "group", 0.5, exclude=["classifier", "fc"], **kwargs)
    small = spruce.compact(model, x, fold_bn=True)
    rep = small.spruce_compaction
    print(f"{label} {pat}: compacted {len(rep.compacted)} of {len(rep.rows)} coupled groups, "
          f"params {rep.params_before} -> {rep.params_after}", flush=True)
    rows = []
    for cl in (False, True) if with_cl else (False,):
        dense = convert(model, "dense", x, cl)
        fast = {}
        for backend, compacted in VARIANTS:
            t0 = time.perf_counter()
            m = convert(small if compacted else model, backend, x, cl)
            fast[("compact+" if compacted else "") + backend] = (m, time.perf_counter() - t0)
        for graph in (False, True) if DEVICE == "cuda" else (False,):
            d = timed(dense, x, graph, cl)
            for v, (m, conv_s) in fast.items():
                ms = timed(m, x, graph, cl)
                rows.append({"model": label, "pattern": pat, "batch": batch, "variant": v,
                             "channels_last": cl, "cuda_graph": graph, "dense_ms": d, "ms": ms,
                             "ratio": ms / d, "convert_s": conv_s,
                             "max_rel_err": max_err(model, m, x),
                             "backends": backends_used(m)})
                print({k: v for k, v in rows[-1].items() if k != "backends"}, flush=True)
    return rows, rep.to_dict()


DEVICE = "cuda"


def main() -> None:
    global DEVICE
    import spruce.graphs  # noqa: F401

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a dry run)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--cases", default="0,1,2", help="indices into CASES, comma-separated")
    args = ap.parse_args()
    DEVICE = args.device
    rows, reports = [], {}
    for i in (int(c) for c in args.cases.split(",")):
        name, ds, _, kwargs, cl = CASES[i]
        r, rep = case_rows(name, ds, args.batch, kwargs, cl)
        rows += r
        reports[f"{name}/{ds} {kwargs or ''}"] = rep
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "compact.json"), "w") as f:
        device = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
        json.dump({"device": device, "torch": torch.__version__, "rows": rows,
                   "compaction": reports}, f, indent=1)
    print("| model | pattern | variant | CL | graph | dense ms | ms | ratio | err |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['pattern']} | {r['variant']} | {r['channels_last']} | "
              f"{r['cuda_graph']} | {r['dense_ms']:.3f} | {r['ms']:.3f} | {r['ratio']:.2f}× | "
              f"{r['max_rel_err']:.1e} |")


if __name__ == "__main__":
    main()
