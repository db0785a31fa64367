"""Layer types the backends serve through an equivalent ``Linear``/``Conv2d`` problem.

- transformers' ``Conv1D`` (GPT-2): ``y = x @ W + b`` with ``W [in, out]`` is
  ``F.linear(x, Wᵀ, b)``: a Linear with weight ``Wᵀ`` (its 2-D view is the Linear's);
- ``nn.Conv1d`` ``[O, C, k]`` is a Conv2d ``[O, C, 1, k]`` on the input with a height of 1;
  the views are the same ``[O, C·k]``.

``convert`` hands a backend the equivalent layer and its mask in that layer's view, then
wraps the built module so it takes the original input and exposes what the original layer
exposes (``weight`` in the original shape, ``bias``, sizes). Dense stays the original type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .base import get_backend
from .face import DenseFace


def _hf_conv1d() -> type | None:
    """transformers' ``Conv1D`` when transformers is loaded (a model holding one loaded it)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return getattr(utils, "Conv1D", None) if utils is not None else None


def _as_linear(layer: nn.Module, mask: torch.Tensor | None) -> tuple[nn.Module, Any]:
    w = layer.weight.detach()  # (in, out)
    lin = nn.Linear(w.shape[0], w.shape[1], bias=layer.bias is not None, device="meta")
    lin.weight = nn.Parameter(w.t().contiguous(), requires_grad=False)  # (out, in)
    if layer.bias is not None:
        lin.bias = nn.Parameter(layer.bias.detach(), requires_grad=False)
    return lin, None if mask is None else mask.reshape(w.shape).t().contiguous()


def _as_conv2d(layer: nn.Conv1d, mask: torch.Tensor | None) -> tuple[nn.Module, Any]:
    w = layer.weight.detach()  # (O, C/groups, k)
    padding = layer.padding if isinstance(layer.padding, str) else (0, layer.padding[0])
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, (1, layer.kernel_size[0]),
                     stride=(1, layer.stride[0]), padding=padding,
                     dilation=(1, layer.dilation[0]), groups=layer.groups,
                     bias=layer.bias is not None, padding_mode=layer.padding_mode,
                     device="meta")
    conv.weight = nn.Parameter(w.unsqueeze(2), requires_grad=False)  # (O, C, 1, k)
    if layer.bias is not None:
        conv.bias = nn.Parameter(layer.bias.detach(), requires_grad=False)
    return conv, None if mask is None else mask.reshape(w.shape[0], -1)


class Conv1DAsLinear(DenseFace):
    """A backend module for the Linear equivalent of a transformers ``Conv1D``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.nx, self.nf = inner.in_features, inner.out_features  # Conv1D's names

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) → (..., out)
        return self.inner(x)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def dense_weight(self) -> torch.Tensor:  # (in, out), as Conv1D stores it
        return self.inner.weight.t()

    def config(self) -> dict[str, Any]:
        inner = self.inner.config()
        return {"backend": inner["backend"], "adapter": "Conv1D", "inner": inner}


class Conv1dAsConv2d(DenseFace):
    """A backend module for the Conv2d equivalent (height 1) of an ``nn.Conv1d``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.in_channels, self.out_channels = inner.in_channels, inner.out_channels
        self.kernel_size, self.stride = inner.kernel_size[1:], inner.stride[1:]
        self.padding = inner.padding if isinstance(inner.padding, str) else inner.padding[1:]
        self.dilation, self.groups = inner.dilation[1:], inner.groups
        self.padding_mode = inner.padding_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, L) or (C, L)
        if x.dim() == 2:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        return self.inner(x.unsqueeze(2)).squeeze(2)  # (B, C, 1, L) → (B, O, 1, Lo)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.inner.bias

    def dense_weight(self) -> torch.Tensor:  # (O, C, k)
        return self.inner.weight.squeeze(2)

    def config(self) -> dict[str, Any]:
        inner = self.inner.config()
        return {"backend": inner["backend"], "adapter": "Conv1d", "inner": inner}


@dataclass(frozen=True)
class Adapter:
    """How one layer type reaches the backends, and back."""

    name: str
    equivalent: Callable[[nn.Module, torch.Tensor | None], tuple[nn.Module, Any]]
    wrap: Callable[[nn.Module], nn.Module]
    probe_shape: Callable[[nn.Module], tuple[int, ...]]  # an input when none was captured


ADAPTERS: dict[str, Adapter] = {
    "Conv1D": Adapter("Conv1D", _as_linear, Conv1DAsLinear,
                      lambda layer: (3, layer.weight.shape[0])),
    "Conv1d": Adapter("Conv1d", _as_conv2d, Conv1dAsConv2d,
                      lambda layer: (2, layer.in_channels, 4 * layer.kernel_size[0] + 3)),
}


def adapter_for(layer: nn.Module) -> Adapter | None:
    """The adapter of ``layer``'s type, or None for a Linear/Conv2d (served as is)."""
    if isinstance(layer, nn.Conv1d):
        return ADAPTERS["Conv1d"]
    conv1d = _hf_conv1d()
    if conv1d is not None and isinstance(layer, conv1d):
        return ADAPTERS["Conv1D"]
    return None


def empty_module(config: dict[str, Any]) -> nn.Module:
    """``Backend.empty`` for a saved config, wrapped when it was an adapted layer."""
    if "adapter" in config:
        inner = get_backend(config["inner"]["backend"]).empty(config["inner"])
        return ADAPTERS[config["adapter"]].wrap(inner)
    return get_backend(config["backend"]).empty(config)
