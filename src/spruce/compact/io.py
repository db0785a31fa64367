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
from ..errors import SpruceError
from ..fileformat import MAX_DIM, Fields, Stored, check_finite, expect_format, mask_infos, \
    read_stored
from ..io import MASK_SUFFIX, atomic_save, load_masks
from ..masks import mask_info, mask_module, masked_layers, set_submodule
from ..structure.apply import slice_model
from ..structure.trace import param_name
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


def check_layer_shapes(stored: Stored, model: nn.Module, key: str) -> dict[str, Any]:
    """The header's compaction record (``stored.header[key]``), checked against ``model``
    before anything is resized or allocated: every shape names a tensor of the model, has
    its rank and is no larger along any axis (compaction only removes); every folded name is
    a BatchNorm of the model."""
    record = stored.fields().dict(key)
    g = Fields(record, stored.path, what="the compaction record")
    shapes = g.dict("shapes")
    folded = g.get("folded", list, optional=True) or []
    for name in folded:
        mod = _module(model, name) if isinstance(name, str) else None
        if not isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            g.fail("folded", f"{name!r} is not a BatchNorm of the model; only a BatchNorm "
                   "folds away")
    for name, shape in shapes.items():
        have = _tensor(model, name)
        if have is None:
            if not (isinstance(shape, list) and len(shape) == 1 and name.endswith(".bias")
                    and _module(model, name.rpartition(".")[0]) is not None):
                raise SpruceError("this tensor of the file does not exist in the model; load "
                                  "it into the architecture it was compacted from",
                                  path=stored.path, field=f"{key}.shapes.{name}")
            have_shape: tuple = (MAX_DIM,)
        else:
            have_shape = tuple(have.shape)
        if not isinstance(shape, list) or len(shape) != len(have_shape) or any(
                not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= h
                for n, h in zip(shape, have_shape, strict=True)):
            raise SpruceError(f"shape {shape!r} does not fit the model's {list(have_shape)} "
                              "(same rank, each size from 1 up to the model's); load it into "
                              "the architecture it was compacted from", path=stored.path,
                              field=f"{key}.shapes.{name}")
    return {"shapes": shapes, "folded": folded}


def _module(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _tensor(model: nn.Module, name: str) -> torch.Tensor | None:
    try:
        return tensor_of(model, name)
    except AttributeError:
        return None


def resize_layers(model: nn.Module, compaction: dict[str, Any]) -> nn.Module:
    """Slice ``model`` (in place) to the shapes in ``compaction`` (first indices kept: the
    values are placeholders for a state dict to be loaded over); returns it. Check the
    record first with :func:`check_layer_shapes`."""
    for name in compaction.get("folded", []):
        set_submodule(model, name, nn.Identity())
    keep: dict[tuple[str, int], torch.Tensor] = {}
    for name, shape in compaction.get("shapes", {}).items():
        t = _tensor(model, name)
        if t is None:  # a bias that folding a BatchNorm added
            path, _, attr = name.rpartition(".")
            setattr(model.get_submodule(path), attr, nn.Parameter(torch.zeros(shape)))
            continue
        for axis, (w, h) in enumerate(zip(shape, t.shape, strict=True)):
            if w < h:
                keep[(name, axis)] = torch.arange(w)
    slice_model(model, keep)
    return model


def _report(stored: Stored) -> CompactionReport:
    data = stored.fields().dict("report", optional=True) or {}
    try:
        return CompactionReport.from_dict(data)
    except (TypeError, ValueError, AttributeError) as e:
        raise SpruceError(f"not a compaction report ({e})", path=stored.path,
                          field="report") from None


def load_compacted(path: str | os.PathLike, model: nn.Module,
                   stored: Stored | None = None) -> nn.Module:
    """A new model: ``model``'s architecture sliced to the file's shapes, with its weights
    and masks. ``model`` itself is not changed. Everything is checked first (see
    :mod:`spruce.fileformat`)."""
    stored = read_stored(path) if stored is None else stored
    expect_format(stored, FORMAT)
    compaction = check_layer_shapes(stored, model, "compaction")
    infos = mask_infos(stored.fields(), "masks")
    report = _report(stored)
    work = resize_layers(copy.deepcopy(model), compaction)
    tensors = load_file(str(stored.path))
    check_finite({k: v for k, v in tensors.items() if not k.endswith(MASK_SUFFIX[1:])},
                 stored.path, {k for k, _ in model.named_buffers()})
    load_masks(stored, tensors, work, infos)
    try:
        work.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise SpruceError(f"does not fit the model ({str(e).splitlines()[0]} …); was it "
                          "compacted from another model?", path=stored.path) from None
    work.spruce_compaction = report
    work.spruce_compaction.folded = list(compaction["folded"])
    return work
