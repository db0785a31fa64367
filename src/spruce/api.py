"""``spruce.save`` / ``spruce.load`` for pruned (masked) and converted models alike."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

import torch

from . import io
from .backends import io as _converted  # noqa: F401  (registers the kind "converted")
from .compact import io as _compacted  # noqa: F401  (registers the kind "compacted")
from .backends.convert import convert as convert_with


def convert(model: nn.Module, backend: str = "dense", dtype: torch.dtype | None = None,
            example_input: Any = None, verify: bool = True, cuda_graph: bool | None = None,
            compile: bool | str = False, compact: bool | int = False, **options: Any) -> nn.Module:
    """A new inference model: every masked layer runs on ``backend``'s module, verified
    against the dense masked layer; given ``example_input`` (a tensor, a tuple of positional
    inputs or a dict of keyword inputs) the whole converted model is run once and compared
    with the pruned one, and layers that make it fail or differ stay dense with the reason.
    Converted modules expose the replaced layer's ``weight`` (dense-equivalent, read-only),
    ``bias`` and sizes. ``backend="auto"`` measures every candidate per layer
    on ``example_input``'s shapes and keeps the fastest (``plan=PATH`` caches the choices;
    see :mod:`spruce.auto`); with ``compile`` it judges the whole model compiled, against
    compiled dense. ``compile=True`` / ``"max-autotune"`` runs the result through
    ``torch.compile`` (see :mod:`spruce.compiled`). ``cuda_graph=True`` captures the forward
    on ``example_input`` as one CUDA graph (static shapes; see :mod:`spruce.graphs`); left
    at None it is on for a compiled model on CUDA given ``example_input``. The report is at
    ``result.spruce_report``. ``compact=True`` runs :func:`spruce.compact` first (units every
    reader pruned become smaller dense layers), keeping every compacted width a multiple of 8
    on CUDA (tensor cores; an int, ``compact=16``, sets that alignment); with ``auto`` the
    compacted model is kept only if it is not slower than the uncompacted model's dense twin
    (see :mod:`spruce.auto_compact`)."""
    from .backends.convert import cast_input, first_float
    from .backends.wholemodel import model_tolerance
    from .compiled import compile_mode, finish_model

    compile_mode(compile)  # a bad value fails before any work
    if cuda_graph and example_input is None:
        raise ValueError("cuda_graph=True needs example_input: the graph is captured for "
                         "its shapes")
    if cuda_graph and not torch.cuda.is_available():
        raise ValueError("cuda_graph=True needs CUDA; this machine has none")
    if compact:
        from .auto_compact import convert_compacted

        fast = convert_compacted(model, backend, _convert_eager, dtype, example_input, verify,
                                 compile, align=compact_align(model, compact), **options)
    else:
        fast = _convert_eager(model, backend, dtype=dtype, example_input=example_input,
                              verify=verify, compile=compile, **options)
    first = first_float(fast)
    dt = dtype if dtype is not None else (first.dtype if first is not None else torch.float32)
    from .backends.convert import as_dtype
    dt = as_dtype(dt)
    example = None if example_input is None else cast_input(
        example_input, dt, first.device if first is not None else torch.device("cpu"))
    return finish_model(fast, compile, cuda_graph, example, model_tolerance(dt))


def compact_align(model: nn.Module, compact: bool | int) -> int:
    """The width alignment ``compact=`` asks for: True -> 8 on CUDA (tensor cores), 1 on
    the CPU; an int is the alignment itself."""
    if compact is True:
        from .backends.convert import first_float

        first = first_float(model)
        return 8 if first is not None and first.device.type == "cuda" else 1
    if isinstance(compact, int) and compact >= 1:
        return compact
    raise ValueError(f"compact= takes True/False or a positive int alignment; got {compact!r}")


def _convert_eager(model: nn.Module, backend: str, compile: bool | str = False,
                   **kwargs: Any) -> nn.Module:
    """``backend``'s converted model, not yet compiled (``auto`` judges it compiled)."""
    if backend == "auto":
        from .auto import convert_auto

        return convert_auto(model, compile=compile, **kwargs)
    return convert_with(model, backend, **kwargs)


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a pruned, compacted or converted model to ``path`` as safetensors (atomically);
    ``extra`` adds notes to the header (``model``, ``dataset`` …). See :mod:`spruce.io`.
    A compiled model or a CUDA graph saves the model under it."""
    from .compiled import unwrap

    model = unwrap(model)  # a CUDA graph or compiled code is not saved; the model is
    return io.save(model, path, extra)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save` onto ``model``'s architecture.

    Pruned files restore weights and masks into ``model`` in place (and return it);
    compacted and converted files return a new model built on ``model``'s architecture.
    The file is untrusted input: its header and tensors are checked against each other and
    against ``model`` before anything is built (see :mod:`spruce.fileformat`); a bad file
    raises :class:`~spruce.errors.SpruceError` naming the file, the layer and the field.
    Files written by earlier versions of spruce load too (their headers are upgraded).
    """
    return io.load(path, model)
