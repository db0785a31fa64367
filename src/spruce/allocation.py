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
from dataclasses import dataclass

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


CHUNK = 1 << 22  # groups per piece: the working memory is O(CHUNK + sample), not O(N)
SORT_ALL = 1 << 20  # pools up to this many groups are sorted whole
MARGIN = 6.0  # bracket half-width in standard errors of the sampled rank


def _sample_size(total: int) -> int:
    return min(1 << 22, max(1 << 16, total // 64))


@dataclass
class _Layer:
    """One layer's groups in the pool: scores [G], sizes ([G] or one number for all) and
    the group every layer keeps whatever the threshold (its best)."""

    scores: torch.Tensor
    sizes: torch.Tensor | float
    best: int = -1

    def weights(self, idx: torch.Tensor) -> torch.Tensor:
        """Sizes of the groups ``idx`` (float64)."""
        if isinstance(self.sizes, float):
            return torch.full((idx.numel(),), self.sizes, dtype=torch.float64)
        return self.sizes[idx].to(torch.float64)

    def pieces(self):
        """(start, scores) over CHUNK-sized pieces."""
        for start in range(0, self.scores.numel(), CHUNK):
            yield start, self.scores[start:start + CHUNK]

    def find_best(self) -> int:
        """Index of the highest score, the lowest such index on ties (NaN counts as -inf);
        one max per piece, then one search in the piece holding it."""
        if not self.scores.numel():
            return -1
        tops = torch.stack([torch.nan_to_num(g.max(), nan=-math.inf) for _, g in self.pieces()])
        first = int(torch.argmax(tops))
        start, g = first * CHUNK, self.scores[first * CHUNK:(first + 1) * CHUNK]
        return start + int(torch.argmax(torch.nan_to_num(g, nan=-math.inf)))


def _sample_bracket(layers: list[_Layer], need: float, attempt: int) -> tuple[float, float]:
    """Scores (lo, hi) that very likely enclose the score where the kept weight reaches
    ``need``, from a seeded random sample of every layer's groups; wider at every
    ``attempt``, and the whole range at the fourth."""
    total = sum(u.scores.numel() for u in layers)
    if total <= SORT_ALL or attempt >= 3:
        return -math.inf, math.inf  # sort every live group
    gen, size = torch.Generator().manual_seed(0), _sample_size(total)
    values, weights = [], []
    for u in layers:
        n = max(1, math.ceil(size * u.scores.numel() / total))
        idx = torch.randint(u.scores.numel(), (n,), generator=gen)
        values.append(u.scores[idx].to(torch.float64))
        weights.append(u.weights(idx) * (u.scores.numel() / n))
    v, w = torch.cat(values), torch.cat(weights)
    v, order = torch.sort(torch.nan_to_num(v, nan=-math.inf), descending=True)
    w = torch.where(v > -math.inf, w[order], torch.zeros_like(v))
    r = int(torch.searchsorted(torch.cumsum(w, 0), torch.tensor([need], dtype=torch.float64)))
    m = int(MARGIN * 8 ** attempt * math.sqrt(v.numel())) + 16
    hi = float(v[r - m]) if r - m >= 0 else math.inf
    lo = float(v[r + m]) if r + m < v.numel() else -math.inf
    return lo, hi


def _split(layers: list[_Layer], keep: list[torch.Tensor], lo: float, hi: float
           ) -> tuple[float, list[torch.Tensor], float]:
    """Flag in ``keep`` the live groups scoring above ``hi``; return their weight, per
    layer the indices of the live groups scoring in ``[lo, hi]`` and their weight. The
    pre-kept best groups are counted in neither."""
    above, cands, inside = 0.0, [], 0.0
    buf = torch.empty(min(CHUNK, max((u.scores.numel() for u in layers), default=0)),
                      dtype=torch.bool)
    for u, k in zip(layers, keep, strict=True):
        found = []
        for start, g in u.pieces():
            over, between = k[start:start + g.numel()], buf[:g.numel()]
            torch.gt(g, hi, out=over)
            torch.ge(g, lo, out=between) if lo > -math.inf else torch.gt(g, lo, out=between)
            between.logical_xor_(over)  # lo <= g <= hi (NaN is in neither)
            if start <= u.best < start + g.numel():
                over[u.best - start] = between[u.best - start] = False
            above += float(over.count_nonzero()) * u.sizes if isinstance(u.sizes, float) \
                else float(u.weights(over.nonzero().flatten() + start).sum())
            found.append(between.nonzero().flatten() + start)
        idx = torch.cat(found) if found else torch.zeros(0, dtype=torch.long)
        inside += float(u.weights(idx).sum())
        cands.append(idx)
    return above, cands, inside


def pooled_keep(pool: dict[str, tuple[torch.Tensor, torch.Tensor | float]], target: float
                ) -> dict[str, torch.Tensor]:
    """Keep flags per layer: every layer's best group, then the best groups of the whole
    pool in score order (ties to the earlier layer, then the lower index) while the kept
    weight is below ``target``. ``pool``: name → (group scores [G], group sizes [G] or
    one size). Groups scoring -inf or NaN are never added.

    Exact, fast and in bounded memory: a seeded sample brackets the last score kept; one
    pass over CHUNK-sized pieces flags the groups above the bracket and collects those
    inside it (a small fraction); those alone are sorted exactly (stable, so ties keep the
    pool's order). A bracket that missed (rare) is widened and the pass repeated.
    """
    layers = [_Layer(g, _one_size(s)) for g, s in pool.values()]
    keep = [torch.zeros(u.scores.numel(), dtype=torch.bool) for u in layers]
    base = 0.0
    for u in layers:
        u.best = u.find_best()
        if u.best >= 0:  # every layer keeps at least its best group
            base += float(u.weights(torch.tensor([u.best])).sum())
    need, attempt = target - base, 0
    while need > 0:
        lo, hi = _sample_bracket(layers, need, attempt)
        above, cands, inside = _split(layers, keep, lo, hi)
        if above < need and (above + inside >= need or lo == -math.inf):
            _keep_best_candidates(layers, keep, cands, need - above)
            break
        attempt += 1
    for u, k in zip(layers, keep, strict=True):
        if u.best >= 0:
            k[u.best] = True
    return dict(zip(pool, keep, strict=True))


def _keep_best_candidates(layers: list[_Layer], keep: list[torch.Tensor],
                          cands: list[torch.Tensor], room: float) -> None:
    """Keep the best candidates while the weight kept before each is below ``room``
    (sorted by score, ties in pool order)."""
    vals = torch.cat([u.scores[c].to(torch.float64) for u, c in zip(layers, cands,
                                                                     strict=True)])
    w = torch.cat([u.weights(c) for u, c in zip(layers, cands, strict=True)])
    owner = torch.cat([torch.full((c.numel(),), i) for i, c in enumerate(cands)])
    local = torch.cat(cands)
    order = torch.sort(vals, descending=True, stable=True)[1]
    w = w[order]
    chosen = order[(torch.cumsum(w, 0) - w) < room]
    for i, k in enumerate(keep):
        k[local[chosen[owner[chosen] == i]]] = True


def _one_size(sizes: torch.Tensor | float) -> torch.Tensor | float:
    """A single float when every group has the same size (no per-group tensor needed)."""
    if not isinstance(sizes, torch.Tensor):
        return float(sizes)
    if sizes.numel() and sizes.stride() == (0,) or bool((sizes == sizes[:1]).all()):
        return float(sizes[0]) if sizes.numel() else 1.0
    return sizes.to(torch.float64)


def _pooled_selection(pool: dict[str, tuple[torch.Tensor, torch.Tensor]], density: float,
                      normalise: Callable[[torch.Tensor], torch.Tensor] | None
                      ) -> dict[str, torch.Tensor]:
    """Choose groups across layers. ``pool``: name → (group scores, group sizes)."""
    total = sum(float(s.sum()) for _, s in pool.values())
    target = math.floor(density * total + 0.5)
    if normalise is not None:
        pool = {n: (normalise(g), s) for n, (g, s) in pool.items()}
    return pooled_keep(pool, target)


def _lamp_normalise(g: torch.Tensor) -> torch.Tensor:
    live = g > -math.inf
    if bool(live.all()):
        return lamp_scores(g.clamp_min(0))
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

