"""What every result renderer shares: the page types and small helpers.

A renderer takes a result folder and its ``Result`` entry and returns a ``Page``: the runs
behind the folder (device, software, date, command) and the markdown body beneath them.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DRAW = True   # False under --check: plots are not redrawn


@dataclass(frozen=True)
class Run:
    """One run of a program that wrote JSON into a folder."""
    device: str
    software: str
    date: str
    command: str


@dataclass
class Page:
    """What a render function returns: the runs behind the folder and its markdown body."""
    runs: list[Run]
    body: list[str]
    files: dict[str, Path] = field(default_factory=dict)  # extra files drawn (name -> tmp)


@dataclass(frozen=True)
class Result:
    folder: str                        # under benchmarks/results: <device>/<benchmark>
    benchmark: str                     # key of RENDERERS
    title: str
    command: str = ""                  # when the JSON does not record it


def module(path: str) -> ModuleType:
    """Import a benchmark program by path (its folder first on sys.path, for its siblings)."""
    file = ROOT / path
    for p in (str(file.parent), str(ROOT), str(ROOT / "src")):
        if p not in sys.path:
            sys.path.insert(0, p)
    name = "_bench_" + path.removesuffix(".py").replace("/", "_")
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load(path: Path) -> Any:
    return json.loads(path.read_text())


def committed(path: Path) -> str:
    """The date of the commit that added ``path`` (following renames), or ``?``."""
    try:
        out = subprocess.run(["git", "log", "--follow", "--format=%as", "--", str(path)],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    dates = out.split()
    return f"{dates[-1]} (committed)" if dates else "?"


def versions(**names: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in names.items() if v)


def ms(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def simple_run(d: dict, path: Path, command: str, device: str | None = None) -> Run:
    """For JSON holding only ``device`` and ``torch`` at top level."""
    return Run(device or d.get("device", "?"), versions(torch=d.get("torch")),
               d.get("date") or committed(path), command)

