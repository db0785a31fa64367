"""``convert(model, backend, compact=True)``: structures first, then the backend.

``spruce.compact`` turns every unit whose readers are all pruned into a smaller dense layer;
what is left masked is converted with ``backend``. With ``backend="auto"`` the result must
still beat the model the user started from: auto's own whole-model check compares the
compacted model with *its* dense twin, so here it is also timed against the dense twin of
the uncompacted model, the same way (compiled when ``compile`` is set, replayed as a CUDA
graph on a GPU). A compacted model that is slower (odd channel counts that tensor cores
pad, gathers a compiled graph cannot hide) is dropped for ``auto`` on the uncompacted
model, and the plan says so (``model_ms``: ``"compacted"``, ``"dense, uncompacted"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def whole_ms(fast: nn.Module, example_input: Any, dtype: torch.dtype, timing: Any,
             mode: str | None) -> float:
    """Median ms of a converted (eager) model, compiled with ``mode`` when given (its
    compiled twin reused when auto built one), as auto's whole-model check times it."""
    from .auto import AutoTiming, _time
    from .auto_model import example_batches
    from .backends.convert import cast_input, first_float
    from .backends.wholemodel import model_tolerance
    from .compiled import CompiledModule

    device = first_float(fast).device
    run: nn.Module = fast
    if mode is not None:
        built = fast.__dict__.get("_spruce_compiled")
        run = built if built is not None else CompiledModule(
            fast, mode, cast_input(example_input, dtype, device), model_tolerance(dtype))
    inputs = example_batches(example_input, dtype, device)
    return _time(run, example_input, dtype, device, timing or AutoTiming(), inputs=inputs,
                 graph=mode is not None and device.type == "cuda")


def convert_compacted(model: nn.Module, backend: str, convert_fn: Callable[..., nn.Module],
                      dtype: torch.dtype | str | None, example_input: Any, verify: bool,
                      compile: bool | str, align: int = 1, **options: Any) -> nn.Module:
    """``convert_fn(compact(model), backend, ...)``; for ``auto``, kept only when it is not
    slower than the uncompacted model's dense twin (else auto on the uncompacted model).
    ``align`` is :func:`spruce.compact`'s width alignment."""
    from .backends.convert import as_dtype, cast_input, first_float
    from .compact import compact
    from .compiled import compile_mode

    if example_input is None:
        raise ValueError("compact=True needs example_input: the model is traced with it")
    own = first_float(model)
    traced = example_input if own is None else cast_input(example_input, own.dtype, own.device)
    small = compact(model, example_input=traced, align=align)  # traced in the model's dtype
    report = small.spruce_compaction
    written = [r.reason for r in report.rows if r.written_only]
    if report.error:
        warnings.warn(f"compact=True compacted nothing: {report.error}", stacklevel=3)
    elif written and not report.compacted:
        warnings.warn(f"compact=True compacted nothing: {written[0]}", stacklevel=3)
    extra = {"compile": compile} if backend == "auto" else {}
    fast = convert_fn(small, backend, dtype=dtype, example_input=example_input, verify=verify,
                      **extra, **options)
    if backend != "auto":
        return fast
    mode = compile_mode(compile)
    dt = as_dtype(dtype) or first_float(fast).dtype
    timing = options.get("timing")
    dense = convert_fn(model, "dense", dtype=dtype, example_input=example_input, verify=False)
    dense_ms = whole_ms(dense, example_input, dt, timing, mode)
    small_ms = whole_ms(fast, example_input, dt, timing, mode)
    del dense
    plan = fast.spruce_plan
    if small_ms <= dense_ms:
        plan.model_ms.update({"compacted": small_ms, "dense, uncompacted": dense_ms})
        return fast
    fallback = convert_fn(model, backend, dtype=dtype, example_input=example_input,
                          verify=verify, **extra, **options)
    fallback.spruce_plan.model_ms.update({"compacted": small_ms,
                                          "dense, uncompacted": dense_ms})
    return fallback
