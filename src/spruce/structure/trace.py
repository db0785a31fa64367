"""Trace a model once into an ATen graph that names its parameters.

``torch.export`` (non-strict, eval mode) gives a ``torch.fx`` graph of ATen ops for plain
PyTorch and Hugging Face models alike; its signature maps every parameter/buffer input to
its qualified name. Outputs that are not tensors (a Hugging Face cache object) are dropped
by a thin wrapper, and ``use_cache=False`` is passed where the model's config has it.
Masked layers are traced as they are: their weight is ``original * mask``, which the
dependency graph reads as the layer's weight (:func:`param_name` maps the names back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import SpruceError

PARAMETRIZED = ".parametrizations."


class TraceError(SpruceError):
    """The model could not be traced; nothing structural can be done."""


def param_name(fqn: str) -> str | None:
    """``a.b.weight`` for ``a.b.weight`` and ``a.b.parametrizations.weight.original``;
    None for a mask buffer (``…parametrizations.weight.0.mask``)."""
    if PARAMETRIZED not in fqn:
        return fqn
    owner, _, rest = fqn.partition(PARAMETRIZED)
    attr, _, tail = rest.partition(".")
    return f"{owner}.{attr}" if tail == "original" else None


def _tensors(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, Mapping):
        vals = list(out.values())
    elif isinstance(out, (list, tuple)):
        vals = list(out)
    elif hasattr(out, "to_tuple"):  # a transformers ModelOutput
        vals = list(out.to_tuple())
    else:
        return []
    return [t for v in vals for t in _tensors(v)]


class _Flat(nn.Module):
    """Calls the model and returns the tensors of its output as a flat tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        return tuple(_tensors(self.model(*args, **kwargs)))


def call_args(model: nn.Module, x: Any) -> tuple[tuple, dict]:
    """(args, kwargs) for ``model`` from an example input: a tensor, a tuple/list of
    positional inputs or a dict of keyword inputs."""
    if isinstance(x, Mapping):
        kwargs = dict(x)
        config = getattr(model, "config", None)
        if getattr(config, "use_cache", None) is not None and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
        return (), kwargs
    return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), {}


def export(model: nn.Module, example_input: Any) -> torch.export.ExportedProgram:
    """The model's exported program for ``example_input`` (traced in eval mode; the model's
    train/eval modes are restored)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    args, kwargs = call_args(model, example_input)
    try:
        with torch.no_grad():
            return torch.export.export(_Flat(model), args, kwargs, strict=False)
    except Exception as e:  # export raises many types; all mean "no graph"
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise TraceError(f"torch.export failed with {type(e).__name__}: "
                         f"{lines[0][:200] if lines else ''} — pass an example_input the model "
                         "accepts (a tensor, a tuple of positional inputs or a dict of keyword "
                         "inputs); data-dependent control flow cannot be traced") from e
    finally:
        for m, training in modes:
            m.training = training


def placeholder_names(program: torch.export.ExportedProgram) -> dict[str, str]:
    """Graph placeholder name → qualified parameter/buffer/constant name (without the
    wrapper's ``model.`` prefix; parametrized weights under their plain name)."""
    sig = program.graph_signature
    names: dict[str, str] = {}
    for mapping in (sig.inputs_to_parameters, sig.inputs_to_buffers,
                    getattr(sig, "inputs_to_lifted_tensor_constants", {})):
        for node_name, fqn in mapping.items():
            fqn = fqn.removeprefix("model.")
            plain = param_name(fqn)
            if plain is not None:
                names[node_name] = plain
    return names
