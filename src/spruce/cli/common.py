"""Helpers shared by CLI commands: resolving a model argument, rendering reports."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table
from torch import nn

from ..prune import PruneReport

console = Console()


def fail(message: str) -> None:
    """Print an error and exit with status 2 (bad input)."""
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


def is_code(spec: str) -> bool:
    """Whether a model argument names code (``path/to/file.py:factory``)."""
    return ":" in spec and spec.split(":", 1)[0].endswith(".py")


def load_model(spec: str, dataset: str | None = None, seed: int = 0) -> nn.Module:
    """A zoo name (``resnet18``) or ``path/to/file.py:factory`` returning an ``nn.Module``.

    ``spec`` must come from what the user typed: a name read from a file goes through
    :func:`model_of_file` first, which never lets a file name code to run."""
    from .. import zoo

    if is_code(spec):
        return zoo.from_file(spec)
    return zoo.build(spec, dataset=dataset, seed=seed)


def model_of_file(header: dict, path, given: str | None) -> str:
    """The model to build for a file: ``--model`` as the user typed it, else the zoo name
    the file records. A file never makes spruce run code: one saved from a code model
    (``FILE.py:FN``) or naming anything but a zoo model asks for ``--model`` (exit 2)."""
    from .. import zoo

    if given:
        return given
    name = header.get("model")
    if not name:
        fail(f"{path} does not name its model; pass --model")
    if is_code(name):
        fail(f"{path} was saved from the code model {name!r}; spruce never runs code named "
             f"by a file — check that file, then pass --model {name} yourself")
    if name not in zoo.names():
        fail(f"{path} names the model {name!r}, which is not a zoo model "
             f"({', '.join(zoo.names())}); pass --model")
    return name


def fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def report_table(report: PruneReport, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col, just in [("layer", "left"), ("view R×K", "right"), ("pattern", "left"),
                      ("density", "right"), ("params kept", "right")]:
        table.add_column(col, justify=just)
    for r in report.rows:
        table.add_row(r.name, f"{r.view[0]}×{r.view[1]}", r.pattern, f"{r.density:.3f}",
                      f"{fmt_count(r.kept)} / {fmt_count(r.total)}")
    table.add_section()
    table.add_row("total", "", "", f"{report.overall_density:.3f}",
                  f"{fmt_count(report.kept)} / {fmt_count(report.total)}")
    return table


def print_skipped(report: PruneReport) -> None:
    for s in report.skipped:
        console.print(f"  [dim]left dense:[/] {s.name} — {s.reason}")
