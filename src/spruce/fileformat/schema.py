"""The header schema (format version 2): one layout for every kind of saved model.

```
{"format_version": 2, "kind": "masked" | "compacted" | "converted",
 "version": "0.1.0",                        # spruce that wrote the file
 "model": "resnet18", "dataset": "cifar10", # optional: the zoo model to rebuild
 "layers": [                                # one record per layer the file changes
   {"name": "fc",
    "mask": {"patterns": [...], "density": 0.5, ...},   # masked, compacted
    "shapes": {"weight": [8, 128], "bias": [8]},        # compacted (and converted after it)
    "folded": true,                                     # a BatchNorm compaction folded away
    "converted": {"backend": "groupwise", ...}}],       # converted: the module's config()
 "dtype": "fp32",                           # converted: float dtype of every tensor
 "aliases": {"a": ["b"]},                   # converted: a layer saved once under two names
 "compaction_report": {...}, "conversion_report": {...},
 ...}                                       # any other key: a free-form note (training run …)
```

:func:`check_header` checks a header against this, field by field, before any loader sees
it; what the kind allows is data (:data:`KINDS`), not a branch per kind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..patterns import get_pattern
from .fields import FLOAT_NAMES, MAX_DIM, Fields

FORMAT_VERSION = 2


@dataclass(frozen=True)
class KindSchema:
    """What a header of one kind may hold."""

    record_fields: tuple[str, ...]  # per-layer fields besides "name"
    model_fields: tuple[str, ...]   # header fields besides the common ones
    required: tuple[str, ...] = ()  # model fields it must have


KINDS: dict[str, KindSchema] = {
    "masked": KindSchema(("mask",), ()),
    "compacted": KindSchema(("mask", "shapes", "folded"), ("compaction_report",)),
    "converted": KindSchema(("shapes", "folded", "converted"),
                            ("dtype", "aliases", "conversion_report", "compaction_report"),
                            ("dtype",)),
}
COMMON = ("format_version", "kind", "version", "model", "dataset", "layers")
SCHEMA_FIELDS = frozenset(COMMON).union(*(k.model_fields for k in KINDS.values()))


# ------------------------------------------------------------------ per-layer fields

def _mask(g: Fields, value: Any) -> None:
    """A mask record: ``patterns`` valid pattern specs, ``density`` a number,
    ``weights_changed`` (optional) true when the kept weights are not the original ones;
    the rest (criterion, scope, target) is kept as the mask's info."""
    m = Fields(value, g.path, g.layer, what="a mask record")
    for spec in m.get("patterns", list, optional=True) or []:
        try:
            get_pattern(spec)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            m.fail("patterns", f"{spec!r:.80} is not a valid pattern ({e})")
    m.number("density", optional=True)
    if "weights_changed" in value:  # a one-shot criterion or reconstruction refit them
        m.bool("weights_changed")


def _shapes(g: Fields, value: Any) -> None:
    """Tensor name (an attribute of the layer) → its compacted shape."""
    shapes = g.dict("shapes")
    for attr, shape in shapes.items():
        if not attr.isidentifier():
            g.fail("shapes", f"{attr!r:.60} is not a tensor name of a layer")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(n, int) and not isinstance(n, bool) and 0 < n <= MAX_DIM
                for n in shape):
            g.fail(f"shapes.{attr}", f"expected a list of up to 8 sizes in [1, {MAX_DIM}], "
                   f"got {shape!r:.60}")


def _folded(g: Fields, value: Any) -> None:
    if g.bool("folded") is not True:
        g.fail("folded", "only true is stored (a BatchNorm folded into its producer)")


def _converted(g: Fields, value: Any) -> None:
    """The backend module's ``config()``; the backend's ``layout`` checks the rest."""
    c = Fields(value, g.path, g.layer, what="a converted layer")
    if "adapter" in value:
        c.str("adapter")
        c.dict("inner")
    else:
        c.str("backend")


RECORD_FIELDS: dict[str, Callable[[Fields, Any], None]] = {
    "mask": _mask, "shapes": _shapes, "folded": _folded, "converted": _converted}


# ------------------------------------------------------------------ model-level fields

def _aliases(f: Fields) -> None:
    for first, others in f.dict("aliases").items():
        if not isinstance(others, list) or not all(isinstance(o, str) for o in others):
            f.fail("aliases", f"{first!r:.60} must map to a list of layer names")


MODEL_FIELDS: dict[str, Callable[[Fields], Any]] = {
    "dtype": lambda f: f.str("dtype", tuple(FLOAT_NAMES)),
    "aliases": _aliases,
    "conversion_report": lambda f: f.dict("conversion_report", optional=True),
    "compaction_report": lambda f: f.dict("compaction_report", optional=True),
}


def check_header(header: Any, path: str | os.PathLike) -> dict[str, Any]:
    """``header`` follows the schema of its kind (see the module docstring)."""
    f = Fields(header, path, what="the spruce header")
    f.int("format_version", FORMAT_VERSION, FORMAT_VERSION)
    kind = KINDS[f.str("kind", tuple(KINDS))]
    for key in ("version", "model", "dataset"):
        f.str(key, optional=True)
    for key in sorted(SCHEMA_FIELDS - set(COMMON)):  # the same first error every run
        if key in header and key not in kind.model_fields:
            f.fail(key, f"a {header['kind']} model has no {key}")
        if key in header or key in kind.required:
            MODEL_FIELDS[key](f)
    _records(f, kind)
    return header


def _records(f: Fields, kind: KindSchema) -> None:
    seen: set[str] = set()
    for record in f.get("layers", list):
        g = Fields(record, f.path, what="a layer record")
        name = g.str("name")
        if name in seen:
            g.fail("name", f"layer {name!r:.60} has two records")
        seen.add(name)
        g.layer = name
        for key, value in record.items():
            if key == "name":
                continue
            if key not in kind.record_fields:
                g.fail(key, "unknown field" if key not in RECORD_FIELDS else
                       f"a {f.obj['kind']} model's layer has no {key}")
            RECORD_FIELDS[key](g, value)


def layer_records(model_order: list[str], **fields: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer records from ``field=name→value`` maps, in ``model_order`` (the model's
    module names; names not in it follow, sorted)."""
    names = {n for values in fields.values() for n in values}
    rank = {n: i for i, n in enumerate(model_order)}
    ordered = sorted(names, key=lambda n: (rank.get(n, len(rank)), n))
    return [{"name": n, **{k: v[n] for k, v in fields.items() if n in v}} for n in ordered]
