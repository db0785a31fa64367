"""Where a forward's time goes: kernel time by class, from ``torch.profiler``.

Classes, decided by the kernel's (CUDA) or op's (CPU) lower-case name, first rule wins:
attention, normalisation, GEMM/conv, layout (copies, transposes, concatenations, format
changes), elementwise (and reductions, pooling), other. Inductor names its kernels after
what they fuse (``triton_poi_fused_native_layer_norm_0``), so the same rules read compiled
and eager models. On CUDA every kernel counts; on the CPU the outermost ``aten::`` ops
and Inductor's fused CPU kernels do (a dry run: CPU op time, not device time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

# (class, name fragments): the first class with a fragment in the name wins.
RULES = (
    ("attention", ("flash", "fmha", "attention", "attn", "softmax", "sdpa")),
    ("norm", ("norm", "bn_fw", "rsqrt", "welford", "var_mean")),
    ("gemm/conv", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "splitk", "matmul",
                   "conv", "fprop", "winograd", "triton_tem", "aten::mm", "aten::addmm",
                   "aten::bmm", "aten::linear", "mkldnn")),
    ("layout", ("nchwtonhwc", "nhwctonchw", "transpose", "copy_kernel", "memcpy", "catarray",
                "fused_clone", "fused_cat", "fused_permute", "aten::copy_", "aten::cat",
                "aten::clone", "aten::contiguous")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "triton_poi", "triton_red",
                     "triton_per", "cpp_fused", "reduce", "pool", "relu", "gelu", "silu",
                     "tanh", "add", "mul", "fill", "where", "max", "mean", "embedding")),
)
CLASSES = tuple(c for c, _ in RULES) + ("other",)


def kernel_class(name: str) -> str:
    """The class of a kernel or op name (see RULES). An Inductor kernel that is not a
    template (``triton_tem``) runs no GEMM/conv itself, whatever it is named after (a
    conv's bias and ReLU fused: ``triton_poi_fused_convolution_relu_3``)."""
    low = name.lower()
    fused = (low.startswith("triton_") and not low.startswith("triton_tem")) \
        or "cpp_fused" in low
    return next((c for c, frags in RULES if not (fused and c == "gemm/conv")
                 and any(f in low for f in frags)), "other")


def kernel_split(fn: Callable[[Any], Any], x: Any, device: torch.device,
                 runs: int = 5) -> dict[str, float]:
    """Milliseconds per call of ``fn(x)`` in each class of CLASSES, and their ``total``
    (kernel time, so launch gaps are not in it), over ``runs`` profiled calls after a
    warm-up."""
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for _ in range(3):
            fn(x)
        if cuda:
            torch.cuda.synchronize()
        acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            for _ in range(runs):
                fn(x)
            if cuda:
                torch.cuda.synchronize()
    per: Counter[str] = Counter()
    for e in prof.events():
        us = _event_us(e, cuda)
        if us:
            per[kernel_class(e.name)] += us / 1e3 / runs
    split = {c: round(per[c], 4) for c in CLASSES}
    split["total"] = round(sum(per.values()), 4)
    return split


def _event_us(e, cuda: bool) -> float:
    """An event's kernel time in µs, or 0 when it is not counted (see the module doc)."""
    if cuda:
        return e.time_range.elapsed_us() if e.device_type == torch.autograd.DeviceType.CUDA \
            else 0.0
    counted = e.name.startswith("aten::") or "fused" in e.name
    parent = e.cpu_parent
    while counted and parent is not None:   # outermost counted op only: no double counting
        if parent.name.startswith("aten::") or "fused" in parent.name:
            return 0.0
        parent = parent.cpu_parent
    return e.cpu_time_total if counted else 0.0


def render_split(splits: dict[str, dict[str, float]]) -> str:
    """One small markdown table: a row per profiled path, ms per call in each class."""
    lines = ["| path | " + " | ".join(CLASSES) + " | total |",
             "|---|" + "---|" * (len(CLASSES) + 1)]
    for path, split in splits.items():
        cells = " | ".join(f"{split.get(c, 0.0):.3f}" for c in (*CLASSES, "total"))
        lines.append(f"| {path} | {cells} |")
    return "\n".join(lines)
