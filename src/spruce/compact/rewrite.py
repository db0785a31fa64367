"""Build smaller twins of layers: kept output rows, kept input channels, sliced norms.

Every function returns a new module and leaves its argument alone. A masked layer's twin
carries the same rows/channels of its mask (and the mask's ``info``), so remaining
sparsity inside kept channels is still there for ``convert``. Masked layers are read
through :func:`spruce.masks.unparametrized`: deep copies of a model share parametrize's
generated classes, so parametrizations are never removed in place.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..masks import attach, mask_info, mask_module, unparametrized
from ..view import to_view

NORM_BUFFERS = ("running_mean", "running_var")


def _shell(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with its own (empty) parameter dict and copied settings."""
    new = type(module).__new__(type(module))
    new.__dict__ = {k: copy.copy(v) if isinstance(v, dict) else v
                    for k, v in module.__dict__.items()}
    new._parameters = {}
    return new


def _param(value: torch.Tensor, like: nn.Parameter | None) -> nn.Parameter:
    grad = True if like is None else like.requires_grad
    return nn.Parameter(value.detach().clone(), requires_grad=grad)


def _rows(t: torch.Tensor | None, keep: torch.Tensor | None, dim: int = 0):
    return t if t is None or keep is None else t.index_select(dim, keep.to(t.device))


def slice_layer(layer: nn.Module, keep_out: torch.Tensor | None = None,
                keep_in: torch.Tensor | None = None,
                affine: tuple[torch.Tensor, torch.Tensor] | None = None) -> nn.Module:
    """A ``Linear``/``Conv2d`` keeping output rows ``keep_out`` and input channels/features
    ``keep_in`` (None: all), with its mask sliced the same way. ``affine = (scale, shift)``
    (per kept row) folds a following per-channel affine map into the weight and bias."""
    plain = unparametrized(layer)
    mask = mask_module(layer)
    new = _shell(plain)
    weight = _rows(_rows(plain.weight.detach(), keep_out), keep_in, 1)
    bias = _rows(None if plain.bias is None else plain.bias.detach(), keep_out)
    if affine is not None:
        scale, shift = (t.to(weight.dtype) for t in affine)
        weight = weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
        bias = shift if bias is None else bias * scale + shift
    new.weight = _param(weight, plain.weight)
    new.bias = None if bias is None else _param(bias, plain.bias)
    out_dim, in_dim = new.weight.shape[:2]
    if isinstance(new, nn.Conv2d):
        new.out_channels, new.in_channels = out_dim, in_dim
    else:
        new.out_features, new.in_features = out_dim, in_dim
    if mask is not None:
        attach(new, to_view(_rows(_rows(mask.mask, keep_out), keep_in, 1)), mask_info(layer))
    return new


def norm_affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) with ``norm(y) = y · scale + shift`` per channel, in eval mode."""
    if norm.running_mean is None:
        raise ValueError("cannot fold a BatchNorm without running statistics "
                         "(track_running_stats=False); use fold_bn=False")
    scale = torch.rsqrt(norm.running_var + norm.eps)  # (C,)
    if norm.weight is not None:
        scale = scale * norm.weight.detach()
    shift = -norm.running_mean * scale
    return scale, shift if norm.bias is None else shift + norm.bias.detach()


def slice_norm(norm: nn.Module, keep: torch.Tensor) -> nn.Module:
    """A BatchNorm over the kept channels only (per-channel, so exact in train and eval)."""
    new = _shell(norm)
    for name in ("weight", "bias"):
        p = getattr(norm, name)
        setattr(new, name, None if p is None else _param(_rows(p, keep), p))
    new._buffers = {k: None if v is None else  # running stats sliced, the count copied
                    (_rows(v, keep) if k in NORM_BUFFERS else v).clone()
                    for k, v in norm._buffers.items()}
    new.num_features = int(keep.numel())
    return new


def spec(module: nn.Module) -> dict[str, Any]:
    """The shape-defining settings of a module, as recorded in a compacted file's header."""
    kind = type(unparametrized(module)).__name__
    if isinstance(module, nn.Conv2d):
        return {"type": kind, "out": module.out_channels, "in": module.in_channels,
                "bias": module.bias is not None}
    if isinstance(module, nn.Linear):
        return {"type": kind, "out": module.out_features, "in": module.in_features,
                "bias": module.bias is not None}
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return {"type": kind, "out": module.num_features}
    return {"type": kind}


RESIZABLE = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def resize(name: str, module: nn.Module, want: dict[str, Any]) -> nn.Module:
    """``module`` reshaped to ``want`` (a :func:`spec`), its first rows/channels kept; the
    values are placeholders for a state dict to be loaded over."""
    have = spec(module)
    if want == have:
        return module
    if want["type"] == "Identity":
        return nn.Identity()
    if want["type"] != have["type"] or want["out"] > have["out"] or want.get("in", 0) > \
            have.get("in", 0):
        raise ValueError(f"layer '{name}': the file has {want}, the model {have}; load it "
                         "into the architecture it was compacted from")
    keep_out = torch.arange(want["out"])
    if "in" not in want:
        return slice_norm(module, keep_out)
    new = slice_layer(module, keep_out, torch.arange(want["in"]))
    if want["bias"] and new.bias is None:
        new.bias = nn.Parameter(torch.zeros(want["out"], device=new.weight.device,
                                            dtype=new.weight.dtype))
    elif not want["bias"]:
        new.bias = None
    return new
