"""What layer and model sweeps share: timing knobs, the pattern × kept-ratio cases, the
backends that serve a pattern (found in the registry at run time), and emitting rows.

    for case in pattern_cases(["element", "2:4", "group"], [0.75, 0.5]):
        for backend in candidate_backends(case.family, None, "cpu"):
            ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..backends import get_backend
from ..backends import names as backend_names
from ..patterns import get_pattern
from ..patterns import names as pattern_names
from ..prune import pattern_label
from .records import Record, ResultsWriter

DEFAULT_BLOCK = (32, 32)          # block pattern tile (bo, bk) unless told otherwise
BASELINE = "dense"                # the backend every ratio is taken against
IDEAL = "ideal"                   # backend name of the group-wise floor rows
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TimingConfig:
    """How hard to time each case (see ``spruce.bench.time_fn``)."""

    warmup: int = 3            # untimed calls before sampling
    min_runs: int = 20         # samples behind each median, at least
    min_time_s: float = 0.2    # timed seconds per case, at least
    threads: int | None = None  # CPU threads; None: torch's current setting (recorded)
    max_time_s: float | None = None  # cap for very slow cases (>= 3 runs still; see time_fn)

    def kwargs(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "min_runs": self.min_runs,
                "min_time_s": self.min_time_s, "threads": self.threads,
                "max_time_s": self.max_time_s}


@dataclass(frozen=True)
class PatternCase:
    """One pruning to measure: a pattern at a kept ratio."""

    label: str                 # "element", "2:4", "block", "group", "channel"
    family: str                # the registry name backends declare ("vector" for 2:4)
    density: float             # fraction of weights kept
    kwargs: dict = field(default_factory=dict, hash=False)  # to get_pattern (block=...)

    def pattern(self, shape: tuple[int, int] | None = None, clamp_block: bool = False):
        """The Pattern object; ``clamp_block`` shrinks a block to fit a view of ``shape``."""
        kwargs = dict(self.kwargs)
        if clamp_block and shape is not None and "block" in kwargs:
            kwargs["block"] = tuple(min(b, s) for b, s in zip(kwargs["block"], shape, strict=False))
        return get_pattern(self.label, **kwargs)


def check_patterns(patterns: Iterable[str]) -> list[str]:
    """The pattern strings, each resolvable by ``get_pattern``; else a ValueError listing
    the valid ones."""
    out = []
    for p in patterns:
        try:
            get_pattern(p)
        except (ValueError, TypeError):
            raise ValueError(f"unknown pattern {p!r}; valid: {', '.join(pattern_names())}, "
                             "or an N:M string such as '2:4'") from None
        out.append(p)
    return out


def pattern_cases(patterns: Sequence[str], densities: Sequence[float],
                  block: tuple[int, int] = DEFAULT_BLOCK) -> list[PatternCase]:
    """Every pattern at every kept ratio; a fixed-density pattern (N:M) once, at its own."""
    cases = []
    for p in check_patterns(patterns):
        kwargs = {"block": tuple(block)} if get_pattern(p).name == "block" else {}
        pat = get_pattern(p, **kwargs)
        label = pattern_label(pat).split(" ")[0]   # "block 32x32" -> "block"
        fixed = pat.fixed_density()
        for d in ([fixed] if fixed is not None else densities):
            if not 0 < d <= 1:
                raise ValueError(f"kept ratio must be in (0, 1]; got {d}")
            cases.append(PatternCase(label, pat.name, float(d), kwargs))
    return cases


def check_backends(backends: Iterable[str] | None) -> list[str] | None:
    """Requested backend names, validated against the registry (None: every one)."""
    if backends is None:
        return None
    out = list(backends)
    for b in out:
        get_backend(b)   # raises "unknown backend ...; valid: ..."
    return out


def candidate_backends(family: str, requested: Sequence[str] | None,
                       device: torch.device | str) -> list[str]:
    """Backends, other than the dense baseline, that declare ``family`` and run on
    ``device`` here: those of the registry, or of ``requested``. Whether they can serve a
    given layer is their ``reason()``'s to say, case by case."""
    kind = torch.device(device).type
    out = []
    for name in requested if requested is not None else backend_names():
        b = get_backend(name)
        if name == BASELINE or family not in b.patterns or kind not in b.devices:
            continue
        out.append(name)
    return out


def no_backend_message(case: PatternCase, requested: Sequence[str] | None) -> str:
    among = "the requested" if requested is not None else "the registered"
    pool = requested if requested is not None else backend_names()
    return (f"no backend among {among} ones ({', '.join(pool)}) serves the {case.label} "
            f"pattern besides dense")


def with_unit_ratio(dense: Record) -> Record:
    """The dense baseline row: its ratio to itself is 1 (None on an error row)."""
    if dense.median_ms is not None:
        dense.ratio_to_dense = 1.0
    return dense


def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run on this machine at all, or None."""
    return get_backend(name).unavailable()


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a ValueError saying why it cannot be used here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA; "
                         "use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


TIMING_KNOBS = tuple(TimingConfig().kwargs())  # the knobs measure() takes, not Record fields


def error_row(name: str, inputs: list, error: str, fields: dict, extra: dict) -> Record:
    """A row for a case of the sweep that could not be measured; ``fields`` as passed to
    ``measure`` (timing knobs are dropped), the batch and shape from ``inputs[0]``."""
    keep = {k: v for k, v in fields.items() if k not in TIMING_KNOBS}
    x = inputs[0]
    x = next(iter(x.values())) if isinstance(x, dict) else x
    shape = list(x.shape)
    return Record.error_row(name=name, error=error, batch=shape[0] if shape else None,
                            input_shape=shape, extra=dict(extra), **keep)


class Sink:
    """Where rows go: a writer (flushed per row), a list, and an optional callback.

    ``on_record(record)`` runs after the row is safely written; raising from it (e.g.
    KeyboardInterrupt) stops the sweep with every earlier row on disk.
    """

    def __init__(self, writer: ResultsWriter | None,
                 on_record: Callable[[Record], None] | None = None,
                 on_case: Callable[[str], None] | None = None):
        self.writer, self.on_record, self.on_case = writer, on_record, on_case
        self.records: list[Record] = []

    def emit(self, record: Record) -> Record:
        if self.writer is not None:
            self.writer.append(record)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)
        return record

    def case_done(self, description: str) -> None:
        if self.on_case is not None:
            self.on_case(description)
