"""Group-wise: whole columns of the view are kept or dropped.

For a Linear a column is one input feature; for a Conv2d it is one ``(c, kh, kw)`` tap
across all output channels — one row of the paper's expanded weight F, which is this view
transposed. A group-pruned layer runs as a dense GEMM on the compacted K (Algorithms 1, 2).
"""

from __future__ import annotations

import torch

from .base import Pattern, register


@register("group")
class Group(Pattern):
    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        r, k = shape
        return torch.arange(k).expand(r, k), k
