"""Whole models end to end: dense, then each pattern × kept ratio on each backend serving it.

    from spruce.bench.model import bench_model
    rows = bench_model("resnet18", ["group", "2:4"], [0.75, 0.5, 0.25], batch=8,
                       options=ModelOptions(dataset="cifar10"))

Every case prunes a fresh copy of the model built from the same seed (magnitude, uniform
density per layer), converts it with each backend in the registry that declares the
pattern and can run on the device — the dense model of the same run is the baseline —
and times the converted model end to end on rotated inputs. BERT-style models take dict
inputs and are called as ``model(**x)``. ``param_ratio`` is the kept fraction of all
prunable weights (``spruce.density_of``): layers a pattern cannot apply to stay dense and
count as kept. A pruning, conversion or timing that fails becomes an error row.

Accuracy is a hook for later: ``evaluate(module) -> float`` (e.g. top-1 on held-out data),
called on the dense and every converted model; its value lands in ``extra["accuracy"]``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import compact, convert, density_of, prune, zoo
from ..view import prunable_layers, view_shape
from .baseline import best_dense, degenerate, dense_rows, eager_dense
from .records import MEASURE_ERRORS, Record, ResultsWriter, describe_error, dtype_name, measure
from .sweep import (
    DEFAULT_BLOCK,
    PatternCase,
    Sink,
    TimingConfig,
    candidate_backends,
    check_backends,
    check_device,
    error_row,
    no_backend_message,
    pattern_cases,
    torch_dtype,
    unavailable,
)
from .timing import make_inputs

FITS = ("exclude", "error")


@dataclass(frozen=True)
class ModelOptions:
    """Knobs of a model sweep beyond what is swept."""

    timing: TimingConfig = field(default_factory=TimingConfig)  # warm-up, runs, time, threads
    dataset: str | None = None               # zoo variant (cifar10, ...); None: zoo default
    seed: int = 0                            # weights and inputs
    block: tuple[int, int] = DEFAULT_BLOCK   # block pattern tile (bo, bk)
    fit: str = "exclude"                     # a layer the pattern cannot apply to (a block
    #                                          larger than its view): leave it dense
    #                                          ("exclude") or record the failure ("error")
    criterion: str = "magnitude"             # what decides which weights go
    scope: str = "uniform"                   # how the density is spread over layers
    exclude: tuple[str, ...] = ()            # module-name globs never pruned
    rotation: int | None = None              # input buffers; None: enough to beat the cache
    verify: bool = True                      # check converted layers against the reference
    baselines: tuple[str, ...] | None = None  # dense paths to time (spruce.bench.baseline);
    #                                          None: every one the device has
    compile: bool | str = False              # convert(..., compile=): time compiled models
    compact: bool = False                    # spruce.compact before converting: units every
    #                                          reader pruned become smaller dense layers
    backend_options: dict = field(default_factory=dict, hash=False)  # {"groupwise": {...}}
    zoo_kwargs: dict = field(default_factory=dict, hash=False)  # to zoo.build: a smaller
    #                                                             ViT (depth=2, dim=128), ...


@dataclass
class _Subject:
    """A model to measure: how to get a fresh copy, and how to call it."""

    name: str                         # row label: "resnet18/cifar10" or the class name
    fresh: Callable[[], nn.Module]    # a new copy with the same initial weights
    example: Any                      # one input batch (tensor or dict of tensors)
    extra: dict                       # model, dataset, batch


def bench_model(model: str | nn.Module, patterns: Sequence[str],
                densities: Sequence[float] = (0.75, 0.5, 0.25),
                backends: Sequence[str] | None = None, dtype: str | torch.dtype = "fp32",
                device: str | torch.device = "cpu", batch: int = 8,
                writer: ResultsWriter | None = None, *, options: ModelOptions = ModelOptions(),
                example_input: Any = None, name: str | None = None,
                evaluate: Callable[[nn.Module], Any] | None = None,
                on_record: Callable[[Record], None] | None = None,
                on_case: Callable[[str], None] | None = None) -> list[Record]:
    """Measure a zoo model (by name) or a module (with ``example_input``) dense, then
    pruned with each pattern at each kept ratio on each backend that declares it."""
    dev, dt = check_device(device), torch_dtype(dtype)
    requested = check_backends(backends)
    if options.fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}; got {options.fit!r}")
    cases = pattern_cases(patterns, densities, options.block)
    subject = _subject(model, batch, options, example_input, name)
    sink = Sink(writer, on_record, on_case)
    inputs = make_inputs(subject.example, n=options.rotation, dtype=dt, device=dev,
                         seed=options.seed)
    common = dict(kind="model", device=dev, dtype=dtype_name(dt), **options.timing.kwargs())
    base = subject.fresh().to(device=dev, dtype=dt).eval().requires_grad_(False)
    extra = _evaluated(base, evaluate, subject.extra)
    why = _degenerate(base, inputs[0])
    if why:  # every ratio of this model is flagged: its outputs cannot judge anything
        extra["degenerate_reference"] = why
        subject.extra["degenerate_reference"] = why
    rows = dense_rows(subject.name, base, inputs, paths=options.baselines, param_ratio=1.0,
                      extra=extra, **common)
    for r in rows:
        sink.emit(r)
    sink.case_done(f"{subject.name}: dense")
    del base
    best = best_dense(rows)
    baseline = Baseline(best[0], best[1], eager_dense(rows)) if best else None
    for case in cases:
        _bench_case(subject, case, inputs, baseline, requested, options, evaluate,
                    sink, common)
        sink.case_done(f"{subject.name}: {case.label} kept {case.density:g}")
    return sink.records


def _subject(model: str | nn.Module, batch: int, options: ModelOptions, example_input: Any,
             name: str | None) -> _Subject:
    if isinstance(model, nn.Module):
        if example_input is None:
            raise ValueError("bench_model on a module needs example_input= (one batch)")
        label = name or type(model).__name__
        return _Subject(label, lambda: copy.deepcopy(model), example_input,
                        {"model": label, "batch": _batch_of(example_input)})
    if model not in zoo.names():
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(zoo.names())}")
    dataset = options.dataset or zoo.registry.DEFAULT_DATASET[zoo.REGISTRY[model].modality]
    example = zoo.example_input(model, dataset, batch=batch, seed=options.seed)
    return _Subject(name or f"{model}/{dataset}",
                    lambda: zoo.build(model, dataset, seed=options.seed,
                                      **options.zoo_kwargs), example,
                    {"model": model, "dataset": dataset, "batch": batch,
                     **({"zoo_kwargs": options.zoo_kwargs} if options.zoo_kwargs else {})})


@dataclass(frozen=True)
class Baseline:
    """The fastest dense path of the run (what ratios are against) and eager dense."""

    path: str
    ms: float
    eager_ms: float | None


def _bench_case(subject: _Subject, case: PatternCase, inputs: list, dense: Baseline | None,
                requested, options: ModelOptions, evaluate, sink: Sink, common: dict) -> None:
    fields = dict(pattern=case.label, density=case.density, **common)
    extra = dict(subject.extra)
    net = subject.fresh()
    try:
        pat = case.pattern()
        unfit = _unfit_layers(net, pat, options) if options.fit == "exclude" else []
        prune(net, pat, None if pat.fixed_density() else case.density,
              criterion=options.criterion, scope=options.scope,
              exclude=list(options.exclude) + unfit)
    except MEASURE_ERRORS as e:
        sink.emit(error_row(subject.name, inputs, f"pruning failed: {describe_error(e)}",
                            fields, extra))
        return
    fields["param_ratio"] = density_of(net)
    extra.update(pattern_spec=pat.spec(), left_dense=unfit)
    if options.compact:
        try:
            net = compact(net.eval(), example_input=_first(subject.example))
        except MEASURE_ERRORS as e:
            sink.emit(error_row(subject.name, inputs, f"compaction failed: {describe_error(e)}",
                                fields, extra))
            return
        report = net.spruce_compaction
        extra.update(compacted_params=report.params_after / report.params_before)
    net = net.to(common["device"])
    candidates = candidate_backends(case.family, requested, common["device"])
    if not candidates:
        sink.emit(error_row(subject.name, inputs, no_backend_message(case, requested),
                            fields, extra))
    for backend in candidates:
        row = {**fields, "backend": backend}
        why = unavailable(backend)
        if why:
            sink.emit(error_row(subject.name, inputs, f"backend {backend} unavailable: {why}", row,
                             extra))
            continue
        sink.emit(_bench_backend(subject, net, backend, inputs, dense, options, evaluate,
                                 row, extra))


def _bench_backend(subject: _Subject, net: nn.Module, backend: str, inputs: list,
                   dense: Baseline | None, options: ModelOptions, evaluate, row: dict,
                   extra: dict) -> Record:
    try:
        fast = convert(net, backend, dtype=torch_dtype(row["dtype"]),
                       example_input=inputs[0] if options.compile else _first(inputs[0]),
                       verify=options.verify, compile=options.compile,
                       **options.backend_options.get(backend, {}))
    except MEASURE_ERRORS as e:
        return error_row(subject.name, inputs, f"convert failed: {describe_error(e)}", row, extra)
    report = fast.spruce_report
    served = len(report.rows) - len(report.fallbacks)
    if served == 0:
        why = report.fallbacks[0].reason if report.fallbacks else "no masked layer"
        return error_row(subject.name, inputs, f"backend {backend} served no layer: {why}",
                         row, extra)
    extra = {**extra, "layers_on_backend": served,
             "layers_fallback_dense": len(report.fallbacks)}
    if options.compile:
        extra["compiled"] = options.compile
    if dense is not None:
        extra["baseline"] = dense.path
    rec = measure(subject.name, _caller(fast), inputs, dense_ms=dense.ms if dense else None,
                  extra=_evaluated(fast, evaluate, extra), **row)
    if dense is not None and dense.eager_ms and rec.median_ms is not None:
        rec.extra["ratio_to_eager"] = rec.median_ms / dense.eager_ms
    return rec


def _unfit_layers(net: nn.Module, pattern, options: ModelOptions) -> list[str]:
    """Prunable layers whose view the pattern cannot apply to (e.g. a 32×32 block on the
    64×27 first conv): the pattern's own ``check_shape`` says so."""
    layers, _ = prunable_layers(net, tuple(options.exclude))
    unfit = []
    for name, layer in layers.items():
        try:
            pattern.check_shape(view_shape(layer))
        except ValueError:
            unfit.append(name)
    return unfit


def _caller(module: nn.Module) -> Callable[[Any], Any]:
    """``module(x)``, or ``module(**x)`` for dict inputs (HF models)."""
    return lambda x: module(**x) if isinstance(x, dict) else module(x)


def _evaluated(module: nn.Module, evaluate, extra: dict) -> dict:
    if evaluate is None:
        return dict(extra)
    with torch.inference_mode():
        return {**extra, "accuracy": evaluate(module)}


def _degenerate(model: nn.Module, x: Any) -> str | None:
    """Why the dense output on ``x`` cannot judge a speed-up (tiny, non-finite, the same for
    every sample), or None."""
    from ..backends.wholemodel import tensors_of

    with torch.inference_mode():
        out = tensors_of(_caller(model)(x))
    return degenerate(out[0].float()) if out else None


def _first(x: Any) -> Any:
    """The first example of a batch (tensor or dict of tensors): what convert traces."""
    return {k: v[:1] for k, v in x.items()} if isinstance(x, dict) else x[:1]


def _batch_of(x: Any) -> int | None:
    t = next(iter(x.values()), None) if isinstance(x, dict) else x
    return int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() else None
