"""Files in the version-1 layout (no ``format_version``), written the way spruce's three
former writers wrote them, so the tests can check that such files still load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

import spruce
from spruce.backends.base import dtype_name
from spruce.backends.io import converted_modules
from spruce.backends.wholemodel import aliases, drop_aliases
from spruce.masks import mask_info, mask_module, masked_layers
from spruce.structure.trace import param_name


def _masks(model: nn.Module) -> dict[str, Any]:
    return {name: {**mask_info(layer), "density": float(mask_module(layer).mask.float().mean())}
            for name, layer in masked_layers(model).items()}


def _compaction(model: nn.Module) -> dict[str, Any]:
    shapes = {param_name(k): list(t.shape) for k, t in model.state_dict().items()
              if param_name(k) is not None}
    return {"shapes": shapes, "folded": list(model.spruce_compaction.folded)}


def _masked(model: nn.Module) -> dict[str, Any]:
    return {"format": "masked", "version": spruce.__version__, "layers": _masks(model)}


def _compacted(model: nn.Module) -> dict[str, Any]:
    return {"format": "compacted", "version": spruce.__version__,
            "compaction": _compaction(model), "masks": _masks(model),
            "report": model.spruce_compaction.to_dict()}


def _converted(model: nn.Module) -> dict[str, Any]:
    floats = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    report = getattr(model, "spruce_report", None)
    header = {"format": "converted", "version": spruce.__version__,
              "dtype": dtype_name(floats[0].dtype),
              "layers": {n: m.config() for n, m in converted_modules(model).items()},
              "report": report.to_dict() if report is not None else None}
    if hasattr(model, "spruce_compaction"):  # converted after compaction
        header["compaction"] = _compaction(model)
    alias = aliases(model)
    if alias:
        header["aliases"] = alias
    return header


WRITERS = {"masked": _masked, "compacted": _compacted, "converted": _converted}


def save_v1(model: nn.Module, path: Path, kind: str, extra: dict | None = None) -> Path:
    """``model`` written as the version-1 writer of ``kind`` wrote it."""
    header = {**WRITERS[kind](model), **(extra or {})}
    state = model.state_dict()
    if kind == "converted":
        state = drop_aliases(state, aliases(model))
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    save_file(plain, str(path), metadata={"spruce": json.dumps(header)})
    return path
