"""Allocation: how much of each layer is kept.

- ``uniform``: every layer at the requested density (exact per layer);
- ``global``: one threshold over the group scores of all layers — the best groups of the
  whole model are kept until the requested fraction of the weights is reached;
- ``lamp``: the same, on LAMP-normalised group scores (each layer's scores divided by the
  sum of the scores not smaller than them), which makes layers comparable.

A layer named in ``overrides`` (glob → density) is held at that density outside the global
pool. A pattern with a fixed density (N:M) keeps it under every scope. Every layer keeps at
least one group.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable

import torch

from .criteria.simple import lamp_scores
from .patterns import Pattern

SCOPES = ("uniform", "global", "lamp")


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; valid: {', '.join(SCOPES)}")
    return scope


def override_for(name: str, overrides: dict[str, float]) -> float | None:
    """Density for ``name`` from the first matching override glob, else None."""
    for glob, density in overrides.items():
        if name == glob or fnmatch.fnmatchcase(name, glob):
            return float(density)
    return None


def _pooled_selection(pool: dict[str, tuple[torch.Tensor, torch.Tensor]], density: float,
                      normalise: Callable[[torch.Tensor], torch.Tensor] | None
                      ) -> dict[str, torch.Tensor]:
    """Choose groups across layers. ``pool``: name → (group scores, group sizes)."""
    names = list(pool)
    scores, sizes, owner = [], [], []
    keep = {n: torch.zeros(pool[n][0].numel(), dtype=torch.bool) for n in names}
    for i, n in enumerate(names):
        g, s = pool[n]
        g = normalise(g) if normalise else g
        best = int(torch.argsort(-g, stable=True)[0])
        keep[n][best] = True  # every layer keeps at least its best group
        scores.append(g)
        sizes.append(s)
        owner.append(torch.full_like(s, i, dtype=torch.long))
    all_scores, all_sizes, all_owner = torch.cat(scores), torch.cat(sizes), torch.cat(owner)
    local = torch.cat([torch.arange(pool[n][0].numel()) for n in names])
    target = math.floor(density * float(all_sizes.sum()) + 0.5)
    kept = sum(float(pool[n][1][keep[n]].sum()) for n in names)
    for j in torch.argsort(-all_scores, stable=True).tolist():
        if kept >= target:
            break
        n = names[int(all_owner[j])]
        if not keep[n][local[j]] and all_scores[j] > -math.inf:
            keep[n][local[j]] = True
            kept += float(all_sizes[j])
    return keep


def _lamp_normalise(g: torch.Tensor) -> torch.Tensor:
    live = g > -math.inf
    out = torch.full_like(g, -math.inf)
    out[live] = lamp_scores(g[live].clamp_min(0))
    return out


def allocate(patterns: dict[str, Pattern], scores: dict[str, torch.Tensor],
             existing: dict[str, torch.Tensor | None], density: float | None, scope: str,
             overrides: dict[str, float]) -> dict[str, torch.Tensor]:
    """Boolean 2-D masks for every layer in ``patterns`` (same keys as ``scores``)."""
    check_scope(scope)
    masks: dict[str, torch.Tensor] = {}
    pool: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    ids: dict[str, torch.Tensor] = {}
    for name, pattern in patterns.items():
        fixed = pattern.fixed_density()
        layer_density = override_for(name, overrides)
        if fixed is not None or scope == "uniform" or layer_density is not None:
            d = layer_density if layer_density is not None else density
            masks[name] = pattern.compute_mask(scores[name], fixed if d is None else d,
                                               existing[name])
            continue
        pattern.check_shape(tuple(scores[name].shape))
        g, sizes, ids[name] = pattern.group_scores(scores[name], existing[name])
        pool[name] = (g, sizes)
    if pool:
        keep = _pooled_selection(pool, density, _lamp_normalise if scope == "lamp" else None)
        for name, k in keep.items():
            mask = patterns[name].expand(k, ids[name])
            masks[name] = mask if existing[name] is None else mask & existing[name]
    return {name: masks[name] for name in patterns}

