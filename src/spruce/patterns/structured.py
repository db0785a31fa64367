"""Structured masks from the coupled scope: kept output rows × kept input channels.

``spruce.prune(..., scope="coupled")`` removes whole channels, heads and residual-stream
channels from every layer they touch: a layer loses the rows that write a removed channel
and the columns (every ``kh·kw`` tap of an input channel) that read one. Its mask is the
outer product of a row mask and a channel mask. This pattern checks that structure (for
files) — it does not choose masks by itself: the dependency graph does.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Pattern, register


@register("structured")
class Structured(Pattern):
    def __init__(self, reduce: str = "sumsq", taps: int = 1):
        super().__init__(reduce)
        self.taps = max(1, int(taps))

    def for_view(self, taps: int) -> Structured:
        return Structured(self.reduce, taps)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        raise ValueError("structured masks come from the dependency graph: use "
                         "spruce.prune(model, pattern='channel', scope='coupled', "
                         "example_input=x)")

    def conforms(self, mask: torch.Tensor) -> str | None:
        m = mask.bool()
        rows, cols = m.any(1), m.any(0)
        if not torch.equal(m, rows[:, None] & cols[None, :]):
            return "the mask is not kept rows × kept columns"
        if cols.numel() % self.taps == 0:
            per_channel = cols.reshape(-1, self.taps)
            if (per_channel.any(1) != per_channel.all(1)).any():
                return f"an input channel is partly kept (its {self.taps} taps go together)"
        return None
