"""One layer, every pattern × kept ratio × backend, against the dense layer of the same run.

    from spruce.bench import ResultsWriter
    from spruce.bench.layer import bench_layer
    rows = bench_layer("vgg16-fc", ["element", "2:4", "group"], [0.75, 0.5, 0.25],
                       writer=ResultsWriter("runs/fc"))

For each case the layer (random seeded weights) is pruned by magnitude, converted with each
registered backend that declares the pattern, and timed with rotated inputs. A backend
whose ``reason()`` refuses the layer, a pruning that fails, an out-of-memory — each gives an
error row and the sweep goes on. Group-wise cases also get:

- the **ideal** (backend ``"ideal"``): the dense GEMM of the compacted ``K·r`` problem on
  inputs gathered beforehand — the floor group-wise can reach (DESIGN.md, "Measuring");
- the **step breakdown** (``kind="step"``, Figs. 12–13): im2col, gather, GEMM, reshape for a
  conv; gather, GEMM for a linear — each timed alone on the previous step's outputs.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import convert, density_of, prune
from ..backends.groupwise import GroupwiseConv2d, GroupwiseLinear
from ..view import view_shape
from .presets import Shape, get_shape
from .baseline import best_dense, dense_rows
from .records import MEASURE_ERRORS, Record, ResultsWriter, describe_error, dtype_name, measure
from .sweep import (
    DEFAULT_BLOCK,
    IDEAL,
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
from .timing import make_inputs, rotation_size

ALL_PATTERNS = ("element", "2:4", "block", "group", "channel")
DENSITIES = (0.75, 0.5, 0.25)


@dataclass(frozen=True)
class LayerOptions:
    """Knobs of a layer sweep beyond what is swept."""

    timing: TimingConfig = field(default_factory=TimingConfig)  # warm-up, runs, time, threads
    block: tuple[int, int] = DEFAULT_BLOCK   # block pattern tile (bo, bk)
    clamp_block: bool = True                 # shrink the tile to fit a smaller weight view
    criterion: str = "magnitude"             # what decides which weights go
    seed: int = 0                            # weights and inputs
    rotation: int | None = None              # input buffers; None: enough to beat the cache
    ideal: bool = True                       # time the group-wise floor ("ideal" rows)
    steps: bool = True                       # time the group-wise steps (kind="step" rows)
    baselines: tuple[str, ...] | None = None  # dense paths to time (spruce.bench.baseline);
    #                                          None: every one the device has
    backend_options: dict = field(default_factory=dict, hash=False)  # {"groupwise": {...}}


def bench_layer(shape: str | Shape, patterns: Sequence[str] = ALL_PATTERNS,
                densities: Sequence[float] = DENSITIES, backends: Sequence[str] | None = None,
                dtype: str | torch.dtype = "fp32", device: str | torch.device = "cpu",
                writer: ResultsWriter | None = None, *, options: LayerOptions = LayerOptions(),
                on_record: Callable[[Record], None] | None = None,
                on_case: Callable[[str], None] | None = None) -> list[Record]:
    """Measure ``shape`` dense, then pruned with each pattern at each kept ratio on each
    backend that declares the pattern (``backends=None``: every registered one).

    Rows go to ``writer`` (flushed per row) and are returned. ``on_record`` runs after each
    row; ``on_case`` after each case (for a progress bar).
    """
    shape = get_shape(shape)
    dev, dt = check_device(device), torch_dtype(dtype)
    requested = check_backends(backends)
    cases = pattern_cases(patterns, densities, options.block)
    sink = Sink(writer, on_record, on_case)
    layer = shape.build(options.seed)   # fp32 CPU: pruning happens here
    inputs = make_inputs(shape.input_shape(), n=options.rotation, dtype=dt, device=dev,
                         seed=options.seed)
    common = dict(kind="layer", device=dev, dtype=dtype_name(dt), **options.timing.kwargs())
    extra = {"shape": shape.describe(), "layer": shape.kind}
    dense_layer = copy.deepcopy(layer).to(device=dev, dtype=dt).eval().requires_grad_(False)
    rows = dense_rows(shape.name, dense_layer, inputs, paths=options.baselines,
                      param_ratio=1.0, extra=dict(extra), **common)
    for r in rows:
        sink.emit(r)
    sink.case_done(f"{shape.name}: dense")
    best = best_dense(rows)
    for case in cases:
        _bench_case(shape, layer, case, inputs, best[1] if best else None, requested, options,
                    sink, common, extra)
        sink.case_done(f"{shape.name}: {case.label} kept {case.density:g}")
    return sink.records


def _bench_case(shape: Shape, layer: nn.Module, case: PatternCase, inputs: list,
                dense_ms: float | None, requested, options: LayerOptions, sink: Sink,
                common: dict, extra: dict) -> None:
    fields = dict(pattern=case.label, density=case.density, **common)
    net = nn.Sequential(copy.deepcopy(layer))
    try:
        pat = case.pattern(view_shape(layer), options.clamp_block)
        prune(net, pat, None if pat.fixed_density() else case.density,
              criterion=options.criterion)
    except MEASURE_ERRORS as e:
        sink.emit(error_row(shape.name, inputs, f"pruning failed: {describe_error(e)}",
                            fields, extra))
        return
    fields["param_ratio"] = density_of(net)
    extra = {**extra, "pattern_spec": pat.spec()}
    net = net.to(common["device"])
    candidates = candidate_backends(case.family, requested, common["device"])
    if not candidates:
        sink.emit(error_row(shape.name, inputs, no_backend_message(case, requested), fields,
                            extra))
    for name in candidates:
        _bench_backend(shape, net, name, inputs, dense_ms, options, sink,
                       {**fields, "backend": name}, extra)


def _bench_backend(shape: Shape, net: nn.Module, name: str, inputs: list,
                   dense_ms: float | None, options: LayerOptions, sink: Sink, fields: dict,
                   extra: dict) -> None:
    why = unavailable(name)
    if why:
        sink.emit(error_row(shape.name, inputs, f"backend {name} unavailable: {why}",
                            fields, extra))
        return
    try:
        fast = convert(net, name, dtype=torch_dtype(fields["dtype"]),
                       example_input=inputs[0][:1], **options.backend_options.get(name, {}))
    except MEASURE_ERRORS as e:
        sink.emit(error_row(shape.name, inputs, f"convert failed: {describe_error(e)}",
                            fields, extra))
        return
    refused = fast.spruce_report.fallbacks
    if refused:   # convert kept the layer dense: timing it would mislabel dense as `name`
        sink.emit(error_row(shape.name, inputs, f"backend {name} cannot serve this layer: "
                                                f"{refused[0].reason}", fields, extra))
        return
    module = fast[0]
    rec = measure(shape.name, module, inputs, dense_ms=dense_ms, extra=dict(extra), **fields)
    if not isinstance(module, (GroupwiseLinear, GroupwiseConv2d)) or rec.error:
        sink.emit(rec)
        return
    kept_k = int(module.kept.numel())
    rec.extra["kept_k"] = kept_k
    try:
        parts = groupwise_parts(module, inputs) if (options.ideal or options.steps) else []
    except MEASURE_ERRORS as e:   # e.g. no memory left for the gathered column buffers
        sink.emit(rec)
        sink.emit(error_row(shape.name, inputs, f"ideal and steps not measured: "
                                                f"{describe_error(e)}",
                            {**fields, "backend": IDEAL}, extra))
        return
    timed = {step: measure(shape.name, fn, xs, dense_ms=dense_ms,
                           extra={**extra, "step": step, "order": i, "kept_k": kept_k},
                           **{**fields, "kind": "step"})
             for i, (step, fn, xs) in enumerate(parts)
             if options.steps or step == "gemm"}
    ideal = timed.get("gemm")
    if options.ideal and ideal is not None:
        rec.extra["ideal_ms"] = ideal.median_ms
    sink.emit(rec)
    if options.ideal and ideal is not None:
        sink.emit(dataclasses.replace(
            ideal, kind="layer", backend=IDEAL,
            extra={**ideal.extra, "of": name, "what": "dense GEMM on the compacted K·r "
                   "problem, inputs gathered beforehand"}))
    if options.steps:
        for step_rec in timed.values():
            sink.emit(step_rec)


# ------------------------------------------------------------------ group-wise steps

Step = tuple[str, Callable[[Any], Any], list]


def groupwise_parts(module: GroupwiseLinear | GroupwiseConv2d, inputs: list) -> list[Step]:
    """The steps of ``module.forward`` as separate calls, each with the rotated outputs of
    the step before as its inputs: conv im2col → gather → gemm → reshape (Fig. 13), linear
    gather → gemm (Fig. 12). The ``gemm`` step is the group-wise ideal. The layout of the
    gather (rows or cols, Fig. 6) is the module's."""
    kept, w, b = module.kept, module.packed, module.bias   # (Kc,), (R, Kc), bias or None
    if isinstance(module, GroupwiseConv2d):
        geom, x_shape = module.geom, inputs[0].shape
        rows = module.layout == "rows"
        chain = [
            ("im2col", geom.unfold),                                        # (B, K, L)
            ("gather", (lambda c: c.index_select(1, kept)) if rows           # (B, Kc, L)
             else (lambda c: c.transpose(1, 2).index_select(2, kept))),     # (B, L, Kc)
            ("gemm", (lambda g: w @ g) if rows                              # (B, O, L)
             else (lambda g: (g @ w.t()).transpose(1, 2))),
            ("reshape", lambda y: geom.fold(y if b is None else y + b[:, None],  # (B, O, Ho, Wo)
                                             x_shape)),
        ]
    elif module.layout == "cols":
        chain = [("gather", lambda x: x.index_select(-1, kept)),           # (N, Kc)
                 ("gemm", lambda g: F.linear(g, w, b))]                    # (N, R)
    else:
        chain = [("gather", lambda x: x.reshape(-1, x.shape[-1]).t().index_select(0, kept)),
                 ("gemm", lambda g: (w @ g if b is None else w @ g + b[:, None]).t())]  # (N, R)
    steps, xs = [], inputs
    with torch.inference_mode():
        for name, fn in chain:
            steps.append((name, fn, xs))
            xs = _outputs(fn, xs)
    return steps


def _outputs(fn: Callable[[Any], Any], xs: list) -> list:
    """``fn`` over the first buffers — as many as beat the cache for the outputs' size."""
    first = fn(xs[0]).contiguous()
    n = min(len(xs), rotation_size(first.numel() * first.element_size(), first.device))
    return [first] + [fn(x).contiguous() for x in xs[1:n]]
