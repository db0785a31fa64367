"""Slice parameters to the kept channels and fix the settings of the modules that own them.

:func:`slice_model` takes ``{(parameter name, axis): kept indices}`` and rewrites a model in
place: each parameter/buffer becomes its kept slice (a masked weight's original *and* its
mask), shared parameters stay shared, and every module whose tensors changed — and every
attention module above one — has its shape settings (``in_features``, ``out_channels``,
``num_features``, ``groups``, head counts …) recomputed by a registry of fix-ups.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..masks import WeightMask

FIXUPS: dict[type, Callable[[nn.Module], None]] = {}


def fixup(*types: type) -> Callable:
    def deco(fn: Callable[[nn.Module], None]) -> Callable[[nn.Module], None]:
        for t in types:
            FIXUPS[t] = fn
        return fn
    return deco


def weight_of(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    if parametrize.is_parametrized(module, attr):
        return getattr(module.parametrizations, attr).original
    return getattr(module, attr)


@fixup(nn.Linear)
def _linear(m: nn.Module) -> None:
    w = weight_of(m)
    m.out_features, m.in_features = int(w.shape[0]), int(w.shape[1])


@fixup(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv(m: nn.Module) -> None:
    w = weight_of(m)
    depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    m.out_channels = int(w.shape[0])
    if depthwise:
        m.groups = m.in_channels = m.out_channels
    else:
        m.in_channels = int(w.shape[1]) * m.groups


@fixup(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d)
def _norm(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = int(t.shape[0])


@fixup(nn.Embedding)
def _embedding(m: nn.Module) -> None:
    m.embedding_dim = int(weight_of(m).shape[1])


def _conv1d_transformers(m: nn.Module) -> None:
    w = weight_of(m)
    m.nx, m.nf = int(w.shape[0]), int(w.shape[1])


try:  # transformers' Conv1D (GPT-2) stores its weight [in, out]
    from transformers.pytorch_utils import Conv1D

    FIXUPS[Conv1D] = _conv1d_transformers
except ImportError:  # pragma: no cover - transformers is an optional extra
    pass

HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads")
HEAD_DIMS = ("head_dim", "attention_head_size", "key_value_proj_dim", "d_kv", "head_size")
QUERIES = ("q_proj", "query", "q", "q_lin", "c_attn", "qkv", "in_proj")
WIDTHS = ("all_head_size", "inner_dim", "split_size")


def _out_size(proj: nn.Module) -> int | None:
    for attr in ("out_features", "nf", "out_channels"):
        if hasattr(proj, attr):
            return int(getattr(proj, attr))
    return None


def attention_fixup(m: nn.Module) -> bool:
    """Recompute an attention module's head count (and widths) from its query projection;
    True when ``m`` looked like one."""
    heads = next((a for a in HEAD_COUNTS if isinstance(getattr(m, a, None), int)), None)
    dim = next((a for a in HEAD_DIMS if isinstance(getattr(m, a, None), int)), None)
    query = next((a for a in QUERIES if isinstance(getattr(m, a, None), nn.Module)), None)
    if heads is None or dim is None or query is None:
        return False
    size = _out_size(getattr(m, query))
    if size is None:
        return False
    packed = query in ("c_attn", "qkv", "in_proj")  # q, k, v in one projection
    width = size // (getattr(m, "_spruce_packed", 3) if packed else 1)
    n = width // getattr(m, dim)
    old = getattr(m, heads)
    setattr(m, heads, n)
    for attr in WIDTHS:
        if isinstance(getattr(m, attr, None), int) and getattr(m, attr) == old * getattr(m, dim):
            setattr(m, attr, width)
    if isinstance(getattr(m, "num_key_value_heads", None), int):
        k = next((getattr(m, a) for a in ("k_proj", "key", "k") if hasattr(m, a)), None)
        if k is not None and _out_size(k):
            m.num_key_value_heads = _out_size(k) // getattr(m, dim)
    return True


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """id(tensor) → every (module, attribute) holding it (shared parameters included)."""
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for mod in model.modules():
        for attr, t in [*mod._parameters.items(), *mod._buffers.items()]:
            if t is not None:
                owners.setdefault(id(t), []).append((mod, attr))
    return owners


def _slice_one(model: nn.Module, name: str, axis: int, keep: torch.Tensor,
               owners: dict[int, list[tuple[nn.Module, str]]]) -> list[nn.Module]:
    path, _, attr = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    if parametrize.is_parametrized(module, attr):
        plist = getattr(module.parametrizations, attr)
        for p in plist:
            if isinstance(p, WeightMask):
                p.mask = p.mask.index_select(axis, keep.to(p.mask.device))
        holder, key = plist, "original"
    else:
        holder, key = module, attr
    old = getattr(holder, key)
    new = old.detach().index_select(axis, keep.to(old.device))
    if old.dim() == 4 and old.is_contiguous(memory_format=torch.channels_last) \
            and not old.is_contiguous():  # keep a channels-last conv weight channels-last
        new = new.contiguous(memory_format=torch.channels_last)
    touched = []
    for mod, a in owners.get(id(old), [(holder, key)]):
        if isinstance(old, nn.Parameter):
            mod._parameters[a] = nn.Parameter(new, requires_grad=old.requires_grad)
        else:
            mod._buffers[a] = new
        touched.append(mod)
    owners[id(getattr(holder, key))] = owners.pop(id(old), [(holder, key)])
    return touched + [module]


def slice_model(model: nn.Module, keep: dict[tuple[str, int], torch.Tensor]) -> list[str]:
    """Slice every ``(parameter, axis)`` of ``model`` to its kept indices (in place) and fix
    the touched modules; returns the names of the modules changed."""
    owners = _owners(model)
    touched: dict[int, nn.Module] = {}
    for (name, axis), idx in keep.items():
        for mod in _slice_one(model, name, axis, idx, owners):
            touched[id(mod)] = mod
    changed = []
    for path, mod in model.named_modules():  # layers first: attention reads their sizes
        if id(mod) in touched:
            fn = _fixup_for(mod)
            if fn is not None:
                fn(mod)
            changed.append(path)
    for path, mod in model.named_modules():
        if id(mod) not in touched and any(id(m) in touched for m in mod.modules()) \
                and attention_fixup(mod):
            changed.append(path)
    return changed


def _fixup_for(mod: nn.Module) -> Callable[[nn.Module], None] | None:
    for cls in type(mod).__mro__:
        if cls in FIXUPS:
            return FIXUPS[cls]
    return None
