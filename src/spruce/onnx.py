"""``spruce.export_onnx``: a dense, pruned, compacted or converted model as an ONNX file.

Models whose layers run on ``dense``, ``groupwise`` (gather + GEMM) or ``channel``
(GEMM + scatter), and compacted models (smaller dense layers), export through torch's
TorchScript-based exporter and run in onnxruntime. Backends whose operands have no ONNX
form (``csr``, ``bsr``, ``semi24``, ``groupwise_fused``) are refused up front, naming the
layer. Shapes are static: the file runs on inputs shaped like ``example_input``. During
export ``nn.MultiheadAttention``'s fused fast path (no ONNX form) is off, and a Hugging
Face model's ``config.use_cache`` is False (the graph returns no key/value cache).

Needs the ``[onnx]`` extra for the check (``pip install 'spruce[onnx]'``: onnx and
onnxruntime).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backends.base import get_backend
from .backends.io import converted_modules
from .backends.wholemodel import tensors_of
from .errors import SpruceError


def not_exportable(model: nn.Module) -> list[tuple[str, str, str]]:
    """(layer, backend, why) for each converted layer that cannot be exported."""
    found = []
    for name, mod in converted_modules(model).items():
        backend = get_backend(mod.config()["backend"])
        if backend.not_exportable:
            found.append((name, backend.name, backend.not_exportable))
    return found


def _arguments(example: Any) -> tuple[tuple, dict, list[str]]:
    """(positional args, keyword args, input names) for ``torch.onnx.export``."""
    if isinstance(example, dict):
        return (), dict(example), list(example)
    if isinstance(example, (tuple, list)):
        return tuple(example), {}, [f"input_{i}" for i in range(len(example))]
    return (example,), {}, ["input"]


class _Positional(nn.Module):
    """The model called with its inputs as positional tensors (keyword inputs in the order
    of ``names``), returning its output tensors as a flat tuple: the TorchScript exporter
    takes neither keyword arguments reliably nor dict outputs (Hugging Face models)."""

    def __init__(self, model: nn.Module, keywords: list[str], n_args: int):
        super().__init__()
        self.model, self.keywords, self.n_args = model, keywords, n_args

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        args, rest = inputs[:self.n_args], inputs[self.n_args:]
        out = self.model(*args, **dict(zip(self.keywords, rest, strict=True)))
        return tuple(tensors_of(out))


@contextlib.contextmanager
def exportable_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode, no MultiheadAttention fast path, no HF key/value cache; restored after."""
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    if config is not None and use_cache:
        config.use_cache = False
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values in shapes
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        if config is not None and use_cache:
            config.use_cache = use_cache


def export_onnx(model: nn.Module, example_input: Any, path: str | os.PathLike,
                opset_version: int = 17, check: bool = True) -> Path:
    """Write ``model`` run on ``example_input`` (a tensor, a tuple of positional inputs or a
    dict of keyword inputs) to ``path`` as ONNX. With ``check`` and onnxruntime installed,
    the file is run on ``example_input`` and compared with PyTorch's outputs."""
    from .graphs import CudaGraphModule

    if isinstance(model, CudaGraphModule):
        model = model.module
    refused = not_exportable(model)
    if refused:
        name, backend, why = refused[0]
        others = f" (and {len(refused) - 1} more layers)" if len(refused) > 1 else ""
        raise SpruceError(f"backend '{backend}' cannot be exported to ONNX: {why}{others}; "
                          f"convert with backend 'dense', 'groupwise' or 'channel' to export",
                          layer=name)
    args, kwargs, names = _arguments(example_input)
    path = Path(path)
    model = model.eval()
    flat = _Positional(model, list(kwargs), len(args)).eval()  # export restores its mode
    with exportable_mode(model):
        try:
            torch.onnx.export(flat, (*args, *kwargs.values()), str(path), input_names=names,
                              opset_version=opset_version, dynamo=False)
        except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0][:200]
            raise SpruceError(f"torch's ONNX exporter cannot export this model ({first}); "
                              "the model itself, not its pruning, holds the op: export the "
                              "dense model to see the same", path=path) from None
    if check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return path
        err = onnx_error(path, model, example_input)
        if not err <= 1e-3:
            raise SpruceError(f"onnxruntime's outputs differ from PyTorch's (relative error "
                              f"{err:.1e}); please report this as a bug", path=path)
    return path


def onnx_error(path: str | os.PathLike, model: nn.Module, example_input: Any) -> float:
    """Largest normwise relative error of onnxruntime's outputs for ``path`` against
    ``model``'s on ``example_input`` (needs onnxruntime)."""
    import onnxruntime as ort

    args, kwargs, names = _arguments(example_input)
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in runtime.get_inputs()}  # inputs the graph really reads
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, [*args, *kwargs.values()],
                                                        strict=True) if n in wanted}
    got = runtime.run(None, feed)
    with exportable_mode(model):
        ref = tensors_of(model(*args, **kwargs))
    if len(got) != len(ref):
        return float("inf")
    errs = [float((torch.from_numpy(g).double() - r.double().cpu()).norm()
                  / r.double().norm().clamp_min(1e-12)) for g, r in zip(got, ref, strict=True)]
    return max(errs, default=0.0)
