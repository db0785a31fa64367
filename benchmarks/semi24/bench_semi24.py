"""Where does 2:4 (cuSPARSELt) time go on this GPU, and what removes it?

For each shape (N tokens × K → R), fp16, times with ``triton.testing.do_bench`` (median):
  dense           F.linear(x, W, b)
  subclass        F.linear(x, to_sparse_semi_structured(W), b)  (torch's path, the old backend)
  cslt            torch._cslt_sparse_mm(packed, x.t(), b)       (direct call, default algorithm)
  cslt+search     the same with the algorithm id from torch._cslt_sparse_mm_search, once
(transpose_result=True is left out: on sm90 with torch 2.11 its algorithm search fails with a
cuSPARSELt internal error and a plain call raised an illegal instruction, seen 2026-11-21.
The [R, N] result's .t() is a view, so no copy is made either way.)
  graph:dense     dense replayed from a CUDA graph
  graph:cslt      the best cslt variant replayed from a CUDA graph
Every variant is checked against dense (relative error). Writes $OUT/semi24.json and prints
a table. Run from the repo root: ``python3 benchmarks/semi24/bench_semi24.py``.
"""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from triton.testing import do_bench

SHAPES = {  # name: (N tokens, K in, R out)
    "bert-base-qkv": (8192, 768, 2304), "bert-base-out": (8192, 768, 768),
    "bert-base-ffn1": (8192, 768, 3072), "bert-base-ffn2": (8192, 3072, 768),
    "overhead-probe": (64, 768, 768), "large-16384x8192x8192": (16384, 8192, 8192)}


def mask_24(w: torch.Tensor) -> torch.Tensor:
    g = w.abs().reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, g.topk(2, -1).indices, True)
    return keep.reshape(w.shape)


def graphed(fn):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


def med(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=200, return_mode="median"))


def run(name: str, n: int, k: int, r: int) -> dict:
    torch.manual_seed(0)
    w = torch.randn(r, k, device="cuda", dtype=torch.float16) / k ** 0.5
    w = w * mask_24(w)
    b = torch.randn(r, device="cuda", dtype=torch.float16)
    xs = [torch.randn(n, k, device="cuda", dtype=torch.float16) for _ in range(2)]
    x = xs[0]
    ref = F.linear(x.float(), w.float(), b.float())
    packed = torch._cslt_compress(w)
    sub = torch.sparse.to_sparse_semi_structured(w)
    alg = torch._cslt_sparse_mm_search(packed, x.t(), bias=b)
    variants = {
        "dense": lambda: F.linear(x, w, b),
        "subclass": lambda: F.linear(x, sub, b),
        "cslt": lambda: torch._cslt_sparse_mm(packed, x.t(), b).t(),
        "cslt+search": lambda: torch._cslt_sparse_mm(packed, x.t(), b, alg_id=alg).t(),
    }
    row = {"shape": name, "N": n, "K": k, "R": r, "alg_id": alg}
    for v, fn in variants.items():
        try:
            out = fn()
            err = float((out.float() - ref).norm() / ref.norm())
            row[v] = {"ms": med(fn), "rel_err": err, "out_stride": list(out.stride())}
        except RuntimeError as e:
            row[v] = {"ms": float("inf"), "rel_err": float("nan"), "error": str(e)[:200]}
            torch.cuda.synchronize()
    best = min(("cslt", "cslt+search"), key=lambda v: row[v]["ms"])
    row["best_cslt"] = best
    row["graph:dense"] = {"ms": med(graphed(variants["dense"]))}
    row["graph:cslt"] = {"ms": med(graphed(variants[best]))}
    return row


def main() -> None:
    print(torch.cuda.get_device_name(), torch.__version__, "cusparselt",
          torch.backends.cusparselt.version())
    rows = [run(name, *shape) for name, shape in SHAPES.items()]
    out = os.environ.get("OUT", ".")
    with open(os.path.join(out, "semi24.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "rows": rows}, f, indent=1)
    cols = ["dense", "subclass", "cslt", "cslt+search", "graph:dense",
            "graph:cslt"]
    print("| shape | " + " | ".join(f"{c} ms" for c in cols) + " | best eager / dense | "
          "graph cslt / graph dense |")
    print("|---" * (len(cols) + 3) + "|")
    for r in rows:
        best = r[r["best_cslt"]]["ms"]
        print(f"| {r['shape']} | " + " | ".join(f"{r[c]['ms']:.4f}" for c in cols) +
              f" | {best / r['dense']['ms']:.2f}× | "
              f"{r['graph:cslt']['ms'] / r['graph:dense']['ms']:.2f}× |")
    print("max rel err:", max(r[v]["rel_err"] for r in rows for v in
                              ("subclass", "cslt", "cslt+search")
                              if r[v]["rel_err"] == r[v]["rel_err"]))


if __name__ == "__main__":
    main()
