"""Op handlers of the dependency graph, one per ATen op name, in a registry.

A handler gets the :class:`~spruce.structure.graph.Builder` and one graph node; it returns
the node's :class:`~spruce.structure.layout.Layout` (or a list for ops with several
outputs) and records members, joins and pins on the builder. An op without a handler
pins the channels of its inputs: spruce never removes a channel it cannot follow.
Layer handlers live in :mod:`spruce.structure.layers`, view handlers in
:mod:`spruce.structure.views`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from torch import fx

from .graph import PARAM, Builder, Src, _call_name
from .layout import Layout

Handler = Callable[[Builder, fx.Node], Any]
HANDLERS: dict[str, Handler] = {}


def handles(*names: str) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for n in names:
            HANDLERS[n] = fn
        return fn
    return deco


def named_args(node: fx.Node) -> dict[str, Any]:
    """The node's arguments by schema name (defaults left out)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return {}
    out = {a.name: v for a, v in zip(schema.arguments, node.args, strict=False)}
    out.update(node.kwargs)
    return out


def unknown(b: Builder, node: fx.Node) -> None:
    b.pin_inputs(node, f"op '{_call_name(node)}' may mix channels")
    return None


IGNORED = ("_assert_tensor_metadata", "_assert_async", "_assert_scalar", "sym_size",
           "sym_stride", "sym_numel", "sym_storage_offset", "sym_constrain_range",
           "sym_constrain_range_for_size", "_functional_assert_async", "_check_is_size",
           "new_zeros", "new_ones", "new_empty", "new_full", "zeros_like", "ones_like",
           "empty_like", "full_like", "rand_like", "randn_like", "randint_like", "arange",
           "zeros", "ones", "full", "empty", "scalar_tensor", "fill", "lift_fresh_copy",
           "_local_scalar_dense", "item")


@handles(*IGNORED)
def ignored(b: Builder, node: fx.Node) -> None:
    return None  # reads shapes (or nothing), never channel values


UNARY = ("relu", "gelu", "silu", "sigmoid", "tanh", "hardtanh", "hardswish", "hardsigmoid",
         "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "relu6", "log_sigmoid",
         "erf", "exp", "log", "log1p", "sqrt", "rsqrt", "reciprocal", "neg", "abs", "sin",
         "cos", "square", "sign", "clamp", "clamp_min", "clamp_max", "pow", "nan_to_num",
         "floor", "ceil", "round", "trunc", "logical_not", "bitwise_not", "isnan", "isinf",
         "detach", "alias", "clone", "contiguous", "_to_copy", "to", "dropout",
         "feature_dropout", "alpha_dropout", "type_as", "_conj", "positive")


@handles(*UNARY)
def unary(b: Builder, node: fx.Node) -> Layout | None:
    x = node.args[0]
    if any(t is not x for t in b.tensors(node)):
        return elementwise(b, node)
    if x in b.src:
        b.src[node] = b.src[x]
    return b.layout(x)


@handles("native_dropout")
def native_dropout(b: Builder, node: fx.Node) -> list:
    return [b.layout(node.args[0]), None]


# -- elementwise ------------------------------------------------------------------------

def join(b: Builder, base: Layout, other: Layout, shape: tuple[int, ...]) -> bool:
    """Union ``other``'s ids with ``base``'s at matching coordinates (broadcasting)."""
    if not set(other.dims) <= set(base.dims):
        return False
    view = [other.ids.shape[other.dims.index(d)] if d in other.dims else 1 for d in base.dims]
    try:
        wide = np.broadcast_to(other.ids.reshape(view), base.ids.shape)
    except ValueError:
        return False
    b.uf.union_arrays(wide, base.ids)
    return True


def across(b: Builder, base: Layout, dim: int, reason: str) -> None:
    """A computed tensor varies along channel dim ``dim``: positions along it can only go
    together (per index of the other channel dims), or not at all."""
    if len(base.dims) == 1:
        b.pin(base, reason)
        return
    k = base.dims.index(dim)
    for row in np.moveaxis(base.ids, k, -1).reshape(-1, base.ids.shape[k]):
        b.uf.union_all(row)


