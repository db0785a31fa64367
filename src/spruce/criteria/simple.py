"""Criteria that look at the weights alone: magnitude, LAMP, random."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..view import layer_view
from .base import Criterion, register


@register("magnitude")
class Magnitude(Criterion):
    """|w| (``p=1``, L1) or w² (``p=2``, L2)."""

    def __init__(self, p: int = 1):
        if p not in (1, 2):
            raise ValueError(f"magnitude criterion takes p=1 (L1) or p=2 (L2); got p={p}")
        self.p = p

    def score(self, view: torch.Tensor) -> torch.Tensor:
        return view.abs() if self.p == 1 else view.square()

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "p": self.p}


def lamp_scores(values: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021; eq. 4 of Liu et al.): with entries sorted by ascending
    ``v = w²``, ``score(u) = v[u] / Σ_{t >= u} v[t]``. Scale-free, so scores of different
    layers compare; the largest entry of every layer scores 1. Ties keep index order.
    """
    flat = values.reshape(-1).to(torch.float64)
    order = torch.sort(order_keys(flat), stable=True)[1]
    ordered = flat[order]
    suffix = torch.flip(torch.cumsum(torch.flip(ordered, [0]), 0), [0])
    ratio = torch.where(suffix > 0, ordered / suffix.clamp_min(1e-300), torch.zeros_like(ordered))
    return torch.empty_like(ordered).scatter_(0, order, ratio).reshape(values.shape)


def order_keys(x: torch.Tensor) -> torch.Tensor:
    """float64 → int64 keys in the same order, equal floats giving equal keys (-0.0 is 0.0;
    no NaN). Integers sort about twice as fast as floats on the CPU."""
    bits = (x.to(torch.float64) + 0.0).view(torch.int64)
    return bits ^ ((bits >> 63) & 0x7FFF_FFFF_FFFF_FFFF)


@register("lamp")
class Lamp(Criterion):
    """Per-entry LAMP score of the squared weight."""

    def score(self, view: torch.Tensor) -> torch.Tensor:
        return lamp_scores(view.square())


@register("random")
class Random(Criterion):
    """Uniform random scores from a seeded generator (a baseline)."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def scores(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        return {name: torch.rand(layer_view(layer).shape, generator=gen)
                for name, layer in layers.items()}

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}
