"""One row per measurement, and a writer that never loses a row.

    writer = ResultsWriter("runs/bert")
    dense = writer.append(measure("bert-base-ffn", dense_fn, xs, device="cpu", dtype="fp32"))
    writer.append(measure("bert-base-ffn", fast_fn, xs, device="cpu", pattern="group",
                          density=0.5, backend="gather-gemm", dense_ms=dense.median_ms))

``measure`` turns the failures a sweep meets (out of memory, an unsupported shape or dtype)
into an error row instead of raising, so the sweep goes on. ``ResultsWriter.append`` rewrites
``results.json`` and ``results.csv`` atomically after every record: a sweep stopped with
Ctrl-C keeps every row measured so far.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_text
from .env import environment
from .timing import time_fn

KINDS = ("layer", "model", "step")
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.float64: "fp64"}
# What a sweep survives. torch.cuda.OutOfMemoryError exists (as a RuntimeError) on CPU builds
# too; the getattr keeps even older builds importable.
_OOM = getattr(torch.cuda, "OutOfMemoryError", RuntimeError)
MEASURE_ERRORS = (_OOM, RuntimeError, ValueError, NotImplementedError)


def dtype_name(dtype: torch.dtype | str | None) -> str | None:
    """``torch.float16`` -> ``"fp16"``; strings pass through."""
    if dtype is None or isinstance(dtype, str):
        return dtype
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass
class Record:
    kind: str                               # "layer" | "model" | "step"
    name: str                               # shape preset ("bert-base-ffn") or model name
    pattern: str | None = None              # sparsity pattern; None for dense
    density: float | None = None            # kept ratio; None for dense
    backend: str | None = None              # execution path ("dense", "gather-gemm", ...)
    dtype: str | None = None                # "fp32" | "fp16" | "bf16" | ...
    device: str | None = None               # "cpu", "cuda:0"
    batch: int | None = None
    input_shape: list = field(default_factory=list)
    median_ms: float | None = None          # None on an error row
    p10_ms: float | None = None
    p90_ms: float | None = None
    runs: int = 0                           # samples behind the median
    ratio_to_dense: float | None = None     # median / dense median, same run, same device
    param_ratio: float | None = None        # stored parameters / dense parameters
    error: str | None = None                # why there is no timing (OOM, unsupported, ...)
    extra: dict = field(default_factory=dict)  # timing method, mean, spread, ideal, ...
    # where it ran (from environment()); the file header holds the rest
    device_name: str | None = None
    torch: str | None = None
    spruce: str | None = None
    threads: int | None = None
    date: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Record {self.name!r}: kind must be one of {KINDS}; "
                             f"got {self.kind!r}")
        self.dtype = dtype_name(self.dtype)
        self.device = None if self.device is None else str(self.device)
        self.input_shape = _jsonable_shape(self.input_shape)

    @classmethod
    def error_row(cls, *, error: str, **fields: Any) -> Record:
        """A row for a case that could not be measured; its timings are None."""
        timings = ("median_ms", "p10_ms", "p90_ms", "runs", "ratio_to_dense")
        return cls(**{k: v for k, v in fields.items() if k not in timings}, error=error)

    def to_dict(self) -> dict:
        """JSON-able: non-finite floats become None."""
        return {k: _finite_or_none(v) for k, v in asdict(self).items()}


RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _jsonable_shape(shape) -> list:
    if isinstance(shape, dict):   # HF inputs: the shape of the first entry (input_ids)
        shape = next(iter(shape.values()), [])
    return [_jsonable_shape(s) if isinstance(s, (list, tuple, torch.Size)) else int(s)
            for s in shape]


def _shape_of(x) -> list:
    if isinstance(x, dict):
        x = next(iter(x.values()), None)
    return list(x.shape) if isinstance(x, torch.Tensor) else []


def describe_error(e: BaseException) -> str:
    """``"OutOfMemoryError: CUDA out of memory. ..."``: type and first line, 300 chars."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:300]


def measure(name: str, fn: Callable[[Any], Any], inputs: list, *,
            device: torch.device | str, kind: str = "layer", dense_ms: float | None = None,
            warmup: int = 3, min_runs: int = 20, min_time_s: float = 0.2,
            threads: int | None = None, cuda_graph: bool = False,
            max_time_s: float | None = None, **fields: Any) -> Record:
    """Time ``fn`` over ``inputs`` (see ``time_fn``) into a ``Record``; an error row on failure.

    ``fields`` are Record fields (pattern, density, backend, dtype, param_ratio, extra, ...).
    ``batch`` and ``input_shape`` default to those of ``inputs[0]``. ``dense_ms`` (the dense
    median of the same run) gives ``ratio_to_dense``.
    """
    env = environment(device, threads=threads)
    shape = _shape_of(inputs[0]) if inputs else []
    row: dict[str, Any] = dict(kind=kind, name=name, device=env["device"],
                               batch=shape[0] if shape else None, input_shape=shape,
                               **{k: env[k] for k in ("device_name", "torch", "spruce",
                                                      "threads", "date")})
    row.update(fields)
    try:
        t = time_fn(fn, inputs, device=device, warmup=warmup, min_runs=min_runs,
                    min_time_s=min_time_s, threads=threads, cuda_graph=cuda_graph,
                    max_time_s=max_time_s)
    except MEASURE_ERRORS as e:
        if isinstance(e, _OOM) and torch.cuda.is_available():
            torch.cuda.empty_cache()   # let the next case of the sweep start clean
        return Record.error_row(error=describe_error(e), **row)
    row["extra"] = {"method": t.method, "mean_ms": t.mean_ms, "spread": t.spread,
                    "calls_per_sample": t.calls_per_sample, **row.get("extra", {})}
    ratio = t.median_ms / dense_ms if dense_ms else None
    return Record(**row, median_ms=t.median_ms, p10_ms=t.p10_ms, p90_ms=t.p90_ms,
                  runs=t.runs, ratio_to_dense=ratio)


class ResultsWriter:
    """Collects records under ``path_dir`` and rewrites results.json/.csv after each one.

    ``environment`` is the file header; by default that of the first record's device.
    Rewriting whole files keeps them valid at every instant (temp file + ``os.replace``);
    sweeps are hundreds of rows, so the quadratic cost does not matter.
    """

    def __init__(self, path_dir: str | os.PathLike, environment: dict | None = None):
        self.dir = Path(path_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.environment = environment
        self.records: list[Record] = []

    @property
    def json_path(self) -> Path:
        return self.dir / "results.json"

    @property
    def csv_path(self) -> Path:
        return self.dir / "results.csv"

    def append(self, record: Record) -> Record:
        self.records.append(record)
        self.flush()
        return record

    def flush(self) -> None:
        if self.environment is None:
            first = self.records[0].device if self.records else None
            self.environment = environment(first or "cpu")
        payload = {"environment": self.environment,
                   "records": [r.to_dict() for r in self.records]}
        atomic_write_text(self.json_path, json.dumps(payload, indent=1, allow_nan=False) + "\n")
        atomic_write_text(self.csv_path, _csv_text(payload["records"]))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def _csv_text(rows: list[dict]) -> str:
    """One header line and one line per record; lists and dicts as JSON, None as empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    for row in rows:
        writer.writerow(["" if row[k] is None else
                         json.dumps(row[k]) if isinstance(row[k], (list, dict)) else row[k]
                         for k in RECORD_FIELDS])
    return out.getvalue()


