"""Group-wise: whole columns of the view are kept or dropped.

For a Linear a column is one input feature; for a Conv2d it is one ``(c, kh, kw)`` tap
across all output channels — one row of the paper's expanded weight F, which is this view
transposed. A group-pruned layer runs as a dense GEMM on the compacted K (Algorithms 1, 2).

``unit="channel"`` makes a group every column of one input channel (the ``kh·kw`` taps of
``c`` in a Conv2d; one column in a Linear). A conv pruned so runs as a dense convolution
on the kept channels (no im2col), and ``spruce.compact`` can then remove the channels from
the producer as well.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Pattern, register

UNITS = ("column", "channel")


@register("group")
class Group(Pattern):
    def __init__(self, unit: str = "column", reduce: str = "sumsq", taps: int = 1):
        super().__init__(reduce)
        if unit not in UNITS:
            raise ValueError(f"group unit must be one of {', '.join(UNITS)}; got {unit!r} "
                             "('channel' keeps or drops every tap of an input channel)")
        if int(taps) < 1:
            raise ValueError(f"taps (columns per input channel) must be >= 1; got {taps}")
        self.unit, self.taps = unit, int(taps) if unit == "channel" else 1

    def for_view(self, taps: int) -> Group:
        return Group(self.unit, self.reduce, taps) if self.unit == "channel" else self

    def check_shape(self, shape: tuple[int, int]) -> None:
        if shape[1] % self.taps:
            raise ValueError(f"view has {shape[1]} columns, not a multiple of {self.taps} "
                             "taps per input channel")

    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        r, k = shape
        self.check_shape(shape)
        return (torch.arange(k) // self.taps).expand(r, k), k // self.taps

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "unit": self.unit} if self.unit != "column" \
            else super().spec()
