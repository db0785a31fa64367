"""Save and load compacted models.

Compaction changes layer shapes, so a compacted ``state_dict`` no longer fits the
architecture it came from. The file holds the compacted ``state_dict`` (masks included)
and a header ``{"format": "compacted", ...}`` recording the shape of every Linear, Conv2d
and BatchNorm (``{"type", "out", "in", "bias"}``), the BatchNorms folded away, the masks'
``info`` and the compaction report. :func:`load_compacted` resizes those modules of a
fresh copy of the architecture, then loads the tensors.
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
from ..view import to_view
from .core import CompactionReport
from .rewrite import RESIZABLE, resize, spec

FORMAT = "compacted"


def is_compacted(model: nn.Module) -> bool:
    return hasattr(model, "spruce_compaction")


def layer_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shape spec of every resizable module, plus folded BatchNorms (now ``Identity``)."""
    shapes = {n: spec(m) for n, m in model.named_modules() if isinstance(m, RESIZABLE)}
    report = getattr(model, "spruce_compaction", None)
    for name in getattr(report, "folded", []):
        shapes[name] = {"type": "Identity"}
    return shapes


def save_compacted(model: nn.Module, path: str | os.PathLike,
                   extra: dict[str, Any] | None = None) -> Path:
    """Write a compacted model (weights, masks, new shapes) to ``path`` as safetensors."""
    report = getattr(model, "spruce_compaction", None)
    masks = {}
    for name, layer in masked_layers(model).items():
        mask = mask_module(layer).mask
        masks[name] = {**mask_info(layer), "density": float(mask.float().mean())}
    header = {"format": FORMAT, "version": __version__, "layers": layer_shapes(model),
              "masks": masks, "report": None if report is None else report.to_dict(),
              **(extra or {})}
    return atomic_save(model.state_dict(), path, header)


def resize_layers(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize ``model``'s modules (in place) to the specs in ``shapes``; returns it."""
    for name, want in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layer '{name}' of the file does not exist in the model; load "
                             "it into the architecture it was compacted from") from None
        new = resize(name, module, want)
        if new is not module:
            set_submodule(model, name, new)
    return model


def load_compacted(path: str | os.PathLike, model: nn.Module,
                   header: dict[str, Any] | None = None) -> nn.Module:
    """A new model: ``model``'s architecture resized to the file's shapes, with its weights
    and masks. ``model`` itself is not changed."""
    path = Path(path)
    header = read_header(path) if header is None else header
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: holds a {header.get('format')!r} model, not a compacted "
                         "one; load it with spruce.load")
    work = resize_layers(copy.deepcopy(model), header["layers"])
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
    work.spruce_compaction.folded = [n for n, s in header["layers"].items()
                                     if s["type"] == "Identity"]
    return work
