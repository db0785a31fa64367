"""Older header layouts, upgraded to the current one before it is checked.

Format version 1 (spruce 0.1.0 before the version field) has no ``format_version``; its
``format`` names the kind and each kind keeps its layers its own way:

- ``masked``: ``layers`` maps a layer name to its mask record;
- ``compacted``: ``masks`` maps a layer name to its mask record; ``compaction`` holds
  ``shapes`` (``"fc.weight" → [8, 128]``) and ``folded`` (BatchNorm names); ``report``;
- ``converted``: ``layers`` maps a layer name to its module's config; ``dtype``,
  ``aliases``, ``report`` and (converted after compaction) ``compaction``.

An upgrade only moves fields: it checks the types it needs to move them, and the
current schema (:func:`~spruce.fileformat.schema.check_header`) checks everything after.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ..errors import SpruceError
from .fields import Fields
from .schema import FORMAT_VERSION

V1_KINDS = ("masked", "compacted", "converted")
# v1 kind → (the header field holding its per-layer map, the record field it becomes)
V1_LAYERS = {"masked": ("layers", "mask"), "compacted": ("masks", "mask"),
             "converted": ("layers", "converted")}
V1_REPORT = {"compacted": "compaction_report", "converted": "conversion_report"}
V1_ONLY = ("format", "layers", "masks", "compaction", "report")


def upgrade_v1(header: dict[str, Any], path: str | os.PathLike) -> dict[str, Any]:
    """A version-1 header in the version-2 layout."""
    f = Fields(header, path, what="the spruce header")
    kind = f.str("format", V1_KINDS)
    records: dict[str, dict[str, Any]] = {}

    def record(name: str) -> dict[str, Any]:
        return records.setdefault(name, {"name": name})

    key, field = V1_LAYERS[kind]
    for name, value in f.dict(key).items():
        record(name)[field] = value
    compaction = f.dict("compaction", optional=kind != "compacted") \
        if kind != "masked" else None
    if compaction is not None:
        g = Fields(compaction, path, what="the compaction record")
        for tensor, shape in g.dict("shapes").items():
            name, _, attr = tensor.rpartition(".")
            record(name).setdefault("shapes", {})[attr] = shape
        for name in g.get("folded", list, optional=True) or []:
            if not isinstance(name, str):
                g.fail("folded", f"{name!r:.60} is not a layer name")
            record(name)["folded"] = True
    out = {k: v for k, v in header.items() if k not in V1_ONLY}
    if kind in V1_REPORT and header.get("report") is not None:
        out[V1_REPORT[kind]] = f.dict("report")
    return {"format_version": 2, "kind": kind, **out, "layers": list(records.values())}


# version → the function that takes a header of that version one version up
UPGRADES: dict[int, Callable[[dict[str, Any], str | os.PathLike], dict[str, Any]]] = {
    1: upgrade_v1}


def upgrade(header: Any, path: str | os.PathLike) -> Any:
    """``header`` in the current layout (unchanged when it already is). A header without
    ``format_version`` but with a ``format`` is version 1; a newer version than this spruce
    reads is an error naming the fix."""
    f = Fields(header, path, what="the spruce header")
    version = 1 if "format_version" not in header and "format" in header else \
        f.int("format_version", 1, 1 << 20)
    if version > FORMAT_VERSION:
        raise SpruceError(f"format version {version} is newer than this spruce reads "
                          f"({FORMAT_VERSION}); upgrade spruce to load it", path=path,
                          field="format_version")
    while version < FORMAT_VERSION:
        header = UPGRADES[version](header, path)
        version += 1
    return header