def _aligned(shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (1,) * (rank - len(shape)) + tuple(shape)


@handles("add", "sub", "mul", "div", "rsub", "maximum", "minimum", "where", "masked_fill",
         "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "gt", "le", "ge", "logical_and",
         "logical_or", "bitwise_and", "bitwise_or", "__and__", "__or__", "fmod", "remainder",
         "atan2", "hypot", "copysign", "floor_divide", "true_divide", "xlogy", "pow_")
def elementwise(b: Builder, node: fx.Node) -> Layout | None:
    out = b.shape(node)
    operands = b.tensors(node)
    if out is None:
        return unknown(b, node)
    rank = len(out)
    lays = [(t, b.layout(t)) for t in operands if b.layout(t) is not None]
    if not lays:
        srcs = [t for t in operands if t in b.src]
        if len(srcs) == 1 and b.shape(srcs[0]) == out:
            b.src[node] = b.src[srcs[0]]  # a parameter times a constant (a mask)
        return None
    moved = [(t, lay.moved({d: d + rank - len(b.shape(t)) for d in lay.dims}))
             for t, lay in lays]
    base_t, base = max(moved, key=lambda p: len(p[1].dims))
    for t, lay in moved:
        if t is not base_t and not join(b, base, lay, out):
            for _, other in moved:
                b.pin(other, f"'{_call_name(node)}' combines channels of different dims")
            return None
    if _call_name(node) in ("add", "sub") and len(moved) > 1:
        b.mark(base.ids, "stream")
    for t in operands:
        if b.layout(t) is not None:
            continue
        shape = _aligned(b.shape(t), rank)
        for d in base.dims:
            if shape[d] == 1:
                continue
            if t in b.src:
                src = b.src[t]
                axes = (None,) * (rank - len(src.axes)) + src.axes
                b.member(Src(src.name, axes), d, b.line(base, d), PARAM)
            else:
                across(b, base, d, f"'{_call_name(node)}' with a computed tensor that varies "
                                   "along the channels")
    return base


@handles("cat", "concat", "concatenate", "stack")
def cat(b: Builder, node: fx.Node) -> Layout | None:
    parts = [t for t in node.args[0]]
    out = b.shape(node)
    rank = len(out)
    dim = named_args(node).get("dim", 0) % rank
    stacked = _call_name(node) == "stack"
    lays = [b.layout(t) for t in parts]
    if all(lay is None for lay in lays):
        return None
    if stacked:
        lays = [None if lay is None else lay.moved({d: d + (d >= dim) for d in lay.dims})
                for lay in lays]
    dims = {lay.dims for lay in lays if lay is not None}
    if len(dims) != 1:
        return unknown(b, node)
    (cdims,) = dims
    if not stacked and dim in cdims:
        return _cat_channels(b, parts, lays, cdims, dim)
    base = next(lay for lay in lays if lay is not None)
    for t, lay in zip(parts, lays, strict=True):
        if lay is not None:
            if lay is not base and not join(b, base, lay, out):
                return unknown(b, node)
            continue
        shape = b.shape(t) if not stacked else b.shape(t)[:dim] + (1,) + b.shape(t)[dim:]
        for d in base.dims:
            if shape[d] == 1:
                continue
            if t in b.src and not stacked:
                b.member(b.src[t], d, b.line(base, d), PARAM)
            else:
                across(b, base, d, "cat() with a computed tensor along the channels")
    return base


def _cat_channels(b: Builder, parts: list, lays: list, cdims: tuple[int, ...],
                  dim: int) -> Layout:
    k, pieces = cdims.index(dim), []
    for t, lay in zip(parts, lays, strict=True):
        if lay is None:  # channels from elsewhere (an input, a constant): kept as they are
            shape = tuple(b.shape(t)[d] for d in cdims)
            lay = Layout(cdims, b.fresh(shape))
            b.pin(lay, "concatenated with channels that spruce cannot follow")
        pieces.append(lay.ids)
    return Layout(cdims, np.concatenate(pieces, axis=k))


# -- ops along one dim: softmax, reductions, spatial ops ------------------------------------

@handles("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod",
         "logcumsumexp")
def along_dim(b: Builder, node: fx.Node) -> Layout | None:
    lay = b.layout(node.args[0])
    if lay is None:
        return None
    dim = node.args[1] % len(b.shape(node))
    if dim in lay.dims:
        b.pin(lay, f"'{_call_name(node)}' runs along the channels")
    return lay


@handles("mean", "sum", "amax", "amin", "var", "std", "norm", "linalg_vector_norm",
         "logsumexp", "prod", "argmax", "argmin", "any", "all", "max", "min", "var_mean",
         "std_mean", "nansum", "nanmean", "count_nonzero")
def reduction(b: Builder, node: fx.Node) -> Any:
    x = node.args[0]
    lay = b.layout(x)
    if lay is None:
        return None
    rank = len(b.shape(x))
    args = named_args(node)
    dims = args.get("dim")
    dims = list(range(rank)) if dims is None or dims == [] else \
        [dims] if isinstance(dims, int) else list(dims)
    dims = [d % rank for d in dims]
    if any(d in lay.dims for d in dims):
        b.pin(lay, f"'{_call_name(node)}' reduces over the channels")
        return None
    out = lay if args.get("keepdim", False) else \
        lay.moved({d: d - sum(r < d for r in dims) for d in lay.dims})
    vals = node.meta.get("val")
    return [out] * len(vals) if isinstance(vals, (list, tuple)) else out


SPATIAL = ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
           "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d",
           "adaptive_max_pool2d", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "upsample_nearest1d", "upsample_nearest2d", "upsample_bilinear2d",
           "upsample_bicubic2d", "_upsample_nearest_exact2d", "upsample_linear1d",
           "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d",
           "pixel_unshuffle_spatial")


@handles(*SPATIAL)
def spatial(b: Builder, node: fx.Node) -> Any:
    """Per-channel ops over the spatial dims of ``[B, C, ...]``."""
    lay = b.layout(node.args[0])
    vals = node.meta.get("val")
    n = len(vals) if isinstance(vals, (list, tuple)) else 0
    if lay is not None and not set(lay.dims) <= {1}:
        b.pin(lay, f"'{_call_name(node)}' with channels off dim 1")
        lay = None
    return [lay] + [None] * (n - 1) if n else lay


@handles("constant_pad_nd", "pad")
def pad(b: Builder, node: fx.Node) -> Layout | None:
    lay = b.layout(node.args[0])
    if lay is None:
        return None
    rank = len(b.shape(node))
    padded = {rank - 1 - i // 2 for i, p in enumerate(node.args[1]) if p}
    if padded & set(lay.dims):
        b.pin(lay, "padding along the channels")
    return lay


@handles("index_select")
def index_select(b: Builder, node: fx.Node) -> Layout | None:
    lay = b.layout(node.args[0])
    if lay is not None and node.args[1] % len(b.shape(node)) in lay.dims:
        b.pin(lay, "index_select() along the channels")
        return None
    return lay


from . import layers, views  # noqa: E402,F401  (register layer, norm, attention, view handlers)
