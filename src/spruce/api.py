"""``spruce.save`` / ``spruce.load`` for pruned (masked) and converted models alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from . import io
from .backends import io as converted_io


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
