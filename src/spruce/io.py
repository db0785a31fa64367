"""Save and load pruned models as safetensors — no pickle.

The file holds the model's ``state_dict`` (original weights beside their masks) and a JSON
header under the metadata key ``"spruce"``: format, spruce version, and per masked layer the
pattern(s), criterion, scope, target and achieved density. Files are written atomically
(temporary file in the same folder, then rename). ``load`` checks everything — layer names,
shapes, every mask against its declared pattern — before it changes the model.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .errors import SpruceError
from .fileformat import (
    HEADER_KEY,
    Stored,
    check_finite,
    check_mask,
    expect_format,
    layer_key,
    mask_infos,
    read_stored,
)
from .masks import attach_shared, mask_info, masked_layers
from .view import find_layers

MASK_SUFFIX = ".parametrizations.weight.0.mask"
ORIG_SUFFIX = ".parametrizations.weight.original"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def clean_stale(path: Path) -> None:
    """Remove what earlier saves of ``path`` left when they were killed (``kill -9``,
    power loss): their temporary folders ``.<name>.<pid>.<random>.tmp`` whose process is
    gone. A save in progress in another live process is left alone."""
    prefix = f".{path.name}."
    for entry in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        pid = entry.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else \
                entry.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename onto ``path``: readers see the old file or the
    new one, never half of one (also on Ctrl-C). The file gets the usual permissions.

    ``tmp_path`` lies in a private folder ``.<name>.<pid>.<random>.tmp`` beside ``path``
    (writers such as safetensors make their own temporary files next to their target, so
    they land there too); the folder goes once the file is in place, and a folder left by
    a killed save is removed by the next save of the same path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    folder = tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                              dir=path.parent)
    tmp = os.path.join(folder, path.name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
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
    """The checked JSON header of a spruce file (see :mod:`spruce.fileformat`)."""
    return read_stored(path).header


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write a (pruned) model's weights, masks and pruning header to ``path``."""
    layers = {}
    for name, layer in masked_layers(model).items():
        mask = layer.parametrizations.weight[0].mask
        layers[name] = {**mask_info(layer), "density": float(mask.float().mean())}
    header = {"format": "masked", "version": __version__, "layers": layers, **(extra or {})}
    return atomic_save(model.state_dict(), path, header)


def mask_targets(stored: Stored, model: nn.Module, infos: dict[str, Any]
                 ) -> dict[str, nn.Module]:
    """The layers the file's masks go on: each must exist and be prunable."""
    found = find_layers(model)  # a layer may have two names, a weight two layers
    prunable = {id(m) for name, m in found.layers.items()} | \
        {id(f) for fs in found.followers.values() for f in fs}
    targets = {}
    for name in infos:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise SpruceError("the file has a mask for this layer, which the model does not "
                              "have; load it into the model it was saved from",
                              path=stored.path, layer=name) from None
        if id(layer) not in prunable:
            raise SpruceError(f"the file puts a mask on a {type(layer).__name__}, which is "
                              "not a prunable layer; the file is damaged or belongs to "
                              "another model", path=stored.path, layer=name)
        mask = stored.shapes.get(layer_key(name, MASK_SUFFIX))
        if mask is None:
            raise SpruceError("listed in the header but its mask tensor is missing; the "
                              "file is damaged", path=stored.path, layer=name)
        if mask != tuple(layer.weight.shape):
            raise SpruceError(f"mask shape {mask} does not match the model's weight "
                              f"{tuple(layer.weight.shape)}; wrong model or variant?",
                              path=stored.path, layer=name)
        targets[name] = layer
    return targets


def _expected_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple[int, ...]]:
    """State-dict keys and shapes the model will have once the file's masks are attached."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name in names:
        if layer_key(name, ".weight") in shapes:
            w = shapes.pop(layer_key(name, ".weight"))
            shapes[layer_key(name, ORIG_SUFFIX)] = w
            shapes[layer_key(name, MASK_SUFFIX)] = w
    return shapes


def _masked_names(model: nn.Module, names: list[str]) -> list[str]:
    """Every name of every module the file masks: a layer registered under two names
    keeps its original weight and mask under both in the state dict."""
    ids = {id(model.get_submodule(name)) for name in names}
    return [n for n, m in model.named_modules(remove_duplicate=False) if id(m) in ids]


def _check_stored(stored: Stored, model: nn.Module, names: list[str]) -> None:
    expected = _expected_shapes(model, _masked_names(model, names))
    missing = sorted(set(expected) - set(stored.shapes))
    unexpected = sorted(set(stored.shapes) - set(expected))
    if missing or unexpected:
        raise SpruceError(f"does not fit the model — missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}; was it saved from another model?",
                          path=stored.path)
    for key, shape in expected.items():
        if stored.shapes[key] != shape:
            raise SpruceError(f"'{key}' has shape {stored.shapes[key]}, the model expects "
                              f"{shape}; wrong model or variant?", path=stored.path)


def load_masks(stored: Stored, tensors: dict[str, torch.Tensor], model: nn.Module,
               infos: dict[str, Any]) -> None:
    """Check every mask in ``tensors``, then attach a placeholder mask (with its ``info``)
    to each masked layer of ``model``, ready for ``load_state_dict``."""
    targets = mask_targets(stored, model, infos)
    for name in targets:
        key = layer_key(name, MASK_SUFFIX)
        check_mask(tensors[key], infos[name], stored.path, name, targets[name])
        tensors[key] = tensors[key].to(torch.bool)
    params = attach_shared(targets)
    for name in targets:  # layers that shared a weight share one mask again
        params[name].info = {k: v for k, v in infos[name].items() if k != "density"}


def load(path: str | os.PathLike, model: nn.Module, stored: Stored | None = None) -> nn.Module:
    """Restore weights and masks saved by :func:`save` into ``model`` (in place).

    Everything is checked (see :mod:`spruce.fileformat`) before the model changes."""
    stored = read_stored(path) if stored is None else stored
    expect_format(stored, "masked")
    infos = mask_infos(stored.fields(), "layers")
    mask_targets(stored, model, infos)
    _check_stored(stored, model, list(infos))
    tensors = load_file(str(stored.path))
    check_finite({k: v for k, v in tensors.items() if not k.endswith(MASK_SUFFIX.lstrip("."))},
                 stored.path, {k for k, _ in model.named_buffers()})
    load_masks(stored, tensors, model, infos)
    model.load_state_dict(tensors, strict=True)
    return model
