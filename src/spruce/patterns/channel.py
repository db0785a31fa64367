"""Channel-wise (filter pruning): whole rows of the view — output features/channels."""

from __future__ import annotations

import torch

from .base import Pattern, register


@register("channel")
class Channel(Pattern):
    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        r, k = shape
        return torch.arange(r).unsqueeze(1).expand(r, k), r
