"""``spruce.prune(..., scope="coupled")``: choose channels, heads and residual-stream
channels jointly over the dependency graph, and mask every member of what is removed.

Each coupled group (see :mod:`spruce.structure.groups`) keeps ``round(density · units)``
of its units (at least one). A unit's importance is the sum, over every layer weight it
touches (the rows it writes, the columns that read it), of the criterion's squared entry
scores — Torch-Pruning's group importance. A removed unit is masked in every layer of its
group: the rows that write it and the columns that read it. The masked model then
computes exactly what :func:`spruce.compact` makes of it, so it can be fine-tuned with its
masks and compacted afterwards with no difference.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..criteria import get_criterion
from ..errors import SpruceError
from ..masks import attach, get_mask, original_weight
from ..patterns.base import check_density, kept_count, top_groups
from ..view import kind_of, skip_reason, unview, view_of
from .graph import build
from .groups import CoupledGroup, coupled_groups

SPEC = {"name": "structured"}


@dataclass(frozen=True)
class CoupledOptions:
    """What the coupled scope may remove."""

    stream: bool = True  # residual-stream channels (every member of a residual add at once)
    heads: bool = True  # whole attention heads (KV groups under grouped-query attention)
    channels: bool = True  # inner channels (a layer's outputs read by layers only)


def options(coupled: dict[str, bool] | CoupledOptions | None) -> CoupledOptions:
    if coupled is None or isinstance(coupled, CoupledOptions):
        return coupled or CoupledOptions()
    unknown = set(coupled) - set(CoupledOptions.__dataclass_fields__)
    if unknown:
        raise SpruceError(f"unknown coupled option(s) {sorted(unknown)}; valid: stream, "
                          "heads, channels (each True or False)")
    return CoupledOptions(**coupled)


def _layer(model: nn.Module, name: str) -> tuple[str, nn.Module] | None:
    path, _, attr = name.rpartition(".")
    mod = model.get_submodule(path) if path else model
    if attr != "weight" or kind_of(mod) is None or skip_reason(mod):
        return None
    return path, mod


def _why_whole(model: nn.Module, g: CoupledGroup, opts: CoupledOptions,
               exclude: list[str]) -> str | None:
    if g.pinned:
        return g.pinned
    if not g.readers():
        return "no layer reads these channels"
    allowed = {"heads": opts.heads, "stream": opts.stream, "channels": opts.channels}
    if not allowed[g.kind]:
        return f"coupled={{'{g.kind}': False}}"
    for name, _ in g.members:
        path = name.rpartition(".")[0]
        if any(fnmatch.fnmatchcase(path, p) or path == p or path.startswith(p + ".")
               for p in exclude):
            return f"excluded by the caller ('{path}')"
    for key in g.readers():
        if _layer(model, key[0]) is None:
            return f"reader '{key[0]}' is not a prunable layer weight, so it cannot be masked"
    return None


def _unit_scores(g: CoupledGroup, weights: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per unit: the sum of squared entry scores over every layer weight it touches."""
    per_axis = {}
    for name, axis in g.members:
        if name in weights:
            s = weights[name].double().pow(2)
            others = [d for d in range(s.dim()) if d != axis]
            per_axis[(name, axis)] = s.sum(dim=others) if others else s
    total = torch.zeros(len(g.units), dtype=torch.float64)
    for u, pos in enumerate(g.positions):
        for key, vec in per_axis.items():
            total[u] += vec[torch.as_tensor(pos[key])].sum()
    return total


def plan(model: nn.Module, example_input: Any, density: float, criterion: Any = "magnitude",
         exclude: list[str] | tuple[str, ...] = (), coupled: Any = None
         ) -> tuple[list[CoupledGroup], list[tuple[int, set[int], str | None]]]:
    """The groups and, per group, the units to remove (and why a group stays whole)."""
    density = check_density(density)
    opts = options(coupled)
    groups = coupled_groups(build(model, example_input))
    layers = {}
    for g in groups:
        for name, _ in g.members:
            found = _layer(model, name)
            if found:
                layers[name] = found
    crit = get_criterion(criterion)
    views = crit.scores(model, {path: mod for path, mod in layers.values()})
    weights = {name: unview(mod, views[path].detach().cpu())
               for name, (path, mod) in layers.items()}
    choice = []
    for gi, g in enumerate(groups):
        why = _why_whole(model, g, opts, list(exclude))
        if why is not None:
            choice.append((gi, set(), why))
            continue
        keep = top_groups(_unit_scores(g, weights), kept_count(density, len(g.units)))
        choice.append((gi, set(np.nonzero(~keep.numpy())[0].tolist()), None))
    return groups, choice


def masks_for(model: nn.Module, groups: list[CoupledGroup],
              choice: list[tuple[int, set[int], str | None]]) -> dict[str, torch.Tensor]:
    """Boolean masks (weight layout) for every layer weight that loses a row or column."""
    masks: dict[str, torch.Tensor] = {}
    for gi, units, _ in choice:
        g = groups[gi]
        for name, axis in g.members:
            found = _layer(model, name)
            if found is None or not units:
                continue
            w = original_weight(found[1])
            m = masks.setdefault(found[0], torch.ones(w.shape, dtype=torch.bool))
            idx = torch.as_tensor(np.concatenate([g.positions[u][(name, axis)] for u in units]))
            m.index_fill_(axis, idx, False)
    return masks


def prune_coupled(model: nn.Module, density: float, criterion: Any, example_input: Any,
                  exclude: list[str] | tuple[str, ...] = (), coupled: Any = None
                  ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Mask the model (in place) and return the masks and one summary per group."""
    groups, choice = plan(model, example_input, density, criterion, exclude, coupled)
    masks = masks_for(model, groups, choice)
    for path, m in masks.items():
        layer = model.get_submodule(path)
        attach(layer, view_of(layer, m), {"patterns": [dict(SPEC)], "scope": "coupled"})
    summary = [{"group": groups[gi].name, "kind": groups[gi].kind,
                "units": len(groups[gi].units), "kept": len(groups[gi].units) - len(units),
                "reason": why} for gi, units, why in choice]
    return {p: get_mask(model.get_submodule(p)) for p in masks}, summary

