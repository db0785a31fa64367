"""Masks live on the layers through ``torch.nn.utils.parametrize``.

``layer.weight`` becomes ``original * mask``, so a pruned model still trains with any
optimizer, gradients of pruned entries are zero, and ``state_dict`` keeps the original
weights (``<layer>.parametrizations.weight.original``) beside the masks
(``<layer>.parametrizations.weight.0.mask``). Re-pruning intersects masks: nothing pruned
comes back.

The mask is stored in the weight's own layout (so the parametrization multiplies it
directly; for transformers' ``Conv1D`` that is ``[in, out]``); :func:`get_mask` returns it
in the 2-D view. A weight shared by several layers (tied) has one :class:`WeightMask`
registered on every user, so ``layer.weight`` is the same masked tensor everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from .view import unview, view_of


class WeightMask(nn.Module):
    """Parametrization ``w ↦ w · mask``; ``info`` records how the mask was made."""

    def __init__(self, mask: torch.Tensor, info: dict[str, Any] | None = None):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.info: dict[str, Any] = dict(info or {})

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask.to(w.dtype)

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"kept={kept}/{self.mask.numel()}, info={self.info}"


def mask_module(layer: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    for p in layer.parametrizations.weight:
        if isinstance(p, WeightMask):
            return p
    return None


def get_mask(layer: nn.Module) -> torch.Tensor | None:
    """The layer's mask in the 2-D view, or None if it carries none."""
    m = mask_module(layer)
    return None if m is None else view_of(layer, m.mask)


def mask_info(layer: nn.Module) -> dict[str, Any]:
    m = mask_module(layer)
    return {} if m is None else dict(m.info)


def original_weight(layer: nn.Module) -> torch.Tensor:
    """The unmasked weight parameter of a layer (masked or not)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.parametrizations.weight.original
    return layer.weight


def attach(layer: nn.Module, mask_view: torch.Tensor, info: dict[str, Any],
           followers: Iterable[nn.Module] = ()) -> WeightMask:
    """Put ``mask_view`` (2-D view) on ``layer``; intersect with a mask already there.

    ``followers`` are other modules whose weight is ``layer``'s parameter (tied weights):
    the same :class:`WeightMask` is registered on each. ``info['patterns']`` accumulates
    every pattern spec applied to the layer.
    """
    weight = original_weight(layer)
    mask = unview(layer, mask_view.to(device=weight.device, dtype=torch.bool))
    param = mask_module(layer)
    if param is not None:
        param.mask.copy_(param.mask & mask)
        history = param.info.get("patterns", []) + info.get("patterns", [])
        param.info.update(info)
        param.info["patterns"] = history
    else:
        param = WeightMask(mask, info)
        parametrize.register_parametrization(layer, "weight", param)
    for other in followers:
        share(other, param)
    return param


def share(layer: nn.Module, param: WeightMask) -> None:
    """Make ``param`` (a mask of a layer with the same weight) the mask of ``layer`` too."""
    own = mask_module(layer)
    if own is param:
        return
    if own is None:
        parametrize.register_parametrization(layer, "weight", param)
        return
    plist = layer.parametrizations.weight
    plist[next(i for i, p in enumerate(plist) if p is own)] = param
    with torch.no_grad():
        param.mask.copy_(param.mask & own.mask)


def attach_shared(layers: dict[str, nn.Module]) -> dict[str, WeightMask]:
    """An all-kept mask on each of ``layers`` (kept if one is there), one per weight:
    layers whose original weight is one parameter get one :class:`WeightMask`."""
    by_weight: dict[int, WeightMask] = {}
    out = {}
    for name, layer in layers.items():
        key = id(original_weight(layer))
        own = mask_module(layer)
        if key in by_weight:
            share(layer, by_weight[key])
        elif own is None:
            by_weight[key] = attach(layer, torch.ones_like(view_of(layer, layer.weight),
                                                           dtype=torch.bool), {})
        else:
            by_weight[key] = own
        out[name] = by_weight[key]
    return out


def masked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Modules carrying a spruce mask, by qualified name."""
    return {name: mod for name, mod in model.named_modules() if mask_module(mod) is not None}


def unparametrized(layer: nn.Module) -> nn.Module:
    """A plain twin of a mask-parametrized layer that shares its parameters; its ``weight``
    is the original (unmasked) parameter.

    ``parametrize.remove_parametrizations`` edits the generated class in place, and that
    class is shared by deep copies of the model — removing it from a copy would break the
    original. Building a twin avoids that.
    """
    if not parametrize.is_parametrized(layer, "weight"):
        return layer
    base = type(layer).__bases__[0]  # parametrize's generated subclass → the layer's class
    twin = base.__new__(base)  # type: ignore[call-overload]  # (base is a Module class)
    twin.__dict__ = dict(layer.__dict__)
    twin._parameters = {"weight": layer.parametrizations.weight.original,
                        **{k: v for k, v in layer._parameters.items()}}
    twin._buffers = dict(layer._buffers)
    twin._modules = {k: v for k, v in layer._modules.items() if k != "parametrizations"}
    return twin


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def bake(model: nn.Module) -> nn.Module:
    """Write the zeros into the weights and drop the mask parametrizations (in place).

    The weight and bias ``Parameter`` objects are kept (the original weight, now zeroed
    where the mask removed entries): layers that shared a weight still share it, and a
    layer reachable under several names is replaced under every one.
    """
    twins: dict[int, nn.Module] = {}
    for layer in masked_layers(model).values():
        own = mask_module(layer)
        assert own is not None  # masked_layers holds only layers with a mask
        mask = own.mask
        twin = unparametrized(layer)
        with torch.no_grad():
            twin.weight.mul_(mask.to(twin.weight.dtype))  # the mask is in the weight's layout
        twins[id(layer)] = twin
    for name, mod in list(model.named_modules(remove_duplicate=False)):
        if id(mod) in twins and name:
            set_submodule(model, name, twins[id(mod)])
    return model
