"""``spruce convert`` and ``spruce backends``."""

from __future__ import annotations

from pathlib import Path

import torch
import typer
from rich.table import Table

from .. import zoo
from ..api import convert, save
from ..backends import ConversionReport, available
from ..backends.io import DTYPES
from ..io import load_stored, read
from .checks import outputs_ok
from .common import console, fail, load_model, model_of_file
from .example_input import HELP as EXAMPLE_HELP
from .example_input import load_example_input, to_device


def report_table(report: ConversionReport, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("layer", "type", "pattern", "backend", "rel. error", "fallback reason"):
        table.add_column(col, justify="right" if col == "rel. error" else "left")
    for r in report.rows:
        err = "" if r.rel_error is None else f"{r.rel_error:.1e}"
        table.add_row(r.name, r.kind, r.pattern, r.backend, err, r.reason or "")
    return table


def convert_cmd(
    pruned: Path = typer.Argument(..., help="a .safetensors file written by `spruce prune`"),
    model: str = typer.Option(None, "--model", "-m",
                              help="zoo name or FILE.py:FN (default: the name in the file)"),
    backend: str = typer.Option("dense", "--backend", "-b", help="see `spruce backends`"),
    dtype: str = typer.Option(None, help="fp32 | fp16 | bf16 (default: keep the model's)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    dataset: str = typer.Option(None, help="zoo variant (default: the one in the file)"),
    output: Path = typer.Option(None, "--output", "-o", help="write the converted model"),
    plan: Path = typer.Option(None, help="backend auto: plan JSON to reuse and (re)write"),
    batch: int = typer.Option(1, help="backend auto: batch of the zoo example input timed"),
    example_input: str = typer.Option(None, "--example-input", "-e",
                                      help=EXAMPLE_HELP + "; checks the whole converted model "
                                      "(backend auto: what is timed; default: the zoo's)"),
) -> None:
    """Turn a pruned model into an inference model and print the per-layer report."""
    outputs_ok(files={"--output": output, "--plan": plan})
    try:
        stored = read(pruned)  # the header is read and checked once
        name = model_of_file(stored.header, pruned, model)
        if dtype is not None and dtype not in DTYPES:
            fail(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            fail("--device cuda asked for, but this machine has no CUDA; use --device cpu")
        ds = dataset or stored.header.get("dataset")
        net = load_stored(stored, load_model(name, ds)).to(device)
        options = _example_options(example_input, backend, name, ds, batch, device, plan)
        fast = convert(net, backend, dtype=DTYPES.get(dtype) if dtype else None, **options)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    rep = fast.spruce_report
    console.print(report_table(rep, f"{name}: backend {rep.backend}, {rep.dtype} on {rep.device}"))
    console.print(f"{len(rep.rows) - len(rep.fallbacks)} of {len(rep.rows)} layers on "
                  f"{rep.backend}; {len(rep.fallbacks)} stayed dense")
    if output:
        console.print(f"wrote {save(fast, output, extra={'model': name})}")


def _example_options(spec: str | None, backend: str, name: str, dataset: str | None,
                     batch: int, device: str, plan: Path | None) -> dict:
    """``example_input`` (and ``plan``) for ``convert``: the file given, else for backend
    auto the zoo model's own example."""
    if spec is not None:
        example = load_example_input(spec)
    elif backend != "auto":
        return {}
    elif name in zoo.names():
        example = zoo.example_input(name, dataset, batch=batch)
    else:
        fail(f"backend auto times the model on its input: pass --example-input for {name} "
             f"(it is not a zoo model)")
    options = {"example_input": to_device(example, device)}
    return {**options, "plan": plan} if backend == "auto" else options


def backends_cmd() -> None:
    """List the backends usable on this machine."""
    table = Table(title="backends available here", title_justify="left")
    for col in ("name", "patterns", "dtypes", "devices"):
        table.add_column(col)
    for row in available():
        dtypes = "; ".join(f"{d}: {', '.join(ts)}" for d, ts in row["dtypes"].items())
        table.add_row(row["name"], ", ".join(row["patterns"]), dtypes, ", ".join(row["devices"]))
    console.print(table)
