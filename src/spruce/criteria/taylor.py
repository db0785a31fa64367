"""First-order Taylor criterion: |w · ∂L/∂w| summed over calibration batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..view import layer_view, view_of
from .base import Criterion, register


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy for ``(inputs, labels)`` batches; ``.loss`` for HF-style dict batches."""
    if isinstance(batch, dict):
        out = model(**batch)
        loss = getattr(out, "loss", None)
        if loss is None:
            raise ValueError("taylor: a dict batch must make the model return .loss "
                             "(include 'labels'), or pass loss_fn=")
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        out = model(x)
        logits = getattr(out, "logits", out)
        return F.cross_entropy(logits, y)
    raise ValueError("taylor: batches must be (inputs, labels) pairs or dicts; "
                     "or pass loss_fn=(model, batch) -> loss")


def _trainable_weight(layer: nn.Module) -> torch.Tensor:
    """The leaf parameter behind ``layer.weight`` (the original if it is parametrized)."""
    if hasattr(layer, "parametrizations") and "weight" in layer.parametrizations:
        return layer.parametrizations.weight.original
    return layer.weight


@register("taylor")
class Taylor(Criterion):
    """``data``: an iterable of calibration batches; ``loss_fn(model, batch) -> loss``."""

    def __init__(self, data: Iterable | None = None,
                 loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None):
        self.data = data
        self.loss_fn = loss_fn or default_loss

    def scores(self, model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
        if self.data is None:
            raise ValueError("criterion 'taylor' needs calibration data: pass "
                             "criterion=spruce.criteria.Taylor(data=[(x, y), ...]) or "
                             "prune(..., calibration=[(x, y), ...])")
        names = list(layers)
        params = [_trainable_weight(layers[n]) for n in names]
        total = {n: torch.zeros(layer_view(layers[n]).shape) for n in names}
        n_batches = 0
        for batch in self.data:
            loss = self.loss_fn(model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for n, g in zip(names, grads, strict=False):
                if g is not None:
                    w = layer_view(layers[n]).detach()
                    total[n] += (w * view_of(layers[n], g)).abs().float().cpu()
            n_batches += 1
        if n_batches == 0:
            raise ValueError("criterion 'taylor': the calibration data yielded no batch")
        return total

    def spec(self) -> dict[str, Any]:
        return {"name": self.name}
