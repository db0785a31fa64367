"""``characterize``: the paper's study on this machine — layers and models, every pattern,
every backend — into results.json/.csv, plots and report.md.

    from spruce.bench.characterize import characterize
    result = characterize("quick", "runs/quick")        # < 3 minutes on a 2-core CPU
    print(result.report)                                 # runs/quick/report.md

Presets are records (:class:`Preset`); pass one of your own to run a custom study. Rows are
written as they are measured: on Ctrl-C the report is written from the rows so far and
:class:`Interrupted` (a ``KeyboardInterrupt``) is raised with the result attached.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import zoo
from .env import environment
from .layer import LayerOptions, bench_layer
from .model import ModelOptions, bench_model
from .presets import LAYER_PRESETS, Shape, get_shape, scaled
from .records import Record, ResultsWriter
from .report import headline, prepare_output, write_report
from .sweep import (
    DEFAULT_BLOCK,
    TimingConfig,
    check_backends,
    check_device,
    pattern_cases,
    torch_dtype,
)


@dataclass(frozen=True)
class ModelCase:
    """One model of a study."""

    model: str              # zoo name ("resnet18")
    dataset: str | None     # zoo variant ("cifar10"); None: the zoo's default
    batch: int              # images or sequences per call
    label: str | None = None  # row name; None: "model/dataset"
    zoo_kwargs: dict = field(default_factory=dict, hash=False)  # to zoo.build (smaller
    #                                                             variants: depth=2, ...)


@dataclass(frozen=True)
class Preset:
    """A whole study: what to measure, where, and how hard to time it."""

    name: str                                  # "quick", "paper", "gpu", or your own
    description: str                           # one line for the report
    device: str                                # where it is meant to run ("cpu" | "cuda")
    dtypes: tuple[str, ...]                    # each is a full pass ("fp32", "fp16")
    models: tuple[ModelCase, ...]              # end-to-end subjects (Tables 1–8, Figs 7–10)
    layers: tuple[Shape, ...]                  # layer subjects (Figs 11–14)
    patterns: tuple[str, ...] = ("element", "2:4", "block", "group", "channel")  # swept
    densities: tuple[float, ...] = (0.75, 0.5, 0.25)   # kept ratios (N:M runs at its own)
    backends: tuple[str, ...] | None = None    # None: every backend registered at run time
    block: tuple[int, int] = DEFAULT_BLOCK     # block tile; layers clamp it to fit
    model_timing: TimingConfig = field(default_factory=TimingConfig)  # per model case
    layer_timing: TimingConfig = field(default_factory=TimingConfig)  # per layer case
    steps: bool = True                         # group-wise step breakdown (Figs 12–13)
    tf32: bool = False                         # fp32 on TF32 tensor cores (cuBLAS and cuDNN
    #                                            alike); False: IEEE fp32, as in the paper


_CPU_FAST = TimingConfig(warmup=1, min_runs=5, min_time_s=0.03)   # quick: ~1.5 min, 2 cores
_PAPER_MODELS = tuple(ModelCase(m, d, 64) for m in ("vgg16", "resnet18", "vit")
                      for d in ("cifar10", "tiny-imagenet")) + (
    ModelCase("vgg16", "imagenet", 64), ModelCase("bert_base", "qqp", 64))

PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("quick", "ResNet-18 and ViT on CIFAR-10 and a shrunken BERT layer: about a minute "
           "and a half on 2 CPU cores",
           device="cpu", dtypes=("fp32",),
           models=(ModelCase("resnet18", "cifar10", 2), ModelCase("vit", "cifar10", 2)),
           layers=(scaled(LAYER_PRESETS["bert-base-ffn2"], 1 / 32),),   # 256 tokens
           model_timing=_CPU_FAST, layer_timing=_CPU_FAST),
    Preset("paper", "the full study: VGG-16, ResNet-18, ViT (CIFAR-10, Tiny-ImageNet, VGG-16 "
           "on ImageNet), BERT-base (QQP), all layer presets at batch 64",
           device="cpu", dtypes=("fp32",), models=_PAPER_MODELS,
           layers=tuple(LAYER_PRESETS.values())),
]}
# On a GPU, CSR/BSR run 26-140x slower than dense: cap their timed seconds so one study
# of every pattern fits in minutes (slow rows then carry >= 3 runs; the row says how many).
_GPU_TIMING = TimingConfig(warmup=2, min_runs=20, min_time_s=0.1, max_time_s=1.0)
PRESETS["gpu"] = replace(
    PRESETS["paper"], name="gpu", device="cuda", dtypes=("fp32", "fp16"),
    models=tuple(m for m in _PAPER_MODELS if m.dataset != "imagenet"),
    model_timing=_GPU_TIMING, layer_timing=_GPU_TIMING,
    description="the paper's study on CUDA at batch 64 (CIFAR-10 and Tiny-ImageNet models, "
                "BERT-base, every layer preset), fp32 (the paper's setting) and fp16")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a study; ``result`` holds the report written from the rows so far."""

    def __init__(self, result: Characterization):
        super().__init__(f"interrupted after {len(result.records)} rows")
        self.result = result


@dataclass
class Characterization:
    """What a study wrote."""

    output_dir: Path
    report: Path                 # report.md
    records: list[Record]        # every row, error rows included
    headline: list[dict]         # best pattern per kept ratio, per subject (report.headline)
    plots: list[Path]
    interrupted: bool = False


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[preset]


