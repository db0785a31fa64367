"""``spruce compact``: every structure the masks remove becomes a smaller dense layer."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..api import save
from ..compact import CompactionReport, compact
from ..io import load_stored, read
from .checks import output_file
from .common import console, fail, fmt_count, load_model, model_of_file
from .example_input import HELP as EXAMPLE_HELP
from .example_input import load_example_input


def report_table(report: CompactionReport, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("group", "kind", "removed", "members", "left whole because"):
        table.add_column(col, justify="right" if col == "removed" else "left")
    for r in report.rows:
        table.add_row(r.group, r.kind, f"{r.removed}/{r.units}", str(len(r.members)),
                      r.reason or ("" if r.removed else "no unit pruned in every reader"))
    return table


def _example_input(name: str, dataset: str | None):
    from .. import zoo

    if name not in zoo.names():
        return None  # compact guesses one from the model
    text = zoo.REGISTRY[name].modality == "text"
    return zoo.example_input(name, dataset, batch=2, **({"seq_len": 16} if text else {}))


def print_summary(report: CompactionReport) -> None:
    if report.error:
        console.print(f"[yellow]left unchanged:[/] {report.error}")
        return
    saved = report.params_before - report.params_after
    console.print(f"{len(report.compacted)} of {len(report.rows)} coupled groups compacted; "
                  f"parameters {fmt_count(report.params_before)} → "
                  f"{fmt_count(report.params_after)} (−{saved / max(1, report.params_before):.1%})"
                  + (f"; BatchNorms folded: {len(report.folded)}" if report.folded else ""))
    if report.max_rel_error is not None:
        console.print(f"outputs verified: max relative error {report.max_rel_error:.1e}")


def compact_cmd(
    pruned: Path = typer.Argument(..., help="a .safetensors file written by `spruce prune`"),
    model: str = typer.Option(None, "--model", "-m",
                              help="zoo name or FILE.py:FN (default: the name in the file)"),
    dataset: str = typer.Option(None, help="zoo variant (default: the one in the file)"),
    fold_bn: bool = typer.Option(False, "--fold-bn", help="fold each compacted producer's "
                                 "BatchNorm into it (inference only)"),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="check outputs are unchanged"),
    align: int = typer.Option(1, "--align", min=1, help="keep every compacted width a "
                              "multiple of this (8 for fp16/bf16 tensor cores)"),
    exclude: list[str] = typer.Option([], "--exclude", "-x", help="module-name glob whose "
                                      "groups stay whole"),
    output: Path = typer.Option(None, "--output", "-o", help="write the compacted model"),
    example_input: str = typer.Option(None, "--example-input", "-e",
                                      help=EXAMPLE_HELP + " (default: the zoo's, or a guess)"),
) -> None:
    """Remove every channel, head and stream channel that the masks prune from all the layers
    it touches; print one row per coupled group."""
    output_file(output)
    try:
        stored = read(pruned)  # the header is read and checked once
        name = model_of_file(stored.header, pruned, model)
        dataset = dataset or stored.header.get("dataset")
        net = load_stored(stored, load_model(name, dataset))
        x = load_example_input(example_input) if example_input is not None \
            else _example_input(name, dataset)
        small = compact(net, x, verify=verify, fold_bn=fold_bn, exclude=exclude, align=align)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    report = small.spruce_compaction
    if report.error:  # nothing was compacted: say why, write nothing
        fail(f"{name}: {report.error}" + ("" if example_input else
                                          "; pass the model's input with --example-input"))
    console.print(report_table(report, f"{name}: structural compaction"))
    print_summary(report)
    if output:
        path = save(small, output, extra={"model": name, "dataset": dataset})
        console.print(f"wrote {path}")
