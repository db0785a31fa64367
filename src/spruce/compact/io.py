"""The ``compacted`` kind of saved model (see :mod:`spruce.io`).

Compaction changes tensor shapes, so a compacted ``state_dict`` no longer fits the
architecture it came from. The file holds the compacted ``state_dict`` (masks included);
its header's layer records hold each layer's mask, the compacted shape of each of its
tensors (by attribute: a masked weight is ``weight``) and whether it is a BatchNorm folded
away, and the header holds the compaction report. Loading slices a fresh copy of the
architecture to those shapes — its modules' settings (``in_features``, head counts …)
fixed as compaction fixes them — and loads the tensors.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import SpruceError
from ..fileformat import MAX_DIM, Stored, check_finite, layer_records
from ..io import MASK_SUFFIX, FileKind, load_masks, mask_records, module_order, register_kind
from ..masks import set_submodule
from ..structure.apply import slice_model
from ..structure.trace import param_name
from .core import CompactionReport, tensor_of


def is_compacted(model: nn.Module) -> bool:
    return hasattr(model, "spruce_compaction")


def compaction_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Per layer: ``shapes`` (attribute → shape of every parameter/buffer under plain
    names) and ``folded`` (the BatchNorms folded away) — record maps for
    :func:`~spruce.fileformat.layer_records`."""
    shapes: dict[str, dict[str, list[int]]] = {}
    for key, t in model.state_dict().items():
        name = param_name(key)
        if name is not None:
            layer, _, attr = name.rpartition(".")
            shapes.setdefault(layer, {})[attr] = list(t.shape)
    report = getattr(model, "spruce_compaction", None)
    return {"shapes": shapes, "folded": dict.fromkeys(getattr(report, "folded", []), True)}


def compacted_header(model: nn.Module) -> dict[str, Any]:
    report = getattr(model, "spruce_compaction", None)
    return {"layers": layer_records(module_order(model), mask=mask_records(model),
                                    **compaction_records(model)),
            "compaction_report": None if report is None else report.to_dict()}


def check_layer_shapes(stored: Stored, model: nn.Module) -> dict[str, Any]:
    """The file's compacted shapes and folded BatchNorms, checked against ``model`` before
    anything is resized or allocated: every shape names a tensor of the model, has its rank
    and is no larger along any axis (compaction only removes); every folded layer is a
    BatchNorm of the model."""
    compaction = stored.compaction()
    for name in compaction["folded"]:
        if not isinstance(_module(model, name), (nn.BatchNorm1d, nn.BatchNorm2d,
                                                 nn.BatchNorm3d)):
            raise SpruceError("only a BatchNorm folds away, and this is not a BatchNorm of "
                              "the model; the file is damaged or belongs to another model",
                              path=stored.path, layer=name, field="folded")
    for key, shape in compaction["shapes"].items():
        layer, _, attr = key.rpartition(".")
        have = _tensor(model, key)
        if have is None and not (len(shape) == 1 and attr == "bias"
                                 and _module(model, layer) is not None):
            raise SpruceError("this tensor of the file does not exist in the model; load "
                              "it into the architecture it was compacted from",
                              path=stored.path, layer=layer, field=f"shapes.{attr}")
        have_shape = (MAX_DIM,) if have is None else tuple(have.shape)
        if len(shape) != len(have_shape) or any(
                n > h for n, h in zip(shape, have_shape, strict=True)):
            raise SpruceError(f"shape {shape!r} does not fit the model's {list(have_shape)} "
                              "(same rank, each size from 1 up to the model's); load it into "
                              "the architecture it was compacted from", path=stored.path,
                              layer=layer, field=f"shapes.{attr}")
    return compaction


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


def compaction_report(stored: Stored) -> CompactionReport:
    data = stored.header.get("compaction_report") or {}
    try:
        return CompactionReport.from_dict(data)
    except (TypeError, ValueError, AttributeError) as e:
        raise SpruceError(f"not a compaction report ({e})", path=stored.path,
                          field="compaction_report") from None


def load_compacted(stored: Stored, model: nn.Module) -> nn.Module:
    """A new model: ``model``'s architecture sliced to the file's shapes, with its weights
    and masks. ``model`` itself is not changed. Everything is checked first (see
    :mod:`spruce.fileformat`)."""
    compaction = check_layer_shapes(stored, model)
    infos = stored.records("mask")
    report = compaction_report(stored)
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


register_kind(FileKind("compacted", 1, claims=is_compacted, header=compacted_header,
                       state=lambda model: model.state_dict(), load=load_compacted))
