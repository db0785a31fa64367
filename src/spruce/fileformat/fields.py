"""Typed, range-checked access to the JSON objects of a header (:class:`Fields`) and the
constants every check shares."""

from __future__ import annotations

import math
import os
from typing import Any

import torch

from ..errors import SpruceError

HEADER_KEY = "spruce"
MAX_DIM = 1 << 31  # no layer dimension or count in a header is larger
FLOAT_NAMES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# safetensors' dtype names → torch
ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
             "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
             "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
INDEX_DTYPES = {"int32": torch.int32, "int64": torch.int64}


class Fields:
    """Typed access to one JSON object of a header; each getter checks type and range and
    raises a :class:`SpruceError` naming the file, layer and field."""

    def __init__(self, obj: Any, path: str | os.PathLike | None = None,
                 layer: str | None = None, what: str = "header entry"):
        self.path, self.layer = path, layer
        if not isinstance(obj, dict):
            self.fail(None, f"{what} must be a JSON object, not {type(obj).__name__}")
        self.obj = obj

    def fail(self, field: str | None, message: str) -> None:
        raise SpruceError(message + "; the file is corrupt or was not written by spruce",
                          path=self.path, layer=self.layer, field=field)

    def get(self, key: str, types: type | tuple[type, ...], optional: bool = False) -> Any:
        if key not in self.obj:
            if optional:
                return None
            self.fail(key, "missing")
        value = self.obj[key]
        if value is None and optional:
            return None
        bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple)
                                                            else (types,))
        if not isinstance(value, types) or bad_bool:
            self.fail(key, f"expected {_type_names(types)}, got {value!r:.60}")
        return value

    def int(self, key: str, lo: int = 1, hi: int = MAX_DIM, optional: bool = False) -> int:
        value = self.get(key, int, optional)
        if value is not None and not lo <= value <= hi:
            self.fail(key, f"{value} is outside [{lo}, {hi}]")
        return value

    def ints(self, key: str, n: int, lo: int = 1, hi: int = MAX_DIM) -> tuple[int, ...]:
        value = self.get(key, list)
        if len(value) != n or not all(isinstance(v, int) and not isinstance(v, bool)
                                      and lo <= v <= hi for v in value):
            self.fail(key, f"expected {n} integers in [{lo}, {hi}], got {value!r:.60}")
        return tuple(value)

    def str(self, key: str, choices: tuple | list | None = None, optional: bool = False
            ) -> str | None:
        value = self.get(key, str, optional)
        if value is not None and choices is not None and value not in choices:
            self.fail(key, f"{value!r:.60} is not one of {', '.join(map(str, choices))}")
        return value

    def bool(self, key: str) -> bool:
        return self.get(key, bool)

    def dict(self, key: str, optional: bool = False) -> dict | None:
        return self.get(key, dict, optional)

    def number(self, key: str, optional: bool = False) -> float | None:
        value = self.get(key, (int, float), optional)
        if value is not None and not math.isfinite(value):
            self.fail(key, f"{value} is not a finite number")
        return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({"dict": "an object", "list": "a list", "str": "a string",
                        "int": "an integer", "float": "a number", "bool": "true/false"}
                       .get(t.__name__, t.__name__) for t in types)
