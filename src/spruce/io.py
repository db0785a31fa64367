"""Save and load pruned models as safetensors — no pickle.

The file holds the model's ``state_dict`` (original weights beside their masks) and a JSON
header under the metadata key ``"spruce"``: format, spruce version, and per masked layer the
pattern(s), criterion, scope, target and achieved density. Files are written atomically
(temporary file in the same folder, then rename). ``load`` checks everything — layer names,
shapes, every mask against its declared pattern — before it changes the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .masks import attach_shared, mask_info, masked_layers
from .patterns import get_pattern
from .view import view_of

HEADER_KEY = "spruce"
MASK_SUFFIX = ".parametrizations.weight.0.mask"
ORIG_SUFFIX = ".parametrizations.weight.original"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers see the old file or the
    new one, never half of one (also on Ctrl-C). The file gets the usual permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)
    return atomic_write(path, write)


def atomic_save(tensors: dict[str, torch.Tensor], path: str | os.PathLike,
                header: dict[str, Any]) -> Path:
    """Write ``tensors`` and a JSON ``header`` to ``path`` as safetensors, atomically."""
    # clones: safetensors refuses tensors that share storage (tied weights)
    plain = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, tmp,
                                                    metadata={HEADER_KEY: json.dumps(header)}))


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors file ({e})") from None
    if HEADER_KEY not in meta:
        raise ValueError(f"{path}: safetensors file without a spruce header; was it written "
                         "by spruce.save?")
    return json.loads(meta[HEADER_KEY])


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a (pruned) model's weights, masks and pruning header to ``path``."""
    layers = {}
    for name, layer in masked_layers(model).items():
        mask = layer.parametrizations.weight[0].mask
        layers[name] = {**mask_info(layer), "density": float(mask.float().mean())}
    header = {"format": "masked", "version": __version__, "layers": layers, **(extra or {})}
    return atomic_save(model.state_dict(), path, header)


def _check_masks(path: Path, model: nn.Module, header: dict[str, Any],
                 tensors: dict[str, torch.Tensor]) -> None:
    for name, info in header.get("layers", {}).items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: has a mask for layer '{name}', which the model does "
                             "not have; load it into the model it was saved from") from None
        mask = tensors.get(name + MASK_SUFFIX)
        if mask is None:
            raise ValueError(f"{path}: layer '{name}' is listed in the header but its mask "
                             "tensor is missing; the file is damaged")
        weight_shape = tuple(layer.weight.shape)
        if tuple(mask.shape) != weight_shape:
            raise ValueError(f"layer '{name}': mask shape {tuple(mask.shape)} does not match "
                             f"the model's weight {weight_shape}; wrong model or variant?")
        specs = info.get("patterns", [])
        if len(specs) == 1:  # one pattern applied: its structure must hold
            problem = get_pattern(specs[0]).conforms(view_of(layer, mask.bool()))
            if problem:
                raise ValueError(f"layer '{name}': mask breaks its declared pattern "
                                 f"{specs[0]['name']}: {problem}")


def _expected_shapes(model: nn.Module, header: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes the model will have once the file's masks are attached."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in _masked_names(model, header):
        if name + ".weight" in shapes:
            w = shapes.pop(name + ".weight")
            shapes[name + ORIG_SUFFIX] = w
            shapes[name + MASK_SUFFIX] = w
    return shapes


def _masked_names(model: nn.Module, header: dict[str, Any]) -> list[str]:
    """Every name of every module the header masks: a layer registered under two names
    keeps its original weight and mask under both in the state dict."""
    listed = header.get("layers", {})
    ids = set()
    for name in listed:
        try:
            ids.add(id(model.get_submodule(name)))
        except AttributeError:
            pass  # reported by _check_masks
    return [n for n, m in model.named_modules(remove_duplicate=False) if id(m) in ids]


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Restore weights and masks saved by :func:`save` into ``model`` (in place)."""
    path = Path(path)
    header = read_header(path)
    if header.get("format") != "masked":
        raise ValueError(f"{path}: holds a {header.get('format')!r} model; "
                         "load it with spruce.load")
    tensors = load_file(str(path))
    _check_masks(path, model, header, tensors)
    expected = _expected_shapes(model, header)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: does not fit the model — missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}; was it saved from another model?")
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(f"{path}: '{key}' has shape {tuple(tensors[key].shape)}, the model "
                             f"expects {shape}; wrong model or variant?")
    listed = header.get("layers", {})
    params = attach_shared({name: model.get_submodule(name) for name in listed})
    for name, info in listed.items():  # layers that shared a weight share one mask again
        params[name].info = {k: v for k, v in info.items() if k != "density"}
    model.load_state_dict(tensors, strict=True)
    return model
