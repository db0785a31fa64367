"""Reading a file's header and tensor index: :func:`read_stored`, the one function that
opens a spruce file before its tensors are loaded."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ..errors import SpruceError
from .fields import HEADER_KEY, ST_DTYPES, Fields
from .schema import check_header
from .upgrade import upgrade


def layer_key(name: str, suffix: str) -> str:
    """State-dict key of ``suffix`` (``".weight"``) under layer ``name`` ("" for a model
    that is a single layer)."""
    return name + suffix if name else suffix.lstrip(".")


@dataclass(frozen=True)
class Stored:
    """A spruce file as read from its index: the header (checked, in the current layout)
    and every tensor's shape and dtype — no tensor loaded."""

    path: Path
    header: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    @property
    def kind(self) -> str:
        return self.header["kind"]

    def fields(self) -> Fields:
        return Fields(self.header, self.path)

    def records(self, field: str) -> dict[str, Any]:
        """Layer name → ``field`` of each layer record that has it."""
        return {r["name"]: r[field] for r in self.header["layers"] if field in r}

    @property
    def compacted(self) -> bool:
        """Whether the file holds compacted (smaller) layers."""
        return any("shapes" in r or "folded" in r for r in self.header["layers"])

    def compaction(self) -> dict[str, Any]:
        """The compacted shapes by tensor name (``"fc.weight" → [8, 128]``) and the folded
        BatchNorms."""
        shapes = {layer_key(name, "." + attr): shape
                  for name, record in self.records("shapes").items()
                  for attr, shape in record.items()}
        return {"shapes": shapes, "folded": list(self.records("folded"))}

    def expect(self, key: str, shape: tuple[int, ...], dtype: torch.dtype | None = None,
               layer: str | None = None) -> None:
        """``key`` is stored with ``shape`` (and ``dtype``)."""
        if key not in self.shapes:
            raise SpruceError(f"tensor '{key}' is missing; the file is damaged",
                              path=self.path, layer=layer)
        if self.shapes[key] != tuple(shape) or (dtype is not None
                                                and self.dtypes[key] != dtype):
            have = f"{list(self.shapes[key])} {self.dtypes[key]}"
            want = f"{list(shape)}{'' if dtype is None else f' {dtype}'}"
            raise SpruceError(f"tensor '{key}' is stored as {have}, the header and the model "
                              f"say {want}; the file is damaged or belongs to another model",
                              path=self.path, layer=layer)


def read_stored(path: str | os.PathLike) -> Stored:
    """Open ``path``: its header (upgraded to the current layout and checked) and the
    stored tensors' shapes/dtypes. Every loader goes through this, once per file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            shapes, dtypes = {}, {}
            for key in f.keys():
                sl = f.get_slice(key)
                shapes[key], dtypes[key] = tuple(sl.get_shape()), sl.get_dtype()
    except Exception as e:  # safetensors raises its own error types
        raise SpruceError(f"not a safetensors file ({e})", path=path) from None
    if HEADER_KEY not in meta:
        raise SpruceError("safetensors file without a spruce header; was it written by "
                          "spruce.save?", path=path)
    unknown = sorted({d for d in dtypes.values() if d not in ST_DTYPES})
    if unknown:
        raise SpruceError(f"tensors of unsupported dtype {unknown}", path=path)
    return Stored(path, parse_header(meta[HEADER_KEY], path), shapes,
                  {k: ST_DTYPES[d] for k, d in dtypes.items()})


def parse_header(text: str, path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header in the current layout, checked field by field."""
    try:
        header = json.loads(text)
    except ValueError as e:
        raise SpruceError(f"the spruce header is not valid JSON ({e})", path=path) from None
    return check_header(upgrade(header, path), path)
