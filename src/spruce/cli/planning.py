"""``spruce plan show``: what ``backend="auto"`` measured and chose, per layer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..auto import Plan
from .common import console, fail


def plan_show(plan: Path = typer.Argument(..., help="a plan JSON written by convert --plan")
              ) -> None:
    """Print the per-layer table of a plan: candidates, median times, the choice."""
    try:
        p = Plan.load(plan)
    except ValueError as e:
        fail(str(e))
    backends = sorted({b for c in p.layers.values() for b in c.times_ms})
    table = Table(title=f"{plan}: {p.device_name}, torch {p.torch}, {p.dtype}",
                  title_justify="left")
    table.add_column("layer")
    table.add_column("input")
    for b in backends:
        table.add_column(f"{b} ms", justify="right")
    table.add_column("choice")
    for c in p.layers.values():
        times = [(f"{c.times_ms[b]:.3g}" + ("*" if b in c.probed else ""))
                 if b in c.times_ms else "-" for b in backends]
        choice = c.choice + (" (reverted)" if c.reverted else "")
        table.add_row(c.name, "×".join(map(str, c.input_shape or [])) or "-", *times, choice)
    console.print(table)
    if any(c.probed for c in p.layers.values()):
        console.print("* one probe call only: that many times slower than dense, not timed "
                      "further")
    if p.model_ms:
        console.print("whole model: " + ", ".join(f"{k} {v:.3g} ms" for k, v in
                                                  p.model_ms.items()))
