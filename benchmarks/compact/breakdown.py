"""Where a whole model's time goes: GPU kernel time by class, dense vs group-pruned (fp16).

For each case of ``bench_compact.CASES`` (default: BERT-base and ResNet-18 with
``unit="channel"``, group 0.5, batch 64) the script profiles ``--runs`` eager forwards of

- ``dense`` (the pruned weights, dense kernels) and, for CNNs, ``dense+fold`` (every
  BatchNorm folded into its conv by ``torch.fx.experimental.optimization.fuse``: the fair
  dense baseline for a compacted model whose BatchNorms were folded);
- ``groupwise``, ``compact+groupwise`` and ``compact+auto``,

sums the CUDA kernel time per forward in each class (GEMM, conv, gather, attention, norm,
elementwise, layout/copy, other) and derives three floors:

- ``free gather``: compact+groupwise with its gather kernels removed — what any gather
  implementation (fused or not) could reach at best with these layers;
- ``Amdahl``: dense with its GEMM+conv time scaled by the pruned model's kept FLOP fraction
  and nothing else changed;
- ``free gather + FLOP-proportional GEMM/conv``: both at once, on the compacted model (its
  smaller BatchNorms, activations included) — GEMMs and convs as efficient as dense ones.

Sums of kernel times leave out launch gaps, so they are compared with the CUDA-graph wall
time measured in the same run (``graph ms``). Writes $OUT/breakdown.json (the 16 costliest
kernels of every variant included) and prints a table; ``--render FILE`` prints the table
of a saved run again, its floors recomputed. Run from this folder with PYTHONPATH=<repo>/src
(``--device cpu`` is a dry run on CPU op times).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

import bench_compact as bc
import spruce
import spruce.graphs  # noqa: F401  (bench_compact.timed wraps models in CUDA graphs)

# (class, name fragments), first match wins; lower-case kernel (CUDA) or op (CPU) names.
CLASSES = (
    ("gather", ("index_select", "indexselect", "gather", "aten::index")),
    ("attention", ("flash", "fmha", "attention", "softmax", "attn")),
    ("layout", ("nchwtonhwc", "nhwctonchw", "transpose", "copy", "contiguous", "memcpy",
                "aten::cat", "cat_")),
    ("conv", ("fprop", "convolve", "winograd", "conv2d", "convolution", "mkldnn")),
    ("gemm", ("gemm", "nvjet", "cutlass", "matmul", "aten::linear", "aten::addmm", "aten::mm",
              "aten::bmm", "xmma", "cublas", "splitk")),
    ("norm", ("norm",)),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "add", "mul", "gelu", "relu",
                     "tanh", "where", "fill", "pool", "reduce", "max")),
)
NAMES = [c for c, _ in CLASSES] + ["other"]


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((c for c, keys in CLASSES if any(k in low for k in keys)), "other")


def profile_ms(model, x, runs: int) -> tuple[dict[str, float], list]:
    """Kernel ms per forward by class, and the 16 costliest kernels: [ms, class, name]."""
    call = (lambda: model(**x)) if isinstance(x, dict) else (lambda: model(x))
    cuda = bc.DEVICE == "cuda"
    with torch.no_grad():
        for _ in range(3):
            call()
        if cuda:
            torch.cuda.synchronize()
        acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            for _ in range(runs):
                call()
            if cuda:
                torch.cuda.synchronize()
    per, each = Counter(), Counter()
    for e in prof.events():
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.time_range.elapsed_us()
        else:
            if not e.name.startswith("aten::") or any(
                    p.name.startswith("aten::") for p in _parents(e)):
                continue  # outermost aten ops only: their total time, no double counting
            us = e.cpu_time_total
        cls = kernel_class(e.name)
        per[cls] += us / 1e3 / runs
        each[e.name[:160]] += us / 1e3 / runs
    top = [[round(ms, 4), kernel_class(n), n] for n, ms in each.most_common(16)]
    return {c: per[c] for c in NAMES}, top


def _parents(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def linear_flops(m, x, kept: bool) -> int:
    """Multiply-adds of the Linear/Conv2d layers of ``m`` per Linear row / conv sample:
    weights times conv output pixels (from hooks); masked weights counted by their mask
    when ``kept``, in full otherwise."""
    pixels = {}
    hooks = [mod.register_forward_hook(
        lambda mod, i, o, n=n: pixels.__setitem__(n, o.shape[-2] * o.shape[-1]))
        for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    with torch.no_grad():
        m(**x) if isinstance(x, dict) else m(x)
    for h in hooks:
        h.remove()
    total = 0
    for n, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            mask = spruce.get_mask(mod) if kept else None
            total += (int(mask.sum()) if mask is not None else mod.weight.numel()) \
                * pixels.get(n, 1)
    return total


def fold_all(model):
    """Every Conv2d → BatchNorm2d pair folded (eval); the model as is when untraceable."""
    from torch.fx.experimental.optimization import fuse
    try:
        return fuse(model, inplace=False)
    except Exception as e:  # noqa: BLE001 — reported, the unfolded row stays
        print(f"  fold: not traceable ({type(e).__name__}: {e}); dense+fold skipped")
        return None


def case(i: int, batch: int, runs: int, cl: bool) -> list[dict]:
    name, ds, _, kwargs, has_cl = bc.CASES[i]
    cl = cl and has_cl
    label = f"{name}/{ds}" + (f" ({kwargs['unit']})" if kwargs else "") + (" CL" if cl else "")
    model = spruce.zoo.build(name, ds, seed=0).eval().to(bc.DEVICE)
    x = spruce.zoo.example_input(name, ds, batch=batch)
    x = {k: v.to(bc.DEVICE) for k, v in x.items()} if isinstance(x, dict) else x.to(bc.DEVICE)
    spruce.prune(model, "group", 0.5, exclude=["classifier", "fc"], **kwargs)
    small = spruce.compact(model, x, fold_bn=True)
    frac = linear_flops(small, x, kept=True) / linear_flops(model, x, kept=False)
    fmt = torch.channels_last if cl else torch.contiguous_format
    xh = x if isinstance(x, dict) else x.half().contiguous(memory_format=fmt)
    variants = {"dense": bc.convert(model, "dense", x, cl)}
    if not isinstance(x, dict):
        folded = fold_all(variants["dense"])
        if folded is not None:
            variants["dense+fold"] = folded.to(memory_format=fmt)
    for v, m, backend in (("groupwise", model, "groupwise"),
                          ("compact+groupwise", small, "groupwise"),
                          ("compact+auto", small, "auto")):
        t0 = time.perf_counter()
        variants[v] = bc.convert(m, backend, x, cl)
        print(f"  {label} {v}: converted in {time.perf_counter() - t0:.1f} s", flush=True)
    rows = []
    for v, m in variants.items():
        per, top = profile_ms(m, xh, runs)
        graph = bc.timed(m, x, True, cl) if bc.DEVICE == "cuda" else None
        rows.append({"model": label, "variant": v, "batch": batch, "kept_flop_fraction": frac,
                     "kernel_ms": sum(per.values()), "classes_ms": per, "top_kernels": top,
                     "graph_ms": graph, "max_rel_err": bc.max_err(model, m, x)})
        print({k: (round(r, 4) if isinstance(r, float) else r) for k, r in rows[-1].items()
               if k not in ("classes_ms", "top_kernels")}, flush=True)
    return rows


def with_floors(rows: list[dict]) -> list[dict]:
    """The measured rows of each model followed by its floors, with ratios to its dense
    (floor rows stored in ``rows`` are dropped and recomputed)."""
    out = []
    measured = [r for r in rows if not r["variant"].startswith("floor")]
    for label in dict.fromkeys(r["model"] for r in measured):
        rs = [r for r in measured if r["model"] == label]
        dense = next(r for r in rs if r["variant"] == "dense")
        cg = next(r for r in rs if r["variant"] == "compact+groupwise")
        frac, d, c = dense["kept_flop_fraction"], dense["classes_ms"], cg["classes_ms"]
        mm, mm_c = d["gemm"] + d["conv"], c["gemm"] + c["conv"]
        gathers = c["gather"] - d["gather"]  # dense's own: the embedding lookups
        floors = {"free gather": cg["kernel_ms"] - gathers,
                  "Amdahl": dense["kernel_ms"] - mm * (1 - frac),
                  "free gather + FLOP-proportional GEMM/conv":
                      cg["kernel_ms"] - gathers - max(0.0, mm_c - mm * frac)}
        rs = rs + [{"model": label, "variant": f"floor: {f}", "batch": dense["batch"],
                    "kept_flop_fraction": frac, "kernel_ms": ms, "classes_ms": {},
                    "top_kernels": [], "graph_ms": None, "max_rel_err": None}
                   for f, ms in floors.items()]
        for r in rs:
            r["ratio_kernel"] = r["kernel_ms"] / dense["kernel_ms"]
            r["ratio_graph"] = (r["graph_ms"] / dense["graph_ms"]) if r["graph_ms"] else None
        out += rs
    return out


def table(rows: list[dict]) -> str:
    lines = ["| model | variant | kernel ms | ratio | graph ms | ratio | " + " | ".join(NAMES)
             + " |", "|---|---|---|---|---|---|" + "---|" * len(NAMES)]
    for r in rows:
        g = f"{r['graph_ms']:.3f} | {r['ratio_graph']:.2f}×" if r["graph_ms"] else " | "
        c = " | ".join(f"{r['classes_ms'][k]:.3f}" if r["classes_ms"] else "" for k in NAMES)
        lines.append(f"| {r['model']} | {r['variant']} | {r['kernel_ms']:.3f} | "
                     f"{r['ratio_kernel']:.2f}× | {g} | {c} |")
    lines.append("kept FLOP fraction: " + ", ".join(
        f"{r['model']} {r['kept_flop_fraction']:.3f}" for r in rows if r["variant"] == "dense"))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (the measurement) or cpu (a dry run)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10, help="profiled forwards per variant")
    ap.add_argument("--cases", default="0,2", help="indices into bench_compact.CASES")
    ap.add_argument("--channels-last", action="store_true",
                    help="CNN cases in channels-last (models and inputs)")
    ap.add_argument("--render", metavar="JSON", help="print the table of a saved run")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            return print(table(with_floors(json.load(f)["rows"])))
    bc.DEVICE = args.device
    rows = []
    for i in (int(c) for c in args.cases.split(",")):
        rows += case(i, args.batch, args.runs, args.channels_last)
    rows = with_floors(rows)
    out = os.environ.get("OUT", ".")
    tag = "-cl" if args.channels_last else ""
    with open(os.path.join(out, f"breakdown{tag}.json"), "w") as f:
        device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
        json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(table(rows))


if __name__ == "__main__":
    main()
