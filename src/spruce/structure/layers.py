"""Handlers for ops that hold parameters or join heads: layers, norms, attention.

A layer reads its input channels through one weight axis (role ``in``: the columns of its
2-D view) and writes new channels through another (role ``out``: its rows), with the
bias on the output channels. Per-channel norms (BatchNorm) keep channels and make their
entries members. LayerNorm/RMSNorm/GroupNorm mix all channels of a position: they pin
them. Attention joins every channel of one head — Q, K, V and the attention weights — so
a head is removed whole; with grouped-query attention a KV head goes with its query heads.
"""

from __future__ import annotations

import numpy as np
from torch import fx

from .graph import IN, OUT, PARAM, Builder, Src
from .layout import Layout
from .ops import handles, named_args, unknown


def _layer(b: Builder, node: fx.Node, x: fx.Node, w: Src, w_in: int, w_out: int,
           x_dim: int, bias: fx.Node | None) -> Layout:
    """A layer reading channel dim ``x_dim`` of ``x`` through weight dim ``w_in`` and
    writing new channels along weight dim ``w_out`` (dim ``x_dim`` of its output too)."""
    lay = b.layout(x)
    if lay is not None:
        if lay.dims == (x_dim,):
            b.member(w, w_in, lay.ids, IN)
        else:
            b.pin(lay, f"layer '{w.name}' reads channels off its input dim")
    size = b.shape(node)[x_dim]
    ids = b.fresh((size,))
    b.member(w, w_out, ids, OUT)
    if bias is not None and bias in b.src:
        b.member(b.src[bias], 0, ids, PARAM)
    return Layout((x_dim,), ids)


@handles("linear")
def linear(b: Builder, node: fx.Node) -> Layout | None:
    x, w = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    if w not in b.src:
        return unknown(b, node)
    return _layer(b, node, x, b.src[w], 1, 0, len(b.shape(node)) - 1, bias)


@handles("addmm")
def addmm(b: Builder, node: fx.Node) -> Layout | None:
    """``bias + x @ W`` with ``W`` stored ``[in, out]`` (transformers' ``Conv1D``)."""
    bias, x, w = node.args[:3]
    if w not in b.src or len(b.shape(x)) != 2:
        return unknown(b, node)
    return _layer(b, node, x, b.src[w], 0, 1, 1, bias)


@handles("mm", "matmul", "bmm")
def matmul(b: Builder, node: fx.Node) -> Layout | list | None:
    x, w = node.args[0], node.args[1]
    if w in b.src and len(b.shape(w)) == 2:  # x @ W, W a parameter stored [in, out]
        return _layer(b, node, x, b.src[w], 0, 1, len(b.shape(node)) - 1, None)
    return _heads_matmul(b, node, x, w)


def _head_rows(b: Builder, lay: Layout | None, dim: int, what: str) -> np.ndarray | None:
    if lay is None:
        return None
    if dim not in lay.dims:
        b.pin(lay, f"{what}: channels off the head dim")
        return None
    return b.line(lay, dim)


def _heads_matmul(b: Builder, node: fx.Node, a: fx.Node, c: fx.Node) -> Layout | None:
    """``a @ c`` between activations: with a head dim (a batch dim that carries channels)
    everything of one head is joined; without one, the product mixes channels: pin."""
    out = b.shape(node)
    rank = len(out)
    la, lc = b.layout(a), b.layout(c)
    if rank < 3:
        return unknown(b, node)
    head = rank - 3
    moved = []
    for t, lay in ((a, la), (c, lc)):
        if lay is not None:
            off = rank - len(b.shape(t))
            lay = lay.moved({d: d + off for d in lay.dims})
        moved.append(lay)
    rows = [_head_rows(b, lay, head, "matmul") for lay in moved if lay is not None]
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    for r in rows[1:]:
        if r.size != rows[0].size:
            return unknown(b, node)
        b.uf.union_arrays(rows[0], r)
    b.mark(rows[0], "head")
    return Layout((head,), rows[0])


SDPA = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_cudnn_attention")


