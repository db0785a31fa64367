"""``spruce bench layer``, ``spruce bench model`` and ``spruce characterize``.

    spruce bench layer vgg16-fc linear:768:3072:256 -p group -d 0.5 -d 0.25 -o runs/fc
    spruce bench model resnet18 --dataset cifar10 --batch 8 -p group -p 2:4 -o runs/r18
    spruce characterize --preset quick --output runs/quick

Every command prints a table; with ``-o DIR`` rows go to DIR/results.json/.csv as they are
measured, and a report.md with plots is written at the end — also after Ctrl-C (exit 130).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from .. import zoo
from ..bench.characterize import PRESETS, Interrupted
from ..bench.characterize import characterize as run_characterize
from ..bench.layer import ALL_PATTERNS, DENSITIES, LayerOptions
from ..bench.layer import bench_layer as run_bench_layer
from ..bench.model import ModelOptions
from ..bench.model import bench_model as run_bench_model
from ..bench.presets import LAYER_PRESETS, SHAPE_SYNTAX, get_shape, scaled
from ..bench.records import Record, ResultsWriter
from ..bench.report import headline_rows, prepare_output, write_report
from ..bench.sweep import TimingConfig, check_backends, check_device, pattern_cases, torch_dtype
from ..compiled import compile_mode
from ..patterns.block import parse_block
from .checks import in_range, outputs_ok
from .common import console, fail

_PATTERN_HELP = "element | N:M (2:4) | block | group | channel; repeat (default: all five)"
_DENSITY_HELP = "kept ratio in (0, 1]; repeat (default: 0.75 0.5 0.25; N:M runs at its own)"
_BACKEND_HELP = "backend to try; repeat (default: every registered one serving the pattern)"


def bench_layer(
    shapes: list[str] = typer.Argument(None, help=f"layer presets ({', '.join(LAYER_PRESETS)})"
                                       f" or shapes {SHAPE_SYNTAX}; default: every preset"),
    pattern: list[str] = typer.Option([], "--pattern", "-p", help=_PATTERN_HELP),
    density: list[float] = typer.Option([], "--density", "-d", help=_DENSITY_HELP),
    backend: list[str] = typer.Option([], "--backend", "-b", help=_BACKEND_HELP),
    dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16"),
    device: str = typer.Option("cpu", help="cpu | cuda[:N]"),
    scale: float = typer.Option(1.0, help="batch/tokens multiplier, e.g. 0.05 on a CPU"),
    block: str = typer.Option("32x32", help="block tile bo×bk (shrunk to fit small layers)"),
    min_time: float = typer.Option(0.2, help="timed seconds per case, at least"),
    threads: int = typer.Option(None, help="CPU threads (default: torch's)"),
    output: Path = typer.Option(None, "--output", "-o", help="folder for results and report"),
    overwrite: bool = typer.Option(False, help="write into a non-empty output folder"),
) -> None:
    """Time layers dense and pruned (every pattern × kept ratio × backend), with the
    group-wise ideal and step breakdown."""
    outputs_ok(dirs={"--output": output})
    try:
        in_range("--scale", scale, 0, lo_open=True)
        layers = [scaled(get_shape(s), scale) for s in (shapes or list(LAYER_PRESETS))]
        options = LayerOptions(timing=_timing(min_time, threads), block=parse_block(block))
        _validate(pattern, density, backend, dtype, device)
    except ValueError as e:
        fail(str(e))

    def sweep(writer: ResultsWriter | None) -> None:
        for shape in layers:
            run_bench_layer(shape, pattern or ALL_PATTERNS, density or DENSITIES,
                            backend or None, dtype, device, writer, options=options)

    _run(sweep, output, overwrite, "spruce bench layer")


def bench_model(
    model: str = typer.Argument(..., help="zoo name: vgg16, resnet18, vit, bert_base, ..."),
    dataset: str = typer.Option(None, help="zoo variant: cifar10, tiny-imagenet, imagenet, qqp"),
    batch: int = typer.Option(8, help="images or sequences per call"),
    pattern: list[str] = typer.Option([], "--pattern", "-p", help=_PATTERN_HELP),
    density: list[float] = typer.Option([], "--density", "-d", help=_DENSITY_HELP),
    backend: list[str] = typer.Option([], "--backend", "-b", help=_BACKEND_HELP),
    dtype: str = typer.Option("fp32", help="fp32 | fp16 | bf16"),
    device: str = typer.Option("cpu", help="cpu | cuda[:N]"),
    block: str = typer.Option("32x32", help="block tile bo×bk (layers it does not fit stay "
                                             "dense)"),
    min_time: float = typer.Option(0.2, help="timed seconds per case, at least"),
    threads: int = typer.Option(None, help="CPU threads (default: torch's)"),
    output: Path = typer.Option(None, "--output", "-o", help="folder for results and report"),
    overwrite: bool = typer.Option(False, help="write into a non-empty output folder"),
    compile: str = typer.Option("none", "--compile", help="none | default | max-autotune: "
                                "time the pruned models compiled (dense is always timed "
                                "eager, as a CUDA graph on a GPU, and compiled)"),
    compact: bool = typer.Option(False, "--compact", help="spruce.compact each pruned model "
                                 "before converting it"),
) -> None:
    """Time a model end to end dense and pruned with each pattern × kept ratio × backend.
    Ratios are to the fastest dense path of the same run."""
    outputs_ok(dirs={"--output": output})
    try:
        in_range("--batch", batch, 1)
        mode = {"none": False, "default": True}.get(compile, compile)
        compile_mode(mode)
        options = ModelOptions(timing=_timing(min_time, threads), dataset=dataset,
                               block=parse_block(block), compile=mode, compact=compact)
        _validate(pattern, density, backend, dtype, device)
        zoo.example_input(model, dataset, batch=1)   # unknown model or dataset: say so now
    except ValueError as e:
        fail(str(e))

    def sweep(writer: ResultsWriter | None) -> None:
        run_bench_model(model, pattern or ALL_PATTERNS, density or DENSITIES, backend or None,
                        dtype, device, batch, writer, options=options)

    _run(sweep, output, overwrite, f"spruce bench model {model}")


def characterize(
    preset: str = typer.Option("quick", "--preset", "-p",
                               help=f"{' | '.join(PRESETS)} (quick: minutes on a CPU)"),
    output: Path = typer.Option(Path("spruce-report"), "--output", "-o",
                                help="folder for results, plots, report"),
    overwrite: bool = typer.Option(False, help="write into a non-empty folder (other files "
                                               "in it are left alone)"),
    device: str = typer.Option(None, help="override the preset's device (cpu | cuda)"),
    dtype: str = typer.Option(None, help="override the preset's dtypes (fp32 | fp16 | bf16)"),
    model: list[str] = typer.Option([], "--model", "-m", help="only these models; repeat"),
    threads: int = typer.Option(None, help="CPU threads for the whole run (default: torch's)"),
    pattern: list[str] = typer.Option([], "--pattern", help="only these patterns (dense always "
                                      "runs); repeat"),
    layers: bool = typer.Option(True, help="time the preset's layers (--no-layers: models "
                                           "only)"),
) -> None:
    """Run a whole study — layers and models, every pattern and backend — and write
    results.json/.csv, plots and report.md (the paper's tables and figures)."""
    outputs_ok(dirs={"--output": output})
    try:
        in_range("--threads", threads, 1)
        result = run_characterize(preset, output, device, dtype, overwrite, model or None,
                                  threads, patterns=pattern or None, layers=layers)
    except Interrupted as stop:
        result = stop.result
        console.print(_headline_table(result.records))
        console.print(f"[yellow]interrupted[/]: report written from the {len(result.records)} "
                      f"rows measured so far: {result.report}")
        raise typer.Exit(130) from None
    except (ValueError, ImportError) as e:
        fail(str(e))
    console.print(_headline_table(result.records))
    errors = sum(r.error is not None for r in result.records)
    plots = f"; plots: {result.plots[0].parent}/" if result.plots else ""
    console.print(f"{len(result.records)} rows ({errors} not measured); report: "
                  f"{result.report}{plots}")


# ---------------------------------------------------------------------------- helpers

def _validate(pattern: list[str], density: list[float], backend: list[str], dtype: str,
              device: str) -> None:
    """Bad input fails before any folder is made or anything is timed."""
    pattern_cases(pattern or ALL_PATTERNS, density or DENSITIES)
    check_backends(backend or None)
    torch_dtype(dtype)
    check_device(device)


def _timing(min_time: float, threads: int | None) -> TimingConfig:
    in_range("--min-time", min_time, 0, lo_open=True)
    in_range("--threads", threads, 1)
    return TimingConfig(min_time_s=min_time, threads=threads)


def _run(sweep: Callable[[ResultsWriter | None], None], output: Path | None, overwrite: bool,
         title: str) -> None:
    """Run ``sweep`` into a writer (or a list), print the rows; report on Ctrl-C too."""
    try:
        writer = ResultsWriter(prepare_output(output, overwrite)) if output else None
    except ValueError as e:
        fail(str(e))
    collected = writer if writer is not None else _Collector()
    code = 0
    try:
        sweep(collected)
    except KeyboardInterrupt:
        code = 130
    except (ValueError, ImportError) as e:
        fail(str(e))
    console.print(_rows_table(collected.records))
    console.print(_headline_table(collected.records))
    if writer is not None and writer.records:
        report, _ = write_report(writer.dir, writer.records, writer.environment, title,
                                 interrupted=code == 130)
        console.print(f"wrote {writer.json_path}, {writer.csv_path} and {report}")
    if code:
        console.print(f"[yellow]interrupted[/] after {len(collected.records)} rows")
        raise typer.Exit(code)


class _Collector:
    """A stand-in writer that keeps rows in memory (no -o given)."""

    def __init__(self):
        self.records: list[Record] = []

    def append(self, record: Record) -> Record:
        self.records.append(record)
        return record


def _rows_table(records: list[Record]) -> Table:
    table = Table(title="measurements", title_justify="left")
    for col in ("subject", "kind", "pattern", "kept", "backend", "median ms", "vs best dense",
                "note"):
        table.add_column(col, justify="right" if col in ("kept", "median ms",
                                                         "vs best dense") else "left")
    for r in records:
        note = r.error or (f"step {r.extra['step']}" if r.kind == "step" else "")
        table.add_row(r.name, r.kind, r.pattern or "dense",
                      "" if r.density is None else f"{r.density:g}", r.backend or "",
                      "" if r.median_ms is None else f"{r.median_ms:.4g}",
                      "" if r.ratio_to_dense is None else f"{r.ratio_to_dense:.2f}×", note)
    return table


def _headline_table(records: list[Record]) -> Table:
    """The headline at 80 columns: the pattern alone per cell (backends are in report.md),
    the best dense path as one letter, the dtype in the title when there is one."""
    header, body = headline_rows(records, compact=True)
    dtypes = {row[1] for row in body}
    one_dtype = len(dtypes) == 1
    short = {"eager": "e", "graph": "g", "compiled": "c"}
    title = ("headline" + (f" ({next(iter(dtypes))})" if one_dtype else "")
             + ": fastest pattern, time / best dense\n"
             "best dense: e eager, g CUDA graph, c compiled")
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    keep = [i for i in range(len(header)) if not (one_dtype and i == 1)]
    for i in keep:
        col = header[i]
        table.add_column("dense ms" if col == "best dense ms" else col, no_wrap=True,
                         justify="left" if col in ("subject", "dtype") else "right")
    for row in body:
        ms, _, path = row[2].partition(" ")
        row = [*row[:2], f"{ms} {short.get(path, path)}", *row[3:]]
        table.add_row(*[row[i] for i in keep])
    return table
