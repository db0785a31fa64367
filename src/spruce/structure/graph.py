"""The dependency graph: which channels of which tensors must go together.

:func:`build` walks a model's exported ATen graph once. Each op's handler (a registry in
:mod:`spruce.structure.ops`, keyed by op name) says where the channel ids of its inputs go:
per-channel ops keep them, a layer reads them through its weight's input axis and makes
new ones on its output axis, a residual add or a per-channel product joins them, attention
joins the channels of one head, and anything that mixes channels in another way *pins*
them (they stay). Parameters used on the way (biases, norm entries, layer scales,
embeddings) become *members*: a ``(parameter, axis)`` whose index ``i`` belongs to a
channel. The result is a :class:`Dependencies`: every coupled channel class, its members and
whether it may be removed.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from .layout import Layout, UnionFind
from .trace import export, placeholder_names

IN, OUT, PARAM = "in", "out", "param"  # member roles: a layer's input axis, its output, other


@dataclass(frozen=True)
class Src:
    """A tensor that is a parameter seen through views: tensor dim ``d`` is the
    parameter's axis ``axes[d]`` (None for a dim that is not one of its axes)."""

    name: str
    axes: tuple[int | None, ...]


@dataclass
class Member:
    """Axis ``axis`` of parameter ``name``: index ``i`` belongs to element ``ids[i]``."""

    name: str
    axis: int
    role: str
    ids: np.ndarray


@dataclass
class Dependencies:
    """Coupled channel classes of a traced model."""

    members: dict[tuple[str, int], Member]
    roots: dict[tuple[str, int], np.ndarray]  # (param, axis) → class of each index
    pinned: dict[int, str]  # class → why it must stay
    kinds: dict[int, set[str]] = field(default_factory=dict)  # class → {"stream", "head"}


