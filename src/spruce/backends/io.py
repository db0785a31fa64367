"""Save and load converted (inference) models.

The file holds the converted model's ``state_dict`` — compacted weights, kept indices,
sparse-format buffers — and a header with, per converted layer, its backend and the
``config()`` that ``Backend.empty`` rebuilds it from. Loading needs the model's
architecture (e.g. ``spruce.zoo.build(...)`` or the user's class) and returns a new
inference model; the model passed in is not modified.
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
from ..io import atomic_save
from .adapt import empty_module
from .base import dtype_name, names
from .wholemodel import aliases, drop_aliases, fill_aliases, swap

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


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


def save_converted(model: nn.Module, path: str | os.PathLike,
                   extra: dict[str, Any] | None = None) -> Path:
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    report = getattr(model, "spruce_report", None)
    header = {"format": "converted", "version": __version__,
              "dtype": dtype_name(floats[0].dtype) if floats else "fp32",
              "layers": {n: m.config() for n, m in converted_modules(model).items()},
              "report": report.to_dict() if report is not None else None, **(extra or {})}
    alias = aliases(model)
    if alias:  # a layer registered under several names is saved once
        header["aliases"] = alias
    return atomic_save(drop_aliases(model.state_dict(), alias), path, header)


def load_converted(path: Path, model: nn.Module, header: dict[str, Any]) -> nn.Module:
    work = copy.deepcopy(model)
    alias = aliases(work)
    for name, cfg in header["layers"].items():
        try:
            work.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: converted layer '{name}' does not exist in the model; "
                             "pass the architecture the file was converted from") from None
        swap(work, name, empty_module(cfg), alias)
    dtype = DTYPES.get(header.get("dtype", "fp32"), torch.float32)
    work = work.to(dtype)
    tensors = load_file(str(path))
    fill_aliases(tensors, header.get("aliases", {}))
    try:
        work.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: does not fit the model ({str(e).splitlines()[0]} …); "
                         "was it converted from another model?") from None
    work.eval().requires_grad_(False)
    return work
