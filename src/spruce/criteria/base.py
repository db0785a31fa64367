"""The criterion contract and its registry.

A criterion scores every weight entry of every prunable layer, in the 2-D view; larger
means more important. It never knows the pattern that will aggregate its scores.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..view import layer_view

_REGISTRY: dict[str, type[Criterion]] = {}


def register(name: str):
    def deco(cls: type[Criterion]) -> type[Criterion]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


class Criterion:
    """Scores for all layers at once (some criteria need the whole model, e.g. Taylor)."""

    name: ClassVar[str] = "?"

    def scores(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        return {name: self.score(layer_view(layer).detach()) for name, layer in layers.items()}

    def score(self, view: torch.Tensor) -> torch.Tensor:
        """Scores for one weight view ``[R, K]`` (per-entry criteria override this)."""
        raise NotImplementedError

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.spec().items() if k != "name")
        return f"{type(self).__name__}({args})"


def names() -> list[str]:
    return sorted(_REGISTRY)


def get_criterion(criterion: str | dict | Criterion, **kwargs: Any) -> Criterion:
    """Resolve a criterion name (``"magnitude"``, ``"lamp"``, ``"taylor"``, ``"random"``),
    a spec dict or an instance."""
    if isinstance(criterion, Criterion):
        return criterion
    if isinstance(criterion, dict):
        spec = dict(criterion)
        return get_criterion(spec.pop("name"), **spec)
    key = str(criterion).strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"unknown criterion {criterion!r}; valid: {', '.join(names())}")
    return _REGISTRY[key](**kwargs)
