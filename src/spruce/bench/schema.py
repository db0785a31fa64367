"""The JSON schema of results.json, and a check that needs no third-party package.

``validate`` uses ``jsonschema`` when it is installed; otherwise a small checker of the
keywords this schema uses (``type``, ``enum``, ``minimum``, ``required``, ``properties``,
``items``). Both raise ``ValueError`` naming the offending path.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_OPT_STR = {"type": ["string", "null"]}
_OPT_NUM = {"type": ["number", "null"]}
_OPT_INT = {"type": ["integer", "null"]}

ENVIRONMENT_SCHEMA = {
    "type": "object",
    "required": ["device", "device_name", "torch", "spruce", "python", "threads", "cuda",
                 "cudnn", "triton", "tf32", "date"],
    "properties": {
        "device": _STR, "device_name": _STR, "torch": _STR, "spruce": _STR, "python": _STR,
        "threads": {"type": "integer", "minimum": 1},
        "cuda": _OPT_STR, "cudnn": _OPT_INT, "triton": _OPT_STR, "date": _STR,
        "tf32": {"type": ["object", "null"]},
    },
}

RECORD_SCHEMA = {
    "type": "object",
    "required": ["kind", "name", "pattern", "density", "backend", "dtype", "device", "batch",
                 "input_shape", "median_ms", "p10_ms", "p90_ms", "runs", "ratio_to_dense",
                 "param_ratio", "error", "extra", "device_name", "torch", "spruce",
                 "threads", "date"],
    "properties": {
        "kind": {"enum": ["layer", "model", "step"]},
        "name": _STR, "pattern": _OPT_STR,
        "density": {"type": ["number", "null"], "minimum": 0},
        "backend": _OPT_STR, "dtype": _OPT_STR, "device": _OPT_STR, "batch": _OPT_INT,
        "input_shape": {"type": "array"},
        "median_ms": _OPT_NUM, "p10_ms": _OPT_NUM, "p90_ms": _OPT_NUM,
        "runs": {"type": "integer", "minimum": 0},
        "ratio_to_dense": _OPT_NUM, "param_ratio": _OPT_NUM, "error": _OPT_STR,
        "extra": {"type": "object"},
        "device_name": _OPT_STR, "torch": _OPT_STR, "spruce": _OPT_STR,
        "threads": _OPT_INT, "date": _OPT_STR,
    },
}

RESULTS_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "spruce bench results.json",
    "type": "object",
    "required": ["environment", "records"],
    "properties": {
        "environment": ENVIRONMENT_SCHEMA,
        "records": {"type": "array", "items": RECORD_SCHEMA},
    },
}


def validate(results: dict, schema: dict | None = None) -> None:
    """Raise ``ValueError`` unless ``results`` (a loaded results.json) fits the schema."""
    schema = RESULTS_SCHEMA if schema is None else schema
    try:
        import jsonschema
    except ImportError:
        check(results, schema)
        return
    try:
        jsonschema.Draft202012Validator(schema).validate(results)
    except jsonschema.ValidationError as e:
        where = "$" + "".join(f"[{p!r}]" for p in e.absolute_path)
        raise ValueError(f"results.json at {where}: {e.message}") from e


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "null": type(None),
                          "boolean": bool, "integer": int, "number": (int, float)}


def _is(value: Any, type_name: str) -> bool:
    if isinstance(value, bool) and type_name in ("integer", "number"):
        return False   # JSON keeps booleans apart from numbers; Python does not
    return isinstance(value, _TYPES[type_name])


def check(value: Any, schema: dict, path: str = "$") -> None:
    """The built-in checker: the subset of JSON Schema that RESULTS_SCHEMA uses."""
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_is(value, t) for t in types):
            raise ValueError(f"results.json at {path}: expected {' or '.join(types)}, "
                             f"got {type(value).__name__} {value!r:.80}")
    if "enum" in schema and value not in schema["enum"]:
        raise ValueError(f"results.json at {path}: {value!r} is not one of {schema['enum']}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        raise ValueError(f"results.json at {path}: {value!r} < minimum {schema['minimum']}")
    if isinstance(value, dict):
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise ValueError(f"results.json at {path}: missing required keys {missing}")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                check(value[key], sub, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            check(item, schema["items"], f"{path}[{i}]")
