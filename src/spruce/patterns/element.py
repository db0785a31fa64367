"""Element-wise (unstructured): any entries; keeps exactly ``kept_count(density, R·K)``."""

from __future__ import annotations

import torch

from .base import Pattern, register


@register("element")
class Element(Pattern):
    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        n = shape[0] * shape[1]
        return torch.arange(n).reshape(shape), n

    def conforms(self, mask: torch.Tensor) -> str | None:
        return None  # every mask is an element mask