@handles(*SDPA)
def attention(b: Builder, node: fx.Node) -> Layout | list | None:
    args = named_args(node)
    q, k, v = args["query"], args["key"], args["value"]
    mask = args.get("attn_mask", args.get("attn_bias"))
    rank = len(b.shape(q))
    head = rank - 3
    hq, hk = b.shape(q)[head], b.shape(k)[head]
    rows_q = _head_rows(b, b.layout(q), head, "attention query")
    rows_k = _head_rows(b, b.layout(k), head, "attention key")
    rows_v = _head_rows(b, b.layout(v), head, "attention value")
    if hk and hq % hk == 0:
        group = hq // hk  # grouped-query attention: query head i reads KV head i // group
        for rows in (rows_k, rows_v):
            if rows is not None:
                rows = np.repeat(rows, group)
                rows_q = rows if rows_q is None else (b.uf.union_arrays(rows_q, rows), rows_q)[1]
    if mask is not None and b.layout(mask) is not None:
        lay = b.layout(mask)
        lay = lay.moved({d: d + rank - len(b.shape(mask)) for d in lay.dims})
        rows_m = _head_rows(b, lay, head, "attention mask")
        if rows_m is not None and rows_q is not None and rows_m.size == rows_q.size:
            b.uf.union_arrays(rows_q, rows_m)
    out = None if rows_q is None else Layout((head,), rows_q)
    if out is not None:
        b.mark(rows_q, "head")
    vals = node.meta.get("val")
    return [out] + [None] * (len(vals) - 1) if isinstance(vals, (list, tuple)) else out


@handles("convolution", "conv1d", "conv2d", "conv3d", "_convolution")
def conv(b: Builder, node: fx.Node) -> Layout | None:
    args = named_args(node)
    x, w, bias = args["input"], args["weight"], args.get("bias")
    groups = args.get("groups", 1)
    if w not in b.src or args.get("transposed", False):
        return unknown(b, node)
    if groups == 1:
        return _layer(b, node, x, b.src[w], 1, 0, 1, bias)
    c_in, c_out = b.shape(x)[1], b.shape(node)[1]
    lay = b.layout(x)
    if groups == c_in == c_out and lay is not None and lay.dims == (1,):  # depthwise
        b.member(b.src[w], 0, lay.ids, PARAM)
        if bias is not None and bias in b.src:
            b.member(b.src[bias], 0, lay.ids, PARAM)
        return lay
    b.pin(lay, f"grouped convolution '{b.src[w].name}' (groups={groups})")
    ids = b.fresh((c_out,))
    b.pin(ids, f"grouped convolution '{b.src[w].name}' (groups={groups})")
    return Layout((1,), ids)


def _per_channel(b: Builder, node: fx.Node, params: tuple[str, ...]) -> Layout | None:
    args = named_args(node)
    lay = b.layout(args["input"])
    if lay is None:
        return None
    if lay.dims != (1,):
        b.pin(lay, "a per-channel norm with channels off dim 1")
        return lay
    for name in params:
        p = args.get(name)
        if p is not None and p in b.src:
            b.member(b.src[p], 0, lay.ids, PARAM)
    return lay


BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


@handles("batch_norm", "instance_norm")
def batch_norm(b: Builder, node: fx.Node) -> Layout | None:
    return _per_channel(b, node, BN_PARAMS)


@handles("_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
         "native_batch_norm", "cudnn_batch_norm", "miopen_batch_norm",
         "_native_batch_norm_legit_functional")
def batch_norm_tuple(b: Builder, node: fx.Node) -> list:
    lay = _per_channel(b, node, BN_PARAMS)
    return [lay] + [None] * (len(node.meta.get("val", [])) - 1)


@handles("layer_norm", "native_layer_norm", "group_norm", "native_group_norm", "rms_norm",
         "_fused_rms_norm")
def mixing_norm(b: Builder, node: fx.Node) -> Layout | list | None:
    """Statistics over every channel of a position: the channels stay (all or none)."""
    lay = b.layout(node.args[0])
    b.pin(lay, f"normalised together by '{node.target}'")
    vals = node.meta.get("val")
    return [lay] + [None] * (len(vals) - 1) if isinstance(vals, (list, tuple)) else lay


@handles("embedding")
def embedding(b: Builder, node: fx.Node) -> Layout | None:
    w = node.args[0]
    if w not in b.src:
        return unknown(b, node)
    ids = b.fresh((b.shape(node)[-1],))
    b.member(b.src[w], 1, ids, PARAM)
    return Layout((len(b.shape(node)) - 1,), ids)
