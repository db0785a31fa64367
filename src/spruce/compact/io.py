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

from safetensors.torch import load_file
from torch import nn

from .. import __version__
from ..errors import SpruceError
from ..fileformat import Fields, Stored, check_finite, expect_format, mask_infos, read_stored
from ..io import MASK_SUFFIX, atomic_save, load_masks
from ..masks import mask_info, mask_module, masked_layers, set_submodule
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


SPEC_TYPES = ("Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "Identity")


def check_layer_shapes(stored: Stored, model: nn.Module, key: str) -> dict[str, Any]:
    """The header's layer shapes (``stored.header[key]``), each naming a module of
    ``model`` of the same type, no larger than it (compaction only removes): checked
    before anything is resized or allocated."""
    shapes = stored.fields().dict(key)
    for name, want in shapes.items():
        g = Fields(want, stored.path, name, what="a layer shape")
        kind = g.str("type", SPEC_TYPES)
        try:
            have = spec(model.get_submodule(name))
        except AttributeError:
            raise SpruceError("this layer of the file does not exist in the model; load it "
                              "into the architecture it was compacted from",
                              path=stored.path, layer=name) from None
        if kind == "Identity":
            if not have["type"].startswith("BatchNorm") and have["type"] != "Identity":
                g.fail("type", f"only a BatchNorm folds away, the model has a {have['type']}")
            continue
        if kind != have["type"]:
            g.fail("type", f"{kind} in the file, {have['type']} in the model; load it into "
                   "the architecture it was compacted from")
        g.int("out", 1, have["out"])
        if "in" in have:
            g.int("in", 1, have["in"])
            g.bool("bias")
    return shapes


def resize_layers(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize ``model``'s modules (in place) to the specs in ``shapes``; returns it."""
    for name, want in shapes.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise SpruceError("this layer of the file does not exist in the model; load "
                              "it into the architecture it was compacted from",
                              layer=name) from None
        new = resize(name, module, want)
        if new is not module:
            set_submodule(model, name, new)
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
    """A new model: ``model``'s architecture resized to the file's shapes, with its weights
    and masks. ``model`` itself is not changed. Everything is checked first (see
    :mod:`spruce.fileformat`)."""
    stored = read_stored(path) if stored is None else stored
    expect_format(stored, FORMAT)
    shapes = check_layer_shapes(stored, model, "layers")
    infos = mask_infos(stored.fields(), "masks")
    report = _report(stored)
    work = resize_layers(copy.deepcopy(model), shapes)
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
    work.spruce_compaction.folded = [n for n, s in shapes.items() if s["type"] == "Identity"]
    return work
