"""What spruce accepts from a file: one place that checks every header and tensor it reads.

A saved model is untrusted input. Every file spruce writes is safetensors (no pickle) with a
JSON header under the metadata key ``"spruce"``; this module checks, before anything is
allocated or built:

- the header is a JSON object of a known ``format`` (``masked``, ``compacted``,
  ``converted``), field by field, with types and ranges (:class:`Fields`);
- the stored tensors' shapes and dtypes, read from the file's index without loading them
  (:class:`Stored`), against the header and against the architecture;
- after loading: masks are boolean (or exactly 0/1), sit on prunable layers and follow their
  declared pattern(s); float tensors are finite; index tensors are in range and ordered
  (:func:`check_index`, :func:`check_csr`);
- plan files of ``backend="auto"`` (:func:`check_plan`).

Every error is a :class:`~spruce.errors.SpruceError` naming the file, the layer, the field
and the fix. A file never names code to run: a model given as ``FILE.py:FN`` is recorded
in a header, but only the user's ``--model`` runs it (see ``spruce.cli.common``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from .errors import SpruceError
from .patterns import get_pattern
from .view import to_view, view_of

HEADER_KEY = "spruce"
FORMATS = ("masked", "compacted", "converted")
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


@dataclass(frozen=True)
class Stored:
    """A spruce file as read from its index: the header (a checked JSON object) and every
    tensor's shape and dtype — no tensor loaded."""

    path: Path
    header: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]

    @property
    def format(self) -> str:
        return self.header["format"]

    def fields(self) -> Fields:
        return Fields(self.header, self.path)

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
    """Open ``path``: a checked header and the stored tensors' shapes/dtypes."""
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
    """The JSON header: an object with a known ``format``, a string ``version`` and, when
    present, a zoo model name and dataset that are strings."""
    try:
        header = json.loads(text)
    except ValueError as e:
        raise SpruceError(f"the spruce header is not valid JSON ({e})", path=path) from None
    f = Fields(header, path, what="the spruce header")
    f.str("format", FORMATS)
    f.str("version", optional=True)
    f.str("model", optional=True)
    f.str("dataset", optional=True)
    return header


def expect_format(stored: Stored, fmt: str) -> None:
    if stored.format != fmt:
        raise SpruceError(f"holds a {stored.format!r} model, not a {fmt} one; load it with "
                          "spruce.load", path=stored.path, field="format")


def layer_key(name: str, suffix: str) -> str:
    """State-dict key of ``suffix`` (``".weight"``) under layer ``name`` ("" for a model
    that is a single layer)."""
    return name + suffix if name else suffix.lstrip(".")


# ------------------------------------------------------------------ tensors after loading

