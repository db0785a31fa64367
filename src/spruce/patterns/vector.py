"""Vector-wise N:M: in every run of M consecutive entries along K, keep exactly N.

2:4 is what sparse tensor cores run. The paper's "vector-wise" is N:M with M the vector
size. When K is not a multiple of M, the last, partial run of length L keeps
``ceil(N·L/M)`` entries. The density is fixed at N/M: asking for another is an error.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Pattern, check_density, register


@register("vector")
class Vector(Pattern):
    def __init__(self, n: int = 2, m: int = 4, reduce: str = "sumsq"):
        super().__init__(reduce)
        n, m = int(n), int(m)
        if m < 1 or n < 1 or n > m:
            raise ValueError(f"N:M needs 1 <= N <= M; got {n}:{m} (e.g. use '2:4')")
        self.n, self.m = n, m

    def fixed_density(self) -> float:
        return self.n / self.m

    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        n = shape[0] * shape[1]
        return torch.arange(n).reshape(shape), n

    def run_quota(self, length: int) -> int:
        """Entries kept in a run of ``length`` (M for full runs, shorter at the end)."""
        return math.ceil(self.n * length / self.m)

    def compute_mask(self, scores: torch.Tensor, density: float | None = None,
                     existing: torch.Tensor | None = None) -> torch.Tensor:
        if density is not None:
            density = check_density(density)
            if abs(density - self.fixed_density()) > 1e-9:
                raise ValueError(f"N:M {self.n}:{self.m} keeps exactly {self.fixed_density():g} "
                                 f"of the weights; density={density:g} was asked (drop the "
                                 f"density or choose another N:M)")
        s = scores.detach().to(torch.float64)
        if existing is not None:
            s = torch.where(existing, s, torch.full_like(s, -math.inf))
        r, k = s.shape
        mask = torch.zeros(r, k, dtype=torch.bool)
        full = (k // self.m) * self.m
        if full:
            runs = s[:, :full].reshape(r, full // self.m, self.m)
            mask[:, :full] = _keep_top(runs, self.n).reshape(r, full)
        if full < k:
            mask[:, full:] = _keep_top(s[:, full:], self.run_quota(k - full))
        return mask if existing is None else mask & existing

    def conforms(self, mask: torch.Tensor) -> str | None:
        r, k = mask.shape
        full = (k // self.m) * self.m
        counts = mask[:, :full].reshape(r, -1, self.m).sum(-1) if full else torch.zeros(1)
        if full and int(counts.max()) > self.n:
            return f"a run of {self.m} keeps {int(counts.max())} entries (at most {self.n} allowed)"
        if full < k and int(mask[:, full:].sum(-1).max()) > self.run_quota(k - full):
            return f"the last partial run keeps more than {self.run_quota(k - full)} entries"
        return None

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "n": self.n, "m": self.m}


def _keep_top(s: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask keeping the ``k`` largest along the last dim; ties → lower index."""
    order = torch.argsort(-s, dim=-1, stable=True)
    keep = torch.zeros_like(s, dtype=torch.bool)
    return keep.scatter_(-1, order[..., :k], True)
