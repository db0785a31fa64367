"""``spruce.save`` / ``spruce.load`` for pruned (masked) and converted models alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

import torch

from . import io
from .backends import io as converted_io
from .backends.convert import convert as convert_with


def convert(model: nn.Module, backend: str = "dense", dtype: torch.dtype | None = None,
            example_input: Any = None, verify: bool = True, **options: Any) -> nn.Module:
    """A new inference model: every masked layer runs on ``backend``'s module, verified
    against the dense masked layer. ``backend="auto"`` measures every candidate per layer
    on ``example_input``'s shapes and keeps the fastest (``plan=PATH`` caches the choices;
    see :mod:`spruce.auto`). The report is at ``result.spruce_report``."""
    if backend == "auto":
        from .auto import convert_auto

        return convert_auto(model, dtype=dtype, example_input=example_input, verify=verify,
                            **options)
    return convert_with(model, backend, dtype=dtype, example_input=example_input,
                        verify=verify, **options)


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a pruned or converted model to ``path`` as safetensors (atomically)."""
    if converted_io.is_converted(model):
        return converted_io.save_converted(model, path, extra)
    return io.save(model, path, extra)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save` onto ``model``'s architecture.

    Pruned files restore weights and masks into ``model`` in place (and return it);
    converted files return a new inference model built on ``model``'s architecture.
    """
    path = Path(path)
    header = io.read_header(path)
    if header.get("format") == "converted":
        return converted_io.load_converted(path, model, header)
    return io.load(path, model)
