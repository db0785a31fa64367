"""Element-wise (unstructured): any entries; keeps exactly ``kept_count(density, R·K)``."""

from __future__ import annotations

import math

import torch

from .base import Pattern, register


@register("element")
class Element(Pattern):
    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        n = shape[0] * shape[1]
        return torch.arange(n).reshape(shape), n

    def conforms(self, mask: torch.Tensor) -> str | None:
        return None  # every mask is an element mask

    def group_scores(self, scores: torch.Tensor, alive: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One group per entry: the base class's result without its per-group sums (every
        reduction of one entry is the entry, squared for ``sumsq``); sizes are a stride-0
        view of ones, so millions of entries cost no extra memory."""
        g = scores.detach().reshape(-1).to(torch.float64)
        g = g.square() if self.reduce == "sumsq" else g.clone()
        if alive is not None:
            g.masked_fill_(~alive.reshape(-1), -math.inf)
        ids, n = self.group_ids(tuple(scores.shape))
        return g, torch.ones((), dtype=torch.float64).expand(n), ids

    def expand(self, keep: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return keep.reshape(ids.shape)