class Builder:
    """State of one walk over the graph (handlers read and write it)."""

    def __init__(self, program: torch.export.ExportedProgram):
        self.uf = UnionFind()
        self.lay: dict[fx.Node, Any] = {}
        self.src: dict[fx.Node, Src] = {}
        self.members: dict[tuple[str, int], Member] = {}
        self.pins: list[tuple[np.ndarray, str]] = []
        self.marks: list[tuple[np.ndarray, str]] = []
        self.grids: list[np.ndarray] = []  # ids of channel dims split by a reshape
        self.names = placeholder_names(program)
        self.program = program

    # -- reading nodes --------------------------------------------------------------
    def layout(self, x: Any) -> Layout | None:
        v = self.lay.get(x) if isinstance(x, fx.Node) else None
        return v if isinstance(v, Layout) else None

    def shape(self, x: Any) -> tuple[int, ...] | None:
        val = x.meta.get("val") if isinstance(x, fx.Node) else None
        if isinstance(val, torch.Tensor):
            return tuple(int(s) for s in val.shape)
        return None

    def tensors(self, node: fx.Node) -> list[fx.Node]:
        """Tensor-valued node arguments (nested lists included)."""
        found: list[fx.Node] = []

        def visit(a: Any) -> None:
            if isinstance(a, fx.Node):
                if self.shape(a) is not None or isinstance(self.lay.get(a), list):
                    found.append(a)
            elif isinstance(a, (list, tuple)):
                for b in a:
                    visit(b)
            elif isinstance(a, dict):
                for b in a.values():
                    visit(b)
        visit(node.args)
        visit(node.kwargs)
        return found

    # -- writing ------------------------------------------------------------------------
    def fresh(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.uf.new(shape)

    def pin(self, ids: np.ndarray | Layout | None, reason: str) -> None:
        if isinstance(ids, Layout):
            ids = ids.ids
        if ids is not None and ids.size:
            self.pins.append((ids.reshape(-1), reason))

    def pin_inputs(self, node: fx.Node, reason: str) -> None:
        for t in self.tensors(node):
            v = self.lay.get(t)
            for lay in v if isinstance(v, list) else [v]:
                self.pin(lay, reason)

    def mark(self, ids: np.ndarray, kind: str) -> None:
        self.marks.append((ids.reshape(-1), kind))

    def member(self, src: Src, dim: int, ids: np.ndarray, role: str) -> None:
        """Tensor dim ``dim`` of the parameter view ``src`` carries ``ids``."""
        axis = src.axes[dim] if dim < len(src.axes) else None
        if axis is None:
            self.pin(ids, f"parameter '{src.name}' is used through a view that moves its axes")
            return
        key = (src.name, axis)
        have = self.members.get(key)
        if have is None:
            self.members[key] = Member(src.name, axis, role, ids.reshape(-1).copy())
        elif have.ids.size == ids.size:  # the same parameter used twice: one class per index
            self.uf.union_arrays(have.ids, ids)
        else:
            self.pin(ids, f"parameter '{src.name}' axis {axis} is used with another size")

    def line(self, lay: Layout, dim: int) -> np.ndarray:
        """Ids along tensor dim ``dim`` alone: the ids along the layout's other dims are
        joined per index of ``dim`` (whatever removes one removes the others)."""
        k = lay.dims.index(dim)
        moved = np.moveaxis(lay.ids, k, 0).reshape(lay.ids.shape[k], -1)
        for row in moved:
            self.uf.union_all(row)
        return moved[:, 0].copy()


def _call_name(node: fx.Node) -> str:
    t = node.target
    schema = getattr(t, "_schema", None)
    if schema is not None:
        return schema.name.split("::")[-1]
    return getattr(t, "__name__", str(t))


def build(model: nn.Module, example_input: Any) -> Dependencies:
    """Trace ``model`` on ``example_input`` and derive its coupled channel classes."""
    from .ops import HANDLERS, unknown

    program = export(model, example_input)
    b = Builder(program)
    for node in program.graph.nodes:
        if node.op == "placeholder":
            name = b.names.get(node.target)
            shape = b.shape(node)
            if name is not None and shape is not None:
                b.src[node] = Src(name, tuple(range(len(shape))))
        elif node.op == "call_function":
            name = _call_name(node)
            handler = HANDLERS.get(name) or HANDLERS.get(name.rstrip("_"), unknown)
            b.lay[node] = handler(b, node)
        elif node.op == "output":
            b.pin_inputs(node, "reaches the model's output")
    return _finish(b)


def _align_grids(b: Builder) -> None:
    """A channel dim viewed as several (heads × head dim, groups × channels) can only lose
    whole slices along one of them. Grids not aligned yet are joined across every axis but
    the largest, until all are aligned."""
    changed = True
    while changed:
        changed = False
        for grid in b.grids:
            roots = b.uf.roots(grid)
            if any(_aligned(roots, k) for k in range(grid.ndim)):
                continue
            k = int(np.argmax(grid.shape))
            for row in np.moveaxis(grid, k, 0).reshape(grid.shape[k], -1):
                b.uf.union_all(row)
            changed = True


def _aligned(roots: np.ndarray, axis: int) -> bool:
    """Every class of ``roots`` holds whole slices across the axes other than ``axis``."""
    flat = np.moveaxis(roots, axis, 0).reshape(roots.shape[axis], -1)
    return bool((flat == flat[:, :1]).all())


def _finish(b: Builder) -> Dependencies:
    _align_grids(b)
    roots = {k: b.uf.roots(m.ids) for k, m in b.members.items()}
    pinned: dict[int, str] = {}
    for ids, reason in b.pins:
        for r in b.uf.roots(ids).tolist():
            pinned.setdefault(r, reason)
    kinds: dict[int, set[str]] = defaultdict(set)
    for ids, kind in b.marks:
        for r in set(b.uf.roots(ids).tolist()):
            kinds[r].add(kind)
    return Dependencies(b.members, roots, pinned, dict(kinds))
