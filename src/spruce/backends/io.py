"""The ``converted`` kind of saved model (see :mod:`spruce.io`).

The file holds the converted model's ``state_dict`` — compacted weights, kept indices,
sparse-format buffers — and a header whose layer records hold, per converted layer, the
``config()`` that ``Backend.empty`` rebuilds it from (its backend named inside), and, for
a model converted after compaction, the compacted shapes of the architecture's layers.
Loading needs the model's architecture (e.g. ``spruce.zoo.build(...)`` or the user's
class) and returns a new inference model; the model passed in is not modified.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..compact.io import (
    check_layer_shapes,
    compaction_records,
    compaction_report,
    is_compacted,
    resize_layers,
)
from ..errors import SpruceError
from ..fileformat import FLOAT_NAMES, Fields, Stored, check_finite, layer_key, layer_records
from ..io import FileKind, module_order, register_kind
from .adapt import ADAPTERS, empty_module
from .base import dtype_name, get_backend, names
from .im2col import ConvGeom
from .wholemodel import aliases, drop_aliases, fill_aliases, swap

DTYPES = FLOAT_NAMES


def converted_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules built by a backend (they describe themselves with ``config()``)."""
    found = {}
    for name, mod in model.named_modules():
        cfg = getattr(mod, "config", None)
        if callable(cfg) and isinstance(mod, nn.Module) and name \
                and not any(name.startswith(f + ".") for f in found):  # not inside another
            c = cfg()
            if isinstance(c, dict) and c.get("backend") in names():
                found[name] = mod
    return found


def is_converted(model: nn.Module) -> bool:
    return hasattr(model, "spruce_report") or bool(converted_modules(model))


def converted_header(model: nn.Module) -> dict[str, Any]:
    """Layer records (each converted layer's config; after compaction, every layer's
    compacted shapes) and the model-level fields of a converted model."""
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    modules = converted_modules(model)
    report = getattr(model, "spruce_report", None)
    compaction = getattr(model, "spruce_compaction", None)
    records = compacted_shapes(model, modules) if is_compacted(model) else {}
    header = {"layers": layer_records(module_order(model), **records,
                                      converted={n: m.config() for n, m in modules.items()}),
              "dtype": dtype_name(floats[0].dtype) if floats else "fp32",
              "conversion_report": report.to_dict() if report is not None else None}
    if compaction is not None:
        header["compaction_report"] = compaction.to_dict()
    alias = aliases(model)
    if alias:  # a layer registered under several names is saved once
        header["aliases"] = alias
    return header


def compacted_shapes(model: nn.Module, modules: dict[str, nn.Module]
                     ) -> dict[str, dict[str, Any]]:
    """The compaction records of a model converted after compaction: a converted layer
    records the shapes of the layer it replaces (its ``weight`` and ``bias``), not those
    of the backend's own tensors."""
    records = compaction_records(model)
    for name, module in modules.items():
        for key in [k for k in records["shapes"] if k == name or k.startswith(name + ".")]:
            del records["shapes"][key]
        records["shapes"][name] = {attr: list(t.shape) for attr in ("weight", "bias")
                                   if (t := getattr(module, attr, None)) is not None}
    return records


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return drop_aliases(model.state_dict(), aliases(model))


def _check_adapted(stored: Stored, name: str, cfg: dict[str, Any], dtype: torch.dtype) -> type:
    """An adapted layer (a ``Conv1D`` served as a Linear, a ``Conv1d`` as a Conv2d): its
    adapter is known, and its inner backend's config fits the stored tensors."""
    f = Fields(cfg, stored.path, name, what="a converted layer")
    f.str("adapter", tuple(ADAPTERS))
    inner = f.dict("inner")
    g = Fields(inner, stored.path, name, what="an adapted layer's inner config")
    backend = get_backend(g.str("backend", [n for n in names() if n != "dense"]))
    lay = backend.layout(inner, stored.path, name)
    for tname, (shape, tdtype) in lay.tensors.items():
        stored.expect(layer_key(name, ".inner." + tname), shape, tdtype or dtype, layer=name)
    return backend


