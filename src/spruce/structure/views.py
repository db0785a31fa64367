"""Handlers of view ops (reshape, expand, permute, slice, select, split, getitem): they move
channel ids between dims without joining channels, except where equal pieces must stay
equal (``chunk``, ``unbind``) or a dim is split in several (a grid, aligned at the end).
"""

from __future__ import annotations

import numpy as np
from torch import fx

from . import layout as L
from .graph import Builder, Src, _call_name
from .layout import Layout
from .ops import handles, named_args, unknown

def _lost(b: Builder, before: Layout, after: Layout | None, what: str) -> None:
    kept = set() if after is None else set(after.all_ids().tolist())
    gone = np.array([i for i in before.all_ids().tolist() if i not in kept], dtype=np.int64)
    b.pin(gone, f"{what} drops channels it cannot follow")


def _src_reshape(src: Src, before: tuple[int, ...], after: tuple[int, ...]) -> Src | None:
    groups = L._groups(list(before), list(after))
    if groups is None:
        return None
    axes: list[int | None] = [None] * len(after)
    for gi, gj in groups:
        big_i = [d for d in gi if before[d] > 1]
        big_j = [d for d in gj if after[d] > 1]
        if len(big_i) > 1 or len(big_j) > 1 or len(big_i) != len(big_j):
            return None
        if big_j:
            axes[big_j[0]] = src.axes[big_i[0]]
    return Src(src.name, tuple(axes))


@handles("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze",
         "view_as", "reshape_as", "_reshape_alias")
def reshape(b: Builder, node: fx.Node) -> Layout | None:
    x = node.args[0]
    before, after = b.shape(x), b.shape(node)
    if before is None or after is None:
        return unknown(b, node)
    if x in b.src:
        src = _src_reshape(b.src[x], before, after)
        if src is not None:
            b.src[node] = src
    lay = b.layout(x)
    if lay is None:
        return None
    out = L.reshape(lay, list(before), list(after))
    _lost(b, lay, out, f"reshape {list(before)} → {list(after)}")
    for arr in (lay.ids, None if out is None else out.ids):
        if arr is not None and arr.ndim > 1:
            b.grids.append(arr)  # a channel dim split in several: removals must stay a grid
    return out


@handles("expand", "expand_as", "broadcast_to")
def expand(b: Builder, node: fx.Node) -> Layout | None:
    x = node.args[0]
    before, after = b.shape(x), b.shape(node)
    off = len(after) - len(before)
    if x in b.src:
        src = b.src[x]
        b.src[node] = Src(src.name, (None,) * off + tuple(
            a if before[i] == after[i + off] else None for i, a in enumerate(src.axes)))
    lay = b.layout(x)
    if lay is None:
        return None
    ids = lay.ids
    for k, d in enumerate(lay.dims):
        if before[d] == 1 and after[d + off] > 1:
            ids = np.repeat(ids, after[d + off], axis=k)
    return Layout(tuple(d + off for d in lay.dims), ids)


def _permuted(b: Builder, node: fx.Node, perm: list[int]) -> Layout | None:
    x = node.args[0]
    inverse = {d: i for i, d in enumerate(perm)}
    if x in b.src:
        src = b.src[x]
        b.src[node] = Src(src.name, tuple(src.axes[d] for d in perm))
    lay = b.layout(x)
    return None if lay is None else lay.moved(inverse)


@handles("permute")
def permute(b: Builder, node: fx.Node) -> Layout | None:
    rank = len(b.shape(node))
    return _permuted(b, node, [d % rank for d in node.args[1]])


@handles("transpose", "swapaxes", "t", "numpy_T")
def transpose(b: Builder, node: fx.Node) -> Layout | None:
    rank = len(b.shape(node))
    d0, d1 = (node.args[1] % rank, node.args[2] % rank) if len(node.args) > 2 else (0, 1)
    perm = list(range(rank))
    if rank >= 2:
        perm[d0], perm[d1] = perm[d1], perm[d0]
    return _permuted(b, node, perm)


@handles("slice", "narrow")
def slice_(b: Builder, node: fx.Node) -> Layout | None:
    x, lay = node.args[0], b.layout(node.args[0])
    rank = len(b.shape(x))
    args = named_args(node)
    dim = args.get("dim", 0) % rank
    if lay is None or dim not in lay.dims:
        if x in b.src and b.shape(x) == b.shape(node):
            b.src[node] = b.src[x]
        return lay
    size = b.shape(x)[dim]
    if _call_name(node) == "narrow":
        start, end, step = args["start"], args["start"] + args["length"], 1
    else:
        start, end, step = args.get("start"), args.get("end"), args.get("step", 1)
    index = range(size)[slice(start, end, step)]
    return Layout(lay.dims, np.take(lay.ids, list(index), axis=lay.dims.index(dim)))


@handles("select")
def select(b: Builder, node: fx.Node) -> Layout | None:
    x, lay = node.args[0], b.layout(node.args[0])
    rank = len(b.shape(x))
    dim = node.args[1] % rank
    if lay is None:
        return None
    if dim in lay.dims:
        b.pin(lay, "select() picks one channel out of a channel dim")
        return None
    return lay.moved({d: d - (d > dim) for d in lay.dims})


@handles("split", "split_with_sizes", "chunk", "unsafe_split", "unbind", "tensor_split")
def split(b: Builder, node: fx.Node) -> list | None:
    x, lay = node.args[0], b.layout(node.args[0])
    outs = node.meta.get("val")
    if lay is None or not isinstance(outs, (list, tuple)):
        return None if lay is None else unknown(b, node)
    rank = len(b.shape(x))
    dim = named_args(node).get("dim", 0) % rank
    if _call_name(node) == "unbind":
        if dim not in lay.dims:
            return [lay.moved({d: d - (d > dim) for d in lay.dims})] * len(outs)
        k = lay.dims.index(dim)
        rest = tuple(d - (d > dim) for d in lay.dims if d != dim)
        pieces = [np.take(lay.ids, i, axis=k) for i in range(lay.ids.shape[k])]
        for p in pieces[1:]:  # q, k, v of one packed projection: index j goes together
            b.uf.union_arrays(pieces[0], p)
        return [Layout(rest, p) if rest else None for p in pieces]
    if dim not in lay.dims:
        return [lay] * len(outs)
    k, pieces, start = lay.dims.index(dim), [], 0
    for t in outs:
        n = int(t.shape[dim])
        pieces.append(Layout(lay.dims, np.take(lay.ids, range(start, start + n), axis=k)))
        start += n
    if len({p.ids.shape for p in pieces}) > 1:  # sizes fixed in code: they cannot shrink
        b.pin(lay, f"'{_call_name(node)}' into pieces of unequal sizes")
    else:  # equal pieces stay equal: index j of every piece goes together
        for p in pieces[1:]:
            b.uf.union_arrays(pieces[0].ids, p.ids)
    return pieces


@handles("getitem")
def getitem(b: Builder, node: fx.Node) -> Layout | None:
    v = b.lay.get(node.args[0])
    return v[node.args[1]] if isinstance(v, list) and node.args[1] < len(v) else None
