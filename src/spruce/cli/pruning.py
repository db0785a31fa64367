"""``spruce info``, ``spruce prune`` and ``spruce demo``."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from ..io import save
from ..patterns import get_pattern
from ..prune import prune
from ..patterns.block import parse_block
from ..view import find_layers, type_name, view_shape
from .checks import in_range, output_file
from .common import console, fail, fmt_count, load_model, print_skipped, report_table

DEMO_PATTERNS = ("element", "2:4", "block", "group", "channel")


def info(model: str = typer.Argument(..., help="zoo name (resnet18, vgg16, ...) or FILE.py:FN"),
         dataset: str = typer.Option(None, help="zoo variant: cifar10, tiny-imagenet, imagenet "
                                           "(default for images), qqp (default for text)"),
         block: str = typer.Option("8x8", help="block shape used for the block group count"),
         ) -> None:
    """List prunable layers, their 2-D view shapes and group counts per pattern, and every
    module with weights that stays dense, with the reason."""
    try:
        net = load_model(model, dataset)
        bo, bk = parse_block(block)
    except ValueError as e:
        fail(str(e))
    found = find_layers(net)
    table = Table(title=f"{model} ({dataset or 'default'}): {len(found.layers)} prunable layers",
                  title_justify="left")
    for col in ("layer", "type", "view R×K", "params", "2:4 runs", f"{bo}×{bk} blocks",
                "groups (cols)", "channels (rows)"):
        table.add_column(col, justify="left" if col in ("layer", "type") else "right")
    for name, layer in found.layers.items():
        r, k = view_shape(layer)
        shared = f" (also {', '.join(found.shared[name])})" if found.shared[name] else ""
        table.add_row(name + shared, type_name(layer), f"{r}×{k}", fmt_count(r * k),
                      str(r * math.ceil(k / 4)), str(math.ceil(r / bo) * math.ceil(k / bk)),
                      str(k), str(r))
    console.print(table)
    for s in found.skipped:
        console.print(f"  [dim]left dense:[/] {s.name} — {s.reason}")


def coupled_example(model: str, dataset: str | None):
    """The zoo's example input for a zoo model (the graph is traced on it), else None
    (a guess from the model's first layer)."""
    from .. import zoo

    if model not in zoo.names():
        return None
    text = zoo.REGISTRY[model].modality == "text"
    return zoo.example_input(model, dataset, batch=2, **({"seq_len": 16} if text else {}))


def prune_cmd(
    model: str = typer.Argument(..., help="zoo name or FILE.py:FN"),
    pattern: str = typer.Option("element", "--pattern", "-p",
                                help="element | N:M (e.g. 2:4) | block | group | channel"),
    density: float = typer.Option(None, "--density", "-d",
                                  help="fraction of weights kept, in (0, 1]; N:M fixes it"),
    criterion: str = typer.Option("magnitude", "--criterion", "-c",
                                  help="magnitude | lamp | random (taylor needs data: API)"),
    scope: str = typer.Option("uniform", "--scope", "-s", help="uniform | global | lamp | "
                              "coupled (-p channel: channels, heads and residual streams "
                              "removed from every layer they touch; then `spruce compact`)"),
    block: str = typer.Option("8x8", help="block shape bo×bk for --pattern block"),
    unit: str = typer.Option("column", help="--pattern group: 'column' (one (c, kh, kw) tap) "
                             "or 'channel' (every tap of an input channel)"),
    exclude: list[str] = typer.Option([], "--exclude", "-x", help="module-name glob to skip"),
    dataset: str = typer.Option(None, help="zoo variant (default: imagenet / qqp)"),
    seed: int = typer.Option(0, help="seed for the zoo model's initialisation"),
    output: Path = typer.Option(None, "--output", "-o", help="write a .safetensors file"),
) -> None:
    """Prune a model and print the per-layer table (layer, view, pattern, density, kept)."""
    output_file(output)
    try:
        in_range("--density", density, 0, 1, lo_open=True)
        net = load_model(model, dataset, seed)
        kwargs = {"block": parse_block(block)} \
            if pattern == "block" else {"unit": unit} if pattern == "group" else {}
        if scope == "coupled":
            kwargs["example_input"] = coupled_example(model, dataset)
        report = prune(net, pattern, density, criterion, scope, exclude, **kwargs)
    except ValueError as e:
        fail(str(e))
    console.print(report_table(report, f"{model}: {report.rows[0].pattern}, criterion "
                                       f"{report.criterion['name']}, scope {scope}"))
    print_skipped(report)
    if output:
        path = save(net, output, extra={"model": model, "dataset": dataset})
        console.print(f"wrote {path}")


def demo(model: str = typer.Option("resnet18", help="zoo model to prune"),
         dataset: str = typer.Option(None, help="zoo variant (default: imagenet / qqp)"),
         density: float = typer.Option(0.5, help="kept fraction for every pattern")) -> None:
    """Prune a built-in model with every pattern and print each per-layer table."""
    try:
        in_range("--density", density, 0, 1, lo_open=True)
        load_model(model, dataset, seed=0)  # an unknown model or dataset: say so first
    except ValueError as e:
        fail(str(e))
    for pat in DEMO_PATTERNS:
        net = load_model(model, dataset, seed=0)
        d = None if get_pattern(pat).fixed_density() else density
        report = prune(net, pat, d)
        title = f"{model} ({dataset or 'default'}) — {report.rows[0].pattern}"
        console.print(report_table(report, title))
    print_skipped(report)
