"""The pattern contract and its registry.

A pattern partitions the 2-D weight view ``[R, K]`` into groups (single entries, tiles,
columns, rows), turns entry scores into one score per group, and keeps an exact number of
groups. It never knows which criterion produced the scores. Every pattern is a small class
registered under a name; ``get_pattern`` resolves a name, a spec dict or an instance.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

_REGISTRY: dict[str, type[Pattern]] = {}

REDUCTIONS = ("sumsq", "sum", "mean", "max")


def register(name: str):
    def deco(cls: type[Pattern]) -> type[Pattern]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def kept_count(density: float, n: int) -> int:
    """Exact number of units kept at ``density`` out of ``n``: round half up, at least 1."""
    return min(n, max(1, math.floor(density * n + 0.5)))


def check_density(density: float) -> float:
    d = float(density)
    if not (0.0 < d <= 1.0) or math.isnan(d):
        raise ValueError(f"density must be in (0, 1] (the fraction of weights kept); got {density}")
    return d


class Pattern:
    """Base class: subclasses define ``group_ids`` (and may override ``compute_mask``)."""

    name: ClassVar[str] = "?"

    def __init__(self, reduce: str = "sumsq"):
        if reduce not in REDUCTIONS:
            raise ValueError(f"unknown group reduction {reduce!r}; valid: {', '.join(REDUCTIONS)}")
        self.reduce = reduce

    # -- what subclasses define -------------------------------------------------------
    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Entry → group index, a LongTensor of ``shape``, and the number of groups."""
        raise NotImplementedError

    def fixed_density(self) -> float | None:
        """The only density this pattern can produce, or None if any density is valid."""
        return None

    def check_shape(self, shape: tuple[int, int]) -> None:
        """Raise ValueError if the pattern cannot apply to a view of ``shape``."""

    def for_view(self, taps: int) -> Pattern:
        """The pattern for one layer whose view has ``taps`` columns per input channel
        (``spruce.view.taps``). Most patterns ignore it and return themselves."""
        return self

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "reduce": self.reduce}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pattern) and self.spec() == other.spec()

    # -- shared machinery ----------------------------------------------------------
    def group_scores(self, scores: torch.Tensor, alive: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(group scores [G] float64, group sizes [G], group ids [R, K]).

        Entries already pruned (``alive`` False) contribute nothing; a group with no live
        entry scores -inf so it is never chosen over a live one.
        """
        ids, n_groups = self.group_ids(tuple(scores.shape))
        flat_ids = ids.reshape(-1)
        s = scores.detach().reshape(-1).to(torch.float64)
        live = torch.ones_like(s, dtype=torch.bool) if alive is None else alive.reshape(-1)
        s = torch.where(live, s, torch.zeros_like(s))
        sizes = torch.zeros(n_groups, dtype=torch.float64).index_add_(
            0, flat_ids, torch.ones_like(s))
        if self.reduce == "max":
            g = torch.full((n_groups,), -math.inf, dtype=torch.float64)
            g = g.scatter_reduce(0, flat_ids, torch.where(live, s, -math.inf), "amax")
        else:
            vals = s * s if self.reduce == "sumsq" else s
            g = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, flat_ids, vals)
            if self.reduce == "mean":
                g = g / sizes
        n_live = torch.zeros(n_groups, dtype=torch.float64).index_add_(
            0, flat_ids, live.to(torch.float64))
        g = torch.where(n_live > 0, g, torch.full_like(g, -math.inf))
        return g, sizes, ids

    def expand(self, keep: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Group keep flags [G] → entry mask of ids' shape."""
        return keep[ids]

    def compute_mask(self, scores: torch.Tensor, density: float,
                     existing: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean mask of ``scores``' shape keeping ``kept_count(density, G)`` groups.

        Ties go to the lower group index. The result never keeps an entry that
        ``existing`` removed.
        """
        density = check_density(density)
        self.check_shape(tuple(scores.shape))
        g, _, ids = self.group_scores(scores, existing)
        keep = top_groups(g, kept_count(density, g.numel()))
        mask = self.expand(keep, ids)
        return mask if existing is None else mask & existing

    def conforms(self, mask: torch.Tensor) -> str | None:
        """None if the 2-D ``mask`` has this pattern's structure, else what is wrong."""
        ids, n_groups = self.group_ids(tuple(mask.shape))
        flat = ids.reshape(-1)
        m = mask.reshape(-1).to(torch.float64)
        kept = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, flat, m)
        size = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, flat, torch.ones_like(m))
        partial = ((kept > 0) & (kept < size)).nonzero()
        if partial.numel():
            return (f"{partial.numel()} {self.name} group(s) are partly kept "
                    f"(first: #{int(partial[0])})")
        return None


def top_groups(group_scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep flags for the ``k`` best groups; ties broken by lower index (stable sort)."""
    order = torch.argsort(-group_scores, stable=True)
    keep = torch.zeros(group_scores.numel(), dtype=torch.bool)
    keep[order[:k]] = True
    return keep


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_pattern(pattern: str | dict | Pattern, **kwargs: Any) -> Pattern:
    """Resolve ``"element"``, ``"vector"``/``"n:m"`` (with ``n, m``), ``"2:4"``-style strings,
    ``"block"`` (with ``block=(bo, bk)``), ``"group"``, ``"channel"``, a spec dict or an
    instance."""
    if isinstance(pattern, Pattern):
        return pattern
    if isinstance(pattern, dict):
        spec = dict(pattern)
        return get_pattern(spec.pop("name"), **spec)
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a name, a spec dict or a Pattern; got {type(pattern)}")
    key = pattern.strip().lower()
    if ":" in key and key != "n:m":
        n, _, m = key.partition(":")
        try:
            kwargs = {**kwargs, "n": int(n), "m": int(m)}
        except ValueError:
            raise ValueError(f"cannot read N:M pattern {pattern!r}; write e.g. '2:4'") from None
        key = "vector"
    if key == "n:m":
        key = "vector"
    if key not in _REGISTRY:
        raise ValueError(f"unknown pattern {pattern!r}; valid: {', '.join(names())}, "
                         "or an 'N:M' string such as '2:4'")
    return _REGISTRY[key](**kwargs)
