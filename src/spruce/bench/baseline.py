"""The best dense baseline: every speed-up is a ratio to the fastest dense path measured in
the same run, never to eager dense alone.

Dense paths (``DENSE_PATHS``; backend names of the baseline rows):

- ``dense`` — eager PyTorch;
- ``dense·graph`` — the eager model replayed as a CUDA graph (CUDA only);
- ``dense·compiled`` — ``torch.compile`` (Inductor, static shapes), replayed as a CUDA
  graph on CUDA.

:func:`dense_rows` measures them into records; :func:`best_dense` picks the fastest.
:func:`degenerate` says when a reference output cannot judge anything (a randomly
initialised MobileNetV3 gives outputs of norm 1e-8 that underflow to zero in fp16), and
:func:`calibrate_batchnorm` gives a random model BatchNorm statistics of its own
activations, which keeps them O(1).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .records import RECORD_FIELDS, Record, describe_error, measure

EAGER, GRAPH, COMPILED = "dense", "dense·graph", "dense·compiled"
DENSE_PATHS = (EAGER, GRAPH, COMPILED)

TINY_RMS = 1e-4          # a reference output's root-mean-square below this is degenerate
SAME_FOR_ALL = 1e-3      # so is a batch whose spread is below this fraction of the RMS


def is_dense_path(backend: str | None) -> bool:
    return backend in DENSE_PATHS


def paths_for(device: torch.device | str, paths: Sequence[str] | None = None) -> list[str]:
    """The dense paths that exist on ``device`` (``paths``: a subset to keep)."""
    kind = torch.device(device).type
    out = [p for p in DENSE_PATHS if kind == "cuda" or p != GRAPH]
    return [p for p in out if paths is None or p in paths]


def call(module: Any, x: Any) -> Any:
    """``module(**x)`` for keyword inputs (HF models), ``module(x)`` otherwise."""
    return module(**x) if isinstance(x, dict) else module(x)


def compiled_caller(model: nn.Module, example: Any, mode: str = "default"
                    ) -> tuple[Callable[[Any], Any], float]:
    """``torch.compile(model)`` called on ``example`` once (the compile), and its seconds.
    The model gets a Dynamo cache of its own (see :func:`spruce.compiled.own_entry`): many
    models of one class compile without reaching the recompile limit, and nothing compiled
    before (a spruce model timed beside it) is reset."""
    from ..compiled import own_entry

    fast = torch.compile(own_entry(model), mode=mode, dynamic=False)
    t0 = time.perf_counter()
    with torch.inference_mode():
        call(fast, example)
    if any(p.is_cuda for p in model.parameters()):
        torch.cuda.synchronize()
    return (lambda x: call(fast, x)), time.perf_counter() - t0


def dense_rows(name: str, model: nn.Module, inputs: list, *, device: torch.device | str,
               paths: Sequence[str] | None = None, compile_mode: str = "default",
               extra: dict | None = None, **fields: Any) -> list[Record]:
    """One record per dense path on ``device`` (an error row where a path fails: a model
    Inductor cannot compile still has its eager and graph rows), each with its
    ``ratio_to_dense`` against the fastest. ``fields`` go to every record (kind, dtype,
    timing knobs, param_ratio, ...)."""
    rows = []
    on_cuda = torch.device(device).type == "cuda"
    eager = functools.partial(call, model)
    for path in paths_for(device, paths):
        info = dict(extra or {}, path=path)
        try:
            if path == COMPILED:
                fn, secs = compiled_caller(model, inputs[0], compile_mode)
                info["compile_s"] = round(secs, 2)
            else:
                fn = eager
        except Exception as e:  # Inductor fails in many types
            keep = {k: v for k, v in fields.items() if k in RECORD_FIELDS}
            rows.append(Record.error_row(name=name, backend=path, device=str(device),
                                         error=f"compile failed: {describe_error(e)}",
                                         extra=info, **keep))
            continue
        rows.append(measure(name, fn, inputs, device=device, backend=path, extra=info,
                            cuda_graph=on_cuda and path != EAGER, **fields))
    best = best_dense(rows)
    for r in rows:
        if best is not None and r.median_ms is not None:
            r.ratio_to_dense = r.median_ms / best[1]
            r.extra["baseline"] = best[0]
    return rows


def best_dense(rows: Sequence[Record | dict]) -> tuple[str, float] | None:
    """(path, median ms) of the fastest dense row among ``rows``; None if none was timed."""
    timed = []
    for r in rows:
        d = r if isinstance(r, dict) else r.__dict__
        if is_dense_path(d.get("backend")) and d.get("pattern") is None \
                and d.get("error") is None and d.get("median_ms") is not None:
            timed.append((d["backend"], d["median_ms"]))
    return min(timed, key=lambda t: t[1]) if timed else None


def eager_dense(rows: Sequence[Record | dict]) -> float | None:
    """The eager dense row's median among ``rows``."""
    for r in rows:
        d = r if isinstance(r, dict) else r.__dict__
        if d.get("backend") == EAGER and d.get("pattern") is None and d.get("error") is None:
            return d.get("median_ms")
    return None


def degenerate(out: torch.Tensor) -> str | None:
    """Why an fp32 reference output cannot judge anything, or None when it can: not
    finite, (almost) all zeros, or (almost) the same for every sample of the batch."""
    out = out.detach().double().cpu()
    if not torch.isfinite(out).all():
        return "the output has inf/nan entries"
    rms = out.pow(2).mean().sqrt().item()
    if rms < TINY_RMS:
        return f"the output is tiny (rms {rms:.1e} < {TINY_RMS:.0e})"
    if out.dim() > 0 and out.shape[0] > 1:
        spread = (out - out.mean(0, keepdim=True)).pow(2).mean().sqrt().item() / rms
        if spread < SAME_FOR_ALL:
            return (f"every sample gives the same output (spread {spread:.1e} of the rms "
                    f"< {SAME_FOR_ALL:.0e})")
    return None


def calibrate_batchnorm(model: nn.Module, inputs: Sequence[Any]) -> int:
    """Set every BatchNorm's running statistics to those of ``model``'s own activations on
    ``inputs`` (a cumulative average over them), so a randomly initialised network keeps
    its activations O(1) in eval mode. Returns how many BatchNorm layers were set."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    was_training = model.training
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.eval()
    for m in norms:
        m.train()
    with torch.no_grad():
        for x in inputs:
            call(model, x)
    for m, (momentum, training) in zip(norms, saved, strict=True):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return len(norms)
