"""Checks every command runs on its options before it starts work (exit status 2)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SpruceError
from ..paths import check_output_dir, check_output_file
from .common import fail


def outputs_ok(files: dict[str, str | os.PathLike | None] | None = None,
               dirs: dict[str, str | os.PathLike | None] | None = None) -> None:
    """Exit 2 with a clear message unless every given output can be written.

    ``files`` / ``dirs`` map an option (``"--output"``) to its value (None: not given)."""
    try:
        for option, path in (files or {}).items():
            if path is not None:
                check_output_file(path, option)
        for option, path in (dirs or {}).items():
            if path is not None:
                check_output_dir(path, option)
    except SpruceError as e:
        fail(str(e))


def output_file(path: Path | None, option: str = "--output") -> None:
    """One-call form for commands writing one file."""
    outputs_ok(files={option: path})


def in_range(option: str, value: float | None, lo: float | None = None,
             hi: float | None = None, *, lo_open: bool = False) -> None:
    """Raise a :class:`SpruceError` naming ``option`` and its valid range unless
    ``lo <= value <= hi`` (``lo < value`` with ``lo_open``); None means not given."""
    if value is None:
        return
    low_ok = lo is None or (value > lo if lo_open else value >= lo)
    if low_ok and (hi is None or value <= hi):  # NaN fails both comparisons
        return
    if hi is None:
        valid = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        valid = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    err = SpruceError(f"{option} must be {valid}; got {value:g}")
    err.field = option
    raise err
