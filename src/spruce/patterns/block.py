"""Block-wise: tiles of ``bo × bk`` in the view are kept or dropped whole.

Tiles are laid from the top-left corner; tiles cut by the right or bottom edge are tiles
too (smaller ones). Kept tiles = ``kept_count(density, number of tiles)``.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Pattern, register


@register("block")
class Block(Pattern):
    def __init__(self, block: tuple[int, int] | list[int] = (8, 8), reduce: str = "sumsq"):
        super().__init__(reduce)
        bo, bk = (int(b) for b in block)
        if bo < 1 or bk < 1:
            raise ValueError(f"block sides must be >= 1; got block=({bo}, {bk})")
        self.block = (bo, bk)

    def check_shape(self, shape: tuple[int, int]) -> None:
        bo, bk = self.block
        if bo > shape[0] or bk > shape[1]:
            raise ValueError(f"block {bo}x{bk} is larger than the weight view {shape[0]}x"
                             f"{shape[1]}; use a smaller block or exclude this layer")

    def grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        bo, bk = self.block
        return -(-shape[0] // bo), -(-shape[1] // bk)

    def group_ids(self, shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
        bo, bk = self.block
        _, nbk = self.grid(shape)
        rows = torch.arange(shape[0]) // bo
        cols = torch.arange(shape[1]) // bk
        ids = rows.unsqueeze(1) * nbk + cols.unsqueeze(0)
        n_tiles = self.grid(shape)[0] * nbk
        return ids, n_tiles

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "block": list(self.block)}
