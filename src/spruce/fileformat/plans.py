"""Plan files of ``backend="auto"`` (see ``spruce.auto.Plan``), field by field."""

from __future__ import annotations

import math
import os
from typing import Any

from .fields import Fields


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
