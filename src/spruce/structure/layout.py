"""Channel ids on tensors: which dims of a traced tensor carry channels, and which ones.

Every channel that a weight, norm or activation carries gets an integer *element id*; a
union-find joins the ids that must be kept or removed together (a residual add joins the
channels it adds, a per-channel op keeps them, attention joins the channels of one head).
A :class:`Layout` says which dims of one traced tensor carry element ids and holds them as
an array over those dims. View ops (reshape, permute, expand, slice, cat) move ids without
joining them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class UnionFind:
    """Element ids 0..n-1, grown on demand; ``find`` with path halving."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, shape: tuple[int, ...]) -> np.ndarray:
        start = len(self.parent)
        n = math.prod(shape)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64).reshape(shape)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo
            return lo
        return ra

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True):
            self.union(x, y)

    def union_all(self, a: np.ndarray) -> None:
        flat = a.reshape(-1).tolist()
        for x in flat[1:]:
            self.union(flat[0], x)

    def roots(self, a: np.ndarray) -> np.ndarray:
        return np.array([self.find(x) for x in a.reshape(-1).tolist()],
                        dtype=np.int64).reshape(a.shape)


@dataclass(frozen=True)
class Layout:
    """``dims`` (ascending) of a tensor carry the element ids ``ids`` (shape = their sizes)."""

    dims: tuple[int, ...]
    ids: np.ndarray

    def moved(self, mapping: dict[int, int]) -> Layout:
        """The layout with tensor dims renamed by ``mapping`` (old → new), re-sorted."""
        new = [mapping[d] for d in self.dims]
        order = sorted(range(len(new)), key=new.__getitem__)
        return Layout(tuple(new[i] for i in order), self.ids.transpose(order))

    def all_ids(self) -> np.ndarray:
        return self.ids.reshape(-1)


def _groups(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Split two shapes of equal numel into minimal runs of dims with equal products."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi, gj, pa, pb = [], [], 1, 1
        if i < len(a):
            gi.append(i)
            pa, i = pa * a[i], i + 1
        if j < len(b):
            gj.append(j)
            pb, j = pb * b[j], j + 1
        while pa != pb:
            if pa < pb and i < len(a):
                gi.append(i)
                pa, i = pa * a[i], i + 1
            elif pb < pa and j < len(b):
                gj.append(j)
                pb, j = pb * b[j], j + 1
            else:
                return None
        groups.append((gi, gj))
    return groups


def reshape(layout: Layout, before: list[int], after: list[int]) -> Layout | None:
    """Where the ids of ``layout`` (on a tensor of shape ``before``) go when the tensor is
    reshaped to ``after``: None when no channel dim survives or the shapes do not match
    (the caller pins what it loses)."""
    groups = _groups(list(before), list(after))
    if groups is None:
        return None
    src, dst = list(before), list(after)
    for gi, gj in groups:  # runs of dims without channels collapse to size 1
        if not any(d in layout.dims for d in gi):
            for d in gi:
                src[d] = 1
            for d in gj:
                dst[d] = 1
    view = [before[d] if d in layout.dims else 1 for d in range(len(before))]
    full = np.broadcast_to(layout.ids.reshape(view), src).reshape(dst)
    dims = [d for d in range(len(dst)) if dst[d] > 1
            and not (full == full.take([0], axis=d)).all()]
    if not dims:
        return None
    index = tuple(slice(None) if d in dims else 0 for d in range(len(dst)))
    return Layout(tuple(dims), np.ascontiguousarray(full[index]))
