"""Checks of tensors once loaded: finite floats, index lists, CSR structures, masks."""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import SpruceError
from ..patterns import get_pattern
from ..view import to_view, view_of


def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Every float tensor but those in ``skip`` (the architecture's own buffers, which may
    legitimately hold ``-inf``) is finite."""
    for key, t in tensors.items():
        if key in skip:
            continue
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SpruceError(f"tensor '{key}' holds {bad} NaN/inf values; the file is "
                              "damaged", path=path)


def check_index(t: torch.Tensor, size: int, what: str, strict_order: bool = True
                ) -> str | None:
    """Why the 1-D index tensor ``t`` is not a valid list into ``[0, size)`` — strictly
    increasing when ``strict_order`` — or None."""
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
        return f"{what} must be a 1-D integer tensor, got {list(t.shape)} {t.dtype}"
    if t.numel() == 0:
        return None
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= size:
        return f"{what} holds indices in [{lo}, {hi}], outside [0, {size})"
    if strict_order and t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        return f"{what} must be strictly increasing (sorted, no duplicates)"
    return None


def check_csr(crow: torch.Tensor, col: torch.Tensor, rows: int, cols: int) -> str | None:
    """Why ``(crow, col)`` is not a valid CSR structure of a ``rows × cols`` matrix (crow
    starts at 0, never decreases, ends at nnz; columns in range and strictly increasing
    within each row), or None."""
    crow64, col64 = crow.to(torch.int64), col.to(torch.int64)
    if crow.dim() != 1 or crow.numel() != rows + 1:
        return f"crow_indices must have {rows + 1} entries, has {list(crow.shape)}"
    if int(crow64[0]) != 0 or int(crow64[-1]) != col.numel():
        return (f"crow_indices must start at 0 and end at nnz={col.numel()}, got "
                f"{int(crow64[0])} … {int(crow64[-1])}")
    if bool((crow64[1:] < crow64[:-1]).any()):
        return "crow_indices must never decrease"
    why = check_index(col64, cols, "col_indices", strict_order=False)
    if why or col.numel() < 2:
        return why
    row_of = torch.repeat_interleave(torch.arange(rows), crow64[1:] - crow64[:-1])
    same_row = row_of[1:] == row_of[:-1]
    if bool((same_row & (col64[1:] <= col64[:-1])).any()):
        return "col_indices must be strictly increasing within each row"
    return None


def check_mask_values(mask: torch.Tensor) -> str | None:
    """Why a stored mask is not boolean or exactly 0/1 (NaN, 0.3, …), or None."""
    if mask.dtype == torch.bool:
        return None
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        return f"mask of dtype {mask.dtype} holds values other than 0 and 1"
    return None


# ------------------------------------------------------------------ masks

# Patterns whose structure survives intersection with any other mask (a sub-mask of an N:M
# mask is N:M). Grouping patterns (block, group, channel) keep whole groups, which a later
# mask of another pattern legitimately splits.
SUBSET_CLOSED = ("element", "vector")


def check_mask(mask: torch.Tensor, info: dict[str, Any], path: str | os.PathLike,
               name: str, layer: torch.nn.Module | None = None) -> None:
    """A loaded mask (the layer's weight shape) is 0/1 and follows its declared pattern(s).

    No pattern declared: the mask must keep everything. One pattern: the mask conforms to
    it. Several (masks of later prunings are intersected with earlier ones): the mask
    conforms to each subset-closed pattern (element, N:M) and, when every declared pattern
    is the same, to that one; a mix of grouping patterns is not checked further.
    """
    why = check_mask_values(mask)
    if why:
        raise SpruceError(why + "; the file is damaged", path=path, layer=name, field="mask")
    view = to_view(mask.to(torch.bool)) if layer is None else view_of(layer, mask.to(torch.bool))
    specs = info.get("patterns") or []
    if not specs and not bool(view.all()):
        raise SpruceError("the mask prunes entries but the header declares no pattern; the "
                          "file is damaged", path=path, layer=name, field="patterns")
    same = all(s == specs[0] for s in specs)
    for spec in specs:
        if not same and spec["name"] not in SUBSET_CLOSED:
            continue
        problem = get_pattern(spec).conforms(view)
        if problem:
            raise SpruceError(f"mask breaks its declared pattern {spec['name']}: {problem}; "
                              "the file is damaged or was edited", path=path, layer=name,
                              field="patterns")
