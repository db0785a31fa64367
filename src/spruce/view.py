"""The one 2-D view of every prunable weight (DESIGN.md §1).

A ``Linear`` weight is viewed as it is, ``[out, in]``. A ``Conv2d`` weight ``[O, C, kh, kw]``
is viewed as ``[O, C·kh·kw]`` with K ordered ``(c, kh, kw)`` — the im2col order, so column
``k`` of the view multiplies row ``k`` of ``F.unfold(x, ...)``. This is the only module that
knows how to go from a layer to its view and back; patterns, criteria and backends speak
the view alone.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch
from torch import nn

PRUNABLE_TYPES = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class Skipped:
    """A Linear/Conv2d that stays dense, and why."""

    name: str
    reason: str


def view_shape(layer: nn.Module) -> tuple[int, int]:
    """(R, K) of the layer's 2-D view: R output features/channels, K the reduction dim."""
    w = layer.weight
    return int(w.shape[0]), int(w[0].numel())


def taps(layer: nn.Module) -> int:
    """Columns of the view per input channel: ``kh·kw`` for a Conv2d, 1 for a Linear.

    Columns ``c·taps … (c+1)·taps - 1`` of the view are input channel ``c``.
    """
    return int(layer.weight[0, 0].numel()) if layer.weight.dim() > 2 else 1


def to_view(weight: torch.Tensor) -> torch.Tensor:
    """Weight (any rank >= 2, output dim first) → its 2-D view (a view, no copy)."""
    return weight.reshape(weight.shape[0], -1)


def from_view(view: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 2-D view → the shape of ``like`` (the layer's weight)."""
    return view.reshape(like.shape)


def layer_view(layer: nn.Module) -> torch.Tensor:
    """The current (masked, if parametrized) weight of ``layer`` as its 2-D view."""
    return to_view(layer.weight)


def skip_reason(layer: nn.Module) -> str | None:
    """Why a Linear/Conv2d cannot be pruned in the 2-D view, or None if it can."""
    if isinstance(layer, nn.Conv2d) and layer.groups != 1:
        return f"grouped/depthwise Conv2d (groups={layer.groups}) stays dense"
    return None


def _matches(name: str, globs: list[str] | tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) or name == g or name.startswith(g + ".")
               for g in globs)


def prunable_layers(model: nn.Module, exclude: list[str] | tuple[str, ...] = ()
                    ) -> tuple[dict[str, nn.Module], list[Skipped]]:
    """Linear/Conv2d modules by qualified name, and those left dense with the reason.

    ``exclude`` takes module-name globs (``"classifier"``, ``"features.*"``, ``"*.fc"``);
    a plain name also excludes everything under it.
    """
    layers: dict[str, nn.Module] = {}
    skipped: list[Skipped] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE_TYPES):
            continue
        if exclude and _matches(name, exclude):
            skipped.append(Skipped(name, "excluded by the caller"))
            continue
        reason = skip_reason(mod)
        if reason:
            skipped.append(Skipped(name, reason))
            continue
        layers[name] = mod
    return layers, skipped


def module_types(model: nn.Module) -> list[str]:
    """Distinct leaf module type names (for 'no prunable layers' errors)."""
    seen: dict[str, None] = {}
    for mod in model.modules():
        if not list(mod.children()):
            seen[type(mod).__name__] = None
    return list(seen)
