"""How fast can the gather before a compacted GEMM be? (GPU, fp16.)

    PYTHONPATH=src python3 benchmarks/kernels/gather_probe.py --out "$OUT"

For the Linear presets × kept ratio, on the same rotated inputs: ``index_select`` (what the
``groupwise`` backend runs), advanced indexing ``x[:, kept]``, ``kernels.gather`` with a few
tile shapes, a plain copy of x (the bandwidth ceiling: read |x| + write |x|); then the
compacted GEMM alone (ideal), gather+GEMM with index_select and with the best Triton tile,
and dense. Every gathered result is compared with ``x[:, kept]`` (exact). Writes
``gather.json``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from spruce.bench import make_inputs, time_fn
from spruce.bench.presets import get_shape
from spruce.kernels.gather import gather_columns

PRESETS = ["bert-base-ffn1", "bert-base-ffn2", "bert-base-qkv", "vgg16-fc", "vit-b-mlp"]
TILES = [(16, 256, 4), (8, 512, 4), (32, 128, 4), (4, 1024, 4), (16, 512, 8), (64, 64, 4)]


def ms(fn, inputs) -> float:
    return time_fn(fn, inputs, device="cuda", warmup=3, min_runs=30, min_time_s=0.1).median_ms


def kept_row(row: dict, xs: list, w: torch.Tensor, r: float) -> dict:
    k = w.shape[1]
    g = torch.Generator().manual_seed(0)
    kept = torch.randperm(k, generator=g)[:round(r * k)].sort().values.cuda()
    wc = w[:, kept].contiguous()
    row = {**row, "kept": r}
    row["index_select_ms"] = ms(lambda x: x.index_select(1, kept), xs)
    row["indexing_ms"] = ms(lambda x: x[:, kept], xs)
    for t in TILES:
        assert torch.equal(gather_columns(xs[0], kept, blocks=t), xs[0][:, kept])
        row[f"triton_{t[0]}x{t[1]}w{t[2]}_ms"] = ms(
            lambda x, t=t: gather_columns(x, kept, blocks=t), xs)
    best = min(TILES, key=lambda t: row[f"triton_{t[0]}x{t[1]}w{t[2]}_ms"])
    row["best_tile"] = list(best)
    gathered = [x[:, kept].contiguous() for x in xs]
    row["ideal_ms"] = ms(lambda x: F.linear(x, wc), gathered)
    row["gather_gemm_index_select_ms"] = ms(lambda x: F.linear(x.index_select(1, kept), wc), xs)
    row["gather_gemm_triton_ms"] = ms(
        lambda x: F.linear(gather_columns(x, kept, blocks=best), wc), xs)
    return row


def preset_rows(name: str) -> list[dict]:
    s = get_shape(name)
    k, n, m = s.in_features, s.out_features, s.tokens
    xs = make_inputs((m, k), dtype=torch.float16, device="cuda")
    w = torch.randn(n, k, device="cuda", dtype=torch.float16) / k ** 0.5
    base = {"preset": name, "m": m, "k": k, "n": n, "dense_ms": ms(lambda x: F.linear(x, w), xs),
            "copy_ms": ms(lambda x: x.clone(), xs)}
    rows = []
    for r in (0.75, 0.5, 0.25):
        rows.append(kept_row(base, xs, w, r))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    rows = [row for name in PRESETS for row in preset_rows(name)]
    with open(os.path.join(args.out, "gather.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                   "rows": rows}, f, indent=1)
    print("| preset | kept | dense | copy x | index_select | x[:,kept] | triton best (tile) | "
          "ideal | gather+GEMM (index_select) | gather+GEMM (triton) |\n" + "|---" * 10 + "|")
    for r in rows:
        t = r["best_tile"]
        print(f"| {r['preset']} | {r['kept']} | {r['dense_ms']:.4f} | {r['copy_ms']:.4f} | "
              f"{r['index_select_ms']:.4f} | {r['indexing_ms']:.4f} | "
              f"{r[f'triton_{t[0]}x{t[1]}w{t[2]}_ms']:.4f} ({t[0]}x{t[1]}w{t[2]}) | "
              f"{r['ideal_ms']:.4f} | {r['gather_gemm_index_select_ms']:.4f} | "
              f"{r['gather_gemm_triton_ms']:.4f} |")


if __name__ == "__main__":
    main()
