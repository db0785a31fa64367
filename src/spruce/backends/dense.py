"""``dense``: masked weights baked into ordinary dense layers — the reference and fallback."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .base import Backend, masked_weight, register


@register("dense")
class Dense(Backend):
    @classmethod
    def from_masked(cls, layer: nn.Module, mask: torch.Tensor | None) -> nn.Module:
        out = copy.deepcopy(layer)
        if parametrize.is_parametrized(out, "weight"):
            parametrize.remove_parametrizations(out, "weight", leave_parametrized=False)
        with torch.no_grad():
            out.weight.copy_(masked_weight(layer, mask))
        out.requires_grad_(False)
        return out

    @classmethod
    def empty(cls, config: dict[str, Any]) -> nn.Module:
        raise NotImplementedError("dense layers load as the model's own layers")
