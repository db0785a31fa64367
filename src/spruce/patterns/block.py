"""Block-wise: tiles of ``bo × bk`` in the view are kept or dropped whole.

Tiles are laid from the top-left corner; tiles cut by the right or bottom edge are tiles
too (smaller ones). Kept tiles = ``kept_count(density, number of tiles)``.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from ..errors import SpruceError
from .base import Pattern, register


BLOCK_FORMS = "an int (8 → 8x8), a string '8x8' or a pair (8, 8) of sides >= 1"


def parse_block(block: Any) -> tuple[int, int]:
    """``(bo, bk)`` from ``8``, ``"8x8"``, ``"8"`` or ``(8, 8)``; SpruceError otherwise."""
    sides: Any = block
    if isinstance(block, str):
        parts = block.lower().replace("×", "x").split("x")
        sides = parts * 2 if len(parts) == 1 else parts
    elif isinstance(block, numbers.Integral) and not isinstance(block, bool):
        sides = (block, block)
    try:
        bo, bk = (_side(v) for v in sides)
    except (TypeError, ValueError):
        raise SpruceError(f"block={block!r} is not a block shape; give {BLOCK_FORMS}",
                          field="block") from None
    if bo < 1 or bk < 1:
        raise SpruceError(f"block sides must be >= 1; got block={block!r} ({bo}x{bk})",
                          field="block")
    return bo, bk


def _side(v: Any) -> int:
    """An integer side: ints and integer strings, not floats like 2.5 or booleans."""
    if isinstance(v, bool) or isinstance(v, float):
        raise TypeError(v)
    return int(v.strip()) if isinstance(v, str) else int(v)


@register("block")
class Block(Pattern):
    def __init__(self, block: int | str | tuple[int, int] | list[int] = (8, 8),
                 reduce: str = "sumsq"):
        super().__init__(reduce)
        self.block = parse_block(block)

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
