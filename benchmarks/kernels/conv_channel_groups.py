"""The vgg16-conv preset with whole-channel groups (``unit="channel"``) against cuDNN.

    PYTHONPATH=src python3 benchmarks/kernels/conv_channel_groups.py --out "$OUT"

The conv targets (≤ 1.0× cuDNN at kept 0.75, ≤ 0.6× at 0.5; fp16, channels-last) are
set for the paper's groups, ``(c, kh, kw)`` taps, which ``groupwise_fused`` serves
(``bench_fused.py``). This measures the coarser pattern next to it: a group is a whole
input channel, so the ``groupwise`` backend runs a channel gather and a smaller dense cuDNN
conv (layout ``"channels"``). Per dtype and kept ratio, in one run on the same rotated
channels-last inputs: dense cuDNN; the converted ``groupwise`` layer; and its ideal — the
smaller cuDNN conv on input whose channels were gathered beforehand. Every converted
output is checked against the masked conv in float64. Writes ``channel_groups.json`` and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch import nn

import spruce
from spruce.bench.presets import get_shape, scaled
from spruce.bench.timing import make_inputs, time_fn

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
KEPT = (0.75, 0.5, 0.25)
CL = torch.channels_last


def case(dtype: str, kept: float, device: str, scale: float) -> dict:
    shape, dt = scaled(get_shape("vgg16-conv"), scale), DTYPES[dtype]
    net = nn.Sequential(shape.build(0)).to(device)
    spruce.prune(net, {"name": "group", "unit": "channel"}, kept, criterion="magnitude")
    example = torch.randn(shape.input_shape(), device=device).to(dt).contiguous(
        memory_format=CL)
    fast = spruce.convert(net.to(memory_format=CL), "groupwise", dtype=dt,
                          example_input=example)
    layer = fast[0]
    dense = shape.build(0).to(device, dt).to(memory_format=CL).eval()
    ch = layer.channels                                   # kept input channels
    small = nn.Conv2d(len(ch), dense.out_channels, dense.kernel_size, dense.stride,
                      dense.padding, bias=dense.bias is not None).to(device, dt)
    small = small.to(memory_format=CL).eval()
    inputs = [x.contiguous(memory_format=CL) for x in
              make_inputs(shape.input_shape(), dtype=dt, device=device)]
    gathered = [x.index_select(1, ch).contiguous(memory_format=CL) for x in inputs]
    with torch.inference_mode():
        x = inputs[0]
        w = net[0].weight.detach().double()               # masked weight (parametrized)
        ref = F.conv2d(x.double(), w, net[0].bias.double(), dense.stride, dense.padding)
        out = layer(x).double()
        err = float((out - ref).norm() / ref.norm())
        t = {n: time_fn(f, xs, device=device, min_runs=30, min_time_s=0.1).median_ms
             for n, f, xs in (("dense", dense, inputs), ("groupwise", layer, inputs),
                              ("ideal", small, gathered))}
    return {"preset": shape.name, "batch": shape.batch, "dtype": dtype, "kept": kept,
            "channels": len(ch), "layout": layer.config().get("layout"), "rel_err": err,
            **{f"{k}_ms": v for k, v in t.items()},
            "groupwise/dense": t["groupwise"] / t["dense"], "ideal/dense": t["ideal"] / t["dense"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--scale", type=float, default=1.0, help="batch multiplier (CPU dry run)")
    args = ap.parse_args()
    rows = [case(d, k, args.device, args.scale) for d in DTYPES for k in KEPT]
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    with open(os.path.join(args.out, "channel_groups.json"), "w") as f:
        json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=1)
    print(f"device {device}\n| dtype | kept | channels | layout | dense ms | groupwise ms | "
          "ideal ms | groupwise/dense | ideal/dense | err |\n" + "|---" * 10 + "|")
    for r in rows:
        print(f"| {r['dtype']} | {r['kept']} | {r['channels']} | {r['layout']} | "
              f"{r['dense_ms']:.4f} | {r['groupwise_ms']:.4f} | {r['ideal_ms']:.4f} | "
              f"{r['groupwise/dense']:.2f} | {r['ideal/dense']:.2f} | {r['rel_err']:.1e} |")


if __name__ == "__main__":
    main()
