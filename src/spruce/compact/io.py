"""Save and load compacted models.

Compaction changes tensor shapes, so a compacted ``state_dict`` no longer fits the
architecture it came from. The file holds the compacted ``state_dict`` (masks included)
and a header ``{"format": "compacted", ...}`` with ``"compaction"``: the shape of every
parameter and buffer (by plain name: a masked weight is ``layer.weight``) and the
BatchNorms folded away, the masks' ``info`` and the compaction report.
:func:`load_compacted` slices a fresh copy of the architecture to those shapes — its
modules' settings (``in_features``, head counts …) fixed as compaction fixes them — and
loads the tensors.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .. import __version__
from ..io import atomic_save, read_header
from ..masks import attach, mask_info, mask_module, masked_layers, set_submodule
from ..structure.apply import slice_model
from ..structure.trace import param_name
from ..view import to_view
from .core import CompactionReport, tensor_of

FORMAT = "compacted"


def is_compacted(model: nn.Module) -> bool:
    return hasattr(model, "spruce_compaction")


def layer_shapes(model: nn.Module) -> dict[str, Any]:
    """Shape of every parameter/buffer (plain names) and the BatchNorms folded away."""
    shapes = {}
    for key, t in model.state_dict().items():
        name = param_name(key)
        if name is not None:
            shapes[name] = list(t.shape)
    report = getattr(model, "spruce_compaction", None)
    return {"shapes": shapes, "folded": list(getattr(report, "folded", []))}


def save_compacted(model: nn.Module, path: str | os.PathLike,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write a compacted model (weights, masks, new shapes) to ``path`` as safetensors."""
    report = getattr(model, "spruce_compaction", None)
    masks = {}
    for name, layer in masked_layers(model).items():
        mask = mask_module(layer).mask
        masks[name] = {**mask_info(layer), "density": float(mask.float().mean())}
    header = {"format": FORMAT, "version": __version__, "compaction": layer_shapes(model),
              "masks": masks, "report": None if report is None else report.to_dict(),
              **(extra or {})}
    return atomic_save(model.state_dict(), path, header)


def resize_layers(model: nn.Module, compaction: dict[str, Any]) -> nn.Module:
    """Slice ``model`` (in place) to the shapes in ``compaction`` (first indices kept: the
    values are placeholders for a state dict to be loaded over); returns it."""
    for name in compaction.get("folded", []):
        set_submodule(model, name, nn.Identity())
    keep: dict[tuple[str, int], torch.Tensor] = {}
    for name, shape in compaction.get("shapes", {}).items():
        try:
            t = tensor_of(model, name)
            if t is None:  # a bias that folding a BatchNorm added
                path, _, attr = name.rpartition(".")
                setattr(model.get_submodule(path), attr, nn.Parameter(torch.zeros(shape)))
                continue
            have = tuple(t.shape)
        except AttributeError:
            raise ValueError(f"tensor '{name}' of the file does not exist in the model; load "
                             "it into the architecture it was compacted from") from None
        if len(have) != len(shape) or any(w > h for w, h in zip(shape, have, strict=True)):
            raise ValueError(f"tensor '{name}': the file has shape {list(shape)}, the model "
                             f"{list(have)}; load it into the architecture it was compacted "
                             "from")
        for axis, (w, h) in enumerate(zip(shape, have, strict=True)):
            if w < h:
                keep[(name, axis)] = torch.arange(w)
    slice_model(model, keep)
    return model


def load_compacted(path: str | os.PathLike, model: nn.Module,
                   header: dict[str, Any] | None = None) -> nn.Module:
    """A new model: ``model``'s architecture sliced to the file's shapes, with its weights
    and masks. ``model`` itself is not changed."""
    path = Path(path)
    header = read_header(path) if header is None else header
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: holds a {header.get('format')!r} model, not a compacted "
                         "one; load it with spruce.load")
    work = resize_layers(copy.deepcopy(model), header.get("compaction", {}))
    for name, info in header.get("masks", {}).items():
        layer = work.get_submodule(name)
        param = mask_module(layer)
        if param is None:
            param = attach(layer, torch.ones_like(to_view(layer.weight), dtype=torch.bool), {})
        param.info = {k: v for k, v in info.items() if k != "density"}
    try:
        work.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit the model ({str(e).splitlines()[0]} …); "
                         "was it compacted from another model?") from None
    work.spruce_compaction = CompactionReport.from_dict(header.get("report") or {})
    return work