def characterize(preset: str | Preset, output_dir: str | Path, device: str | None = None,
                 dtype: str | None = None, overwrite: bool = False,
                 models: Sequence[str] | None = None, threads: int | None = None, *,
                 patterns: Sequence[str] | None = None, layers: bool = True,
                 progress: bool = True,
                 on_record: Callable[[Record], None] | None = None) -> Characterization:
    """Run ``preset`` and write results.json/.csv, plots/*.png and report.md under
    ``output_dir`` (refused if it holds files, unless ``overwrite``: then only the files
    the report writes are replaced). ``device``/``dtype``/``threads`` (CPU threads for the
    whole run) override the preset's; ``models`` picks some of its models (or other zoo
    models, at the preset's batch), ``patterns`` some of its patterns (dense always runs);
    ``layers=False`` leaves out the layer presets."""
    p = get_preset(preset)
    if patterns:
        p = replace(p, patterns=tuple(patterns))
    if not layers:
        p = replace(p, layers=())
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1; got {threads}")
        p = replace(p, model_timing=replace(p.model_timing, threads=threads),
                    layer_timing=replace(p.layer_timing, threads=threads))
    dev = _device(p, device)
    dtypes = (dtype,) if dtype else p.dtypes
    for d in dtypes:
        torch_dtype(d)
    cases = _models(p, models)
    layers = [get_shape(s) for s in p.layers]
    check_backends(p.backends)
    n_cases = len(pattern_cases(p.patterns, p.densities, p.block)) + 1   # + dense
    out = prepare_output(output_dir, overwrite)
    with _tf32(p.tf32):
        env = environment(dev, threads=p.model_timing.threads)
    writer = ResultsWriter(out, env)
    total = n_cases * (len(layers) + len(cases)) * len(dtypes)
    interrupted = False
    with _num_threads(threads), _tf32(p.tf32), _progress(progress, total, p.name) as tick:
        try:
            for d in dtypes:
                _run_layers(p, layers, dev, d, writer, on_record, tick)
                _run_models(p, cases, dev, d, writer, on_record, tick)
        except KeyboardInterrupt:
            interrupted = True
    result = _finish(p, out, writer, interrupted)
    if interrupted:
        raise Interrupted(result)
    return result


@contextmanager
def _tf32(on: bool):
    """The same fp32 arithmetic for cuBLAS and cuDNN (torch defaults differ: cuDNN uses
    TF32, cuBLAS does not), so dense convs and sparse GEMMs compare fairly."""
    prior = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prior


def _run_layers(p: Preset, layers, dev, dtype, writer, on_record, tick) -> None:
    opts = LayerOptions(timing=p.layer_timing, block=p.block, steps=p.steps)
    for shape in layers:
        bench_layer(shape, p.patterns, p.densities, p.backends, dtype, dev, writer,
                    options=opts, on_record=on_record, on_case=tick)


def _run_models(p: Preset, cases: list[ModelCase], dev, dtype, writer, on_record, tick) -> None:
    for case in cases:
        opts = ModelOptions(timing=p.model_timing, dataset=case.dataset, block=p.block,
                            zoo_kwargs=case.zoo_kwargs)
        bench_model(case.model, p.patterns, p.densities, p.backends, dtype, dev, case.batch,
                    writer, options=opts, name=case.label, on_record=on_record, on_case=tick)


def _finish(p: Preset, out: Path, writer: ResultsWriter, interrupted: bool) -> Characterization:
    writer.flush()
    report, plots = write_report(out, writer.records, writer.environment,
                                 title=f"preset {p.name}: {p.description}",
                                 interrupted=interrupted)
    return Characterization(out, report, list(writer.records), headline(writer.records),
                            plots, interrupted)


def _device(p: Preset, device: str | None) -> torch.device:
    wanted = device or p.device
    if torch.device(wanted).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"preset {p.name!r} runs on CUDA, but this machine has no CUDA; "
                         "run it here with --device cpu (or pick --preset quick)")
    return check_device(wanted)


def _models(p: Preset, models: Sequence[str] | None) -> list[ModelCase]:
    if models is None:
        chosen = list(p.models)
    else:
        in_preset = {c.model: c for c in p.models}
        unknown = [m for m in models if m not in in_preset and m not in zoo.names()]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(map(repr, unknown))}; valid: "
                             f"{', '.join(zoo.names())} (preset {p.name!r} has "
                             f"{', '.join(in_preset) or 'none'})")
        chosen = [c for c in p.models if c.model in models] + [
            _default_case(p, m) for m in models if m not in in_preset]
    for c in chosen:   # a bad dataset fails now, not an hour into the study
        zoo.example_input(c.model, c.dataset, batch=1)
    return chosen


def _default_case(p: Preset, model: str) -> ModelCase:
    """A zoo model not in the preset: the preset's first dataset and batch that fit it."""
    for c in p.models:
        try:
            zoo.example_input(model, c.dataset, batch=1)
        except ValueError:
            continue
        return ModelCase(model, c.dataset, c.batch)
    return ModelCase(model, None, p.models[0].batch if p.models else 8)


@contextmanager
def _num_threads(n: int | None):
    """Pruning and conversion run on ``n`` threads too, not only the timed calls."""
    prior = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prior)


class _progress:
    """A rich progress bar over the sweep's cases; a no-op tick when ``enabled`` is False."""

    def __init__(self, enabled: bool, total: int, name: str):
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[case]}"), transient=False) \
            if enabled else None
        self.total, self.name = total, name

    def __enter__(self) -> Callable[[str], None]:
        if self.bar is None:
            return lambda description: None
        self.bar.start()
        task = self.bar.add_task(f"characterize {self.name}", total=self.total, case="")
        return lambda description: self.bar.update(task, advance=1, case=description)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


__all__ = ["PRESETS", "Characterization", "Interrupted", "ModelCase", "Preset", "characterize",
           "get_preset"]