def _check_layer(stored: Stored, name: str, cfg: Any, module: nn.Module,
                 dtype: torch.dtype) -> type:
    """One converted layer's config against the architecture's layer and the stored
    tensors — before anything is allocated. Returns its backend. The layer has the shape
    of the architecture's (resized first when the file was compacted)."""
    f = Fields(cfg, stored.path, name, what="a converted layer")
    backend = get_backend(f.str("backend", [n for n in names() if n != "dense"]))
    lay = backend.layout(cfg, stored.path, name)
    if not isinstance(module, backend.layer_types):
        f.fail("backend", f"{backend.name} replaces a Linear/Conv2d, the model has a "
               f"{type(module).__name__} here; pass the architecture the file came from")
    have = (int(module.weight.shape[0]), int(module.weight[0].numel()))
    if lay.view != have:
        f.fail("shape", f"the file's layer is {list(lay.view)}, the model's {list(have)}; pass "
               "the architecture the file was converted from")
    geom = ConvGeom.of(module).config() if isinstance(module, nn.Conv2d) else None
    if geom is not None and (lay.conv is None or {**lay.conv, "out_channels": 0}
                             != {**geom, "out_channels": 0}):
        f.fail("conv", f"conv geometry {lay.conv} is not the model's {geom}")
    if isinstance(module, nn.Linear) and lay.conv is not None:
        f.fail("kind", "a conv2d layer in the file where the model has a Linear")
    if f.get("dtype", str, optional=True) not in (None, dtype_name(dtype)):
        f.fail("dtype", f"{cfg['dtype']} in a file of {dtype_name(dtype)} tensors")
    for tname, (shape, tdtype) in lay.tensors.items():
        stored.expect(layer_key(name, "." + tname), shape, tdtype or dtype, layer=name)
    return backend


def _check_header(stored: Stored) -> torch.dtype:
    """The file's float dtype: every float tensor is stored in it."""
    dtype = DTYPES[stored.header["dtype"]]
    floats = sorted({str(d) for d in stored.dtypes.values() if d.is_floating_point} -
                    {str(dtype)})
    if floats:
        stored.fields().fail("dtype", f"the header says {dtype_name(dtype)} but tensors are "
                             f"stored as {', '.join(floats)}")
    return dtype


def load_converted(stored: Stored, model: nn.Module) -> nn.Module:
    """A new inference model: ``model``'s architecture (first resized to the file's
    compacted shapes, if any) with the file's converted layers and weights. Every config,
    size and index tensor is checked (see :mod:`spruce.fileformat`) — sizes before anything
    is allocated, indices before the model is returned."""
    dtype = _check_header(stored)
    layers = stored.records("converted")
    compaction = check_layer_shapes(stored, model) if stored.compacted else None
    work = copy.deepcopy(model)
    if compaction is not None:
        work = resize_layers(work, compaction)
    backends = {}
    alias = aliases(work)
    for name, cfg in layers.items():
        try:
            module = work.get_submodule(name)
        except AttributeError:
            raise SpruceError("this converted layer does not exist in the model; pass the "
                              "architecture the file was converted from", path=stored.path,
                              layer=name) from None
        backends[name] = _check_adapted(stored, name, cfg, dtype) if "adapter" in cfg else \
            _check_layer(stored, name, cfg, module, dtype)
    for name, cfg in layers.items():
        swap(work, name, empty_module(cfg), alias)
    work = work.to(dtype)
    tensors = load_file(str(stored.path))
    fill_aliases(tensors, stored.header.get("aliases", {}))
    own = {k for k, _ in model.named_buffers() if k.rpartition(".")[0] not in layers}
    check_finite(tensors, stored.path, own)  # the architecture's own buffers may hold -inf
    try:
        work.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise SpruceError(f"does not fit the model ({str(e).splitlines()[0]} …); was it "
                          "converted from another model?", path=stored.path) from None
    for name, backend in backends.items():
        module = work.get_submodule(name)
        problem = backend.check_state(getattr(module, "inner", module))
        if problem:
            raise SpruceError(f"{problem[1]}; the file is damaged or was edited",
                              path=stored.path, layer=name, field=problem[0])
    if stored.header.get("compaction_report") is not None:
        work.spruce_compaction = compaction_report(stored)
    work.eval().requires_grad_(False)
    return work


register_kind(FileKind("converted", 2, claims=is_converted, header=converted_header,
                       state=_state, load=load_converted))