def check_finite(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                 skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Every float tensor but those in ``skip`` (the architecture's own buffers, which may
    legitimately hold ``-inf``) is finite."""
    for key, t in tensors.items():
        if key in skip:
            continue
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise SpruceError(f"tensor '{key}' holds {bad} NaN/inf values; the file is "
                              "damaged", path=path)


def check_index(t: torch.Tensor, size: int, what: str, strict_order: bool = True
                ) -> str | None:
    """Why the 1-D index tensor ``t`` is not a valid list into ``[0, size)`` — strictly
    increasing when ``strict_order`` — or None."""
    if t.dim() != 1 or t.is_floating_point() or t.dtype == torch.bool:
        return f"{what} must be a 1-D integer tensor, got {list(t.shape)} {t.dtype}"
    if t.numel() == 0:
        return None
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= size:
        return f"{what} holds indices in [{lo}, {hi}], outside [0, {size})"
    if strict_order and t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        return f"{what} must be strictly increasing (sorted, no duplicates)"
    return None


def check_csr(crow: torch.Tensor, col: torch.Tensor, rows: int, cols: int) -> str | None:
    """Why ``(crow, col)`` is not a valid CSR structure of a ``rows × cols`` matrix (crow
    starts at 0, never decreases, ends at nnz; columns in range and strictly increasing
    within each row), or None."""
    crow64, col64 = crow.to(torch.int64), col.to(torch.int64)
    if crow.dim() != 1 or crow.numel() != rows + 1:
        return f"crow_indices must have {rows + 1} entries, has {list(crow.shape)}"
    if int(crow64[0]) != 0 or int(crow64[-1]) != col.numel():
        return (f"crow_indices must start at 0 and end at nnz={col.numel()}, got "
                f"{int(crow64[0])} … {int(crow64[-1])}")
    if bool((crow64[1:] < crow64[:-1]).any()):
        return "crow_indices must never decrease"
    why = check_index(col64, cols, "col_indices", strict_order=False)
    if why or col.numel() < 2:
        return why
    row_of = torch.repeat_interleave(torch.arange(rows), crow64[1:] - crow64[:-1])
    same_row = row_of[1:] == row_of[:-1]
    if bool((same_row & (col64[1:] <= col64[:-1])).any()):
        return "col_indices must be strictly increasing within each row"
    return None


def check_mask_values(mask: torch.Tensor) -> str | None:
    """Why a stored mask is not boolean or exactly 0/1 (NaN, 0.3, …), or None."""
    if mask.dtype == torch.bool:
        return None
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        return f"mask of dtype {mask.dtype} holds values other than 0 and 1"
    return None


# ------------------------------------------------------------------ masks

# Patterns whose structure survives intersection with any other mask (a sub-mask of an N:M
# mask is N:M). Grouping patterns (block, group, channel) keep whole groups, which a later
# mask of another pattern legitimately splits.
SUBSET_CLOSED = ("element", "vector")


def mask_infos(f: Fields, key: str) -> dict[str, dict[str, Any]]:
    """The per-layer mask records of a header (``layers`` of a masked file, ``masks`` of a
    compacted one): ``patterns`` a list of valid pattern specs, ``density`` a number,
    ``weights_changed`` (optional) true when the kept weights are not the original ones."""
    infos = f.dict(key)
    for name, info in infos.items():
        g = Fields(info, f.path, name, what="a mask record")
        for spec in g.get("patterns", list, optional=True) or []:
            try:
                get_pattern(spec)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                g.fail("patterns", f"{spec!r:.80} is not a valid pattern ({e})")
        g.number("density", optional=True)
        if "weights_changed" in info:  # a one-shot criterion or reconstruction refit them
            g.bool("weights_changed")
    return infos


def check_mask(mask: torch.Tensor, info: dict[str, Any], path: str | os.PathLike,
               name: str, layer: torch.nn.Module | None = None) -> None:
    """A loaded mask (the layer's weight shape) is 0/1 and follows its declared pattern(s).

    No pattern declared: the mask must keep everything. One pattern: the mask conforms to
    it. Several (masks of later prunings are intersected with earlier ones): the mask
    conforms to each subset-closed pattern (element, N:M) and, when every declared pattern
    is the same, to that one; a mix of grouping patterns is not checked further.
    """
    why = check_mask_values(mask)
    if why:
        raise SpruceError(why + "; the file is damaged", path=path, layer=name, field="mask")
    view = to_view(mask.to(torch.bool)) if layer is None else view_of(layer, mask.to(torch.bool))
    specs = info.get("patterns") or []
    if not specs and not bool(view.all()):
        raise SpruceError("the mask prunes entries but the header declares no pattern; the "
                          "file is damaged", path=path, layer=name, field="patterns")
    same = all(s == specs[0] for s in specs)
    for spec in specs:
        if not same and spec["name"] not in SUBSET_CLOSED:
            continue
        problem = get_pattern(spec).conforms(view)
        if problem:
            raise SpruceError(f"mask breaks its declared pattern {spec['name']}: {problem}; "
                              "the file is damaged or was edited", path=path, layer=name,
                              field="patterns")


# ------------------------------------------------------------------ plan files

def check_plan(data: Any, path: str | os.PathLike, fmt: str, backends: list[str]) -> None:
    """A plan file of ``backend="auto"``: field by field (see ``spruce.auto.Plan``)."""
    f = Fields(data, path, what="a plan file")
    f.str("format", (fmt,))
    for key in ("device_name", "torch", "dtype"):
        f.str(key)
    _numbers(f, "model_ms")
    for name, choice in f.dict("layers").items():
        c = Fields(choice, path, name, what="a plan layer")
        c.str("name", (name,))
        c.str("key")
        c.ints("view", 2)
        if c.get("input_shape", list, optional=True) is not None:
            c.ints("input_shape", len(choice["input_shape"]), lo=0)
        _numbers(c, "times_ms")
        if not all(isinstance(v, str) for v in (c.dict("errors", True) or {}).values()):
            c.fail("errors", "values must be strings")
        c.str("choice", backends, optional=True)
        if "reverted" in choice:
            c.bool("reverted")
        if not all(isinstance(v, str) for v in c.get("probed", list, optional=True) or []):
            c.fail("probed", "must be a list of backend names")
        unknown = set(choice) - {"name", "key", "view", "input_shape", "times_ms", "errors",
                                 "choice", "reverted", "probed"}
        if unknown:
            c.fail(sorted(unknown)[0], "unknown field")


def _numbers(f: Fields, key: str) -> None:
    values = f.dict(key, optional=True) or {}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               and v >= 0 for v in values.values()):
        f.fail(key, "must map names to non-negative times in ms")
