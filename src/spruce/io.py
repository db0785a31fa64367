"""Save and load every kind of saved model as safetensors — no pickle — by one path.

A file holds a model's ``state_dict`` and a JSON header under the metadata key
``"spruce"`` in one schema for every kind (see :mod:`spruce.fileformat.schema`): a format
version, the kind, one record per layer and model-level fields. Each kind — ``masked``
here, ``compacted`` in :mod:`spruce.compact.io`, ``converted`` in
:mod:`spruce.backends.io` — is a :class:`FileKind` in one registry: :func:`save` writes the
kind of highest rank that claims the model, :func:`load` reads the header once
(:func:`read`) and hands it to the kind the file names. Files are written atomically
(temporary file in the same folder, then rename); loading checks everything — layer names,
shapes, every mask against its declared pattern — before the model changes.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .errors import SpruceError
from .fileformat import (
    FORMAT_VERSION,
    HEADER_KEY,
    KINDS,
    Stored,
    check_finite,
    check_mask,
    layer_key,
    layer_records,
    reading,
)
from .fileformat.schema import SCHEMA_FIELDS
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


def load_masked(stored: Stored, model: nn.Module) -> nn.Module:
    """Restore the weights and masks of a ``masked`` file into ``model`` (in place).

    Everything is checked (see :mod:`spruce.fileformat`) before the model changes."""
    infos = stored.records("mask")
    mask_targets(stored, model, infos)
    _check_stored(stored, model, list(infos))
    tensors = load_file(str(stored.path))
    check_finite({k: v for k, v in tensors.items() if not k.endswith(MASK_SUFFIX.lstrip("."))},
                 stored.path, {k for k, _ in model.named_buffers()})
    load_masks(stored, tensors, model, infos)
    model.load_state_dict(tensors, strict=True)
    return model


def mask_records(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Layer name → its mask record (pattern(s), criterion, … and the kept fraction)."""
    records = {}
    for name, layer in masked_layers(model).items():
        mask = layer.parametrizations.weight[0].mask
        records[name] = {**mask_info(layer), "density": float(mask.float().mean())}
    return records


def module_order(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules()]


# ------------------------------------------------------------------ kinds: one registry

@dataclass(frozen=True)
class FileKind:
    """One kind of saved model: which models it describes, what it writes, how it loads."""

    name: str                                           # the header's ``kind``
    rank: int                                           # save(): highest claiming rank wins
    claims: Callable[[nn.Module], bool]                 # whether this kind describes a model
    header: Callable[[nn.Module], dict[str, Any]]       # "layers" records + model-level fields
    state: Callable[[nn.Module], dict[str, torch.Tensor]]
    load: Callable[[Stored, nn.Module], nn.Module]      # a checked file onto an architecture


_KINDS: dict[str, FileKind] = {}


def register_kind(kind: FileKind) -> FileKind:
    if kind.name not in KINDS:
        raise ValueError(f"kind {kind.name!r} has no header schema; known: {', '.join(KINDS)}")
    _KINDS[kind.name] = kind
    return kind


def kind_of(model: nn.Module) -> FileKind:
    """The kind :func:`save` writes ``model`` as."""
    return max((k for k in _KINDS.values() if k.claims(model)), key=lambda k: k.rank)


# free-form notes may not take the name of a schema field
RESERVED = SCHEMA_FIELDS - {"model", "dataset"}


def save(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None
         ) -> Path:
    """Write ``model`` — pruned, compacted or converted — with its header to ``path``.
    ``extra`` adds model-level notes (``model``, ``dataset``, a training run …)."""
    clash = sorted(set(extra or {}) & RESERVED)
    if clash:
        raise ValueError(f"extra may not set {', '.join(clash)}: the header's own fields")
    kind = kind_of(model)
    header = {"format_version": FORMAT_VERSION, "kind": kind.name, "version": __version__,
              **(extra or {}), **kind.header(model)}
    return atomic_save(kind.state(model), path, header)


def read(path: str | os.PathLike) -> Stored:
    """The file's checked header and tensor index — read once, then pass it on."""
    return reading.read_stored(path)


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The checked JSON header of a spruce file, in the current layout."""
    return read(path).header


def load_stored(stored: Stored, model: nn.Module) -> nn.Module:
    """Load a file already read by :func:`read` onto ``model``'s architecture."""
    kind = _KINDS.get(stored.kind)
    if kind is None:
        raise SpruceError(f"no loader for {stored.kind!r} models here", path=stored.path,
                          field="kind")
    return kind.load(stored, model)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file written by :func:`save` onto ``model``'s architecture (see
    :func:`spruce.load`)."""
    return load_stored(read(path), model)


register_kind(FileKind(
    "masked", 0, claims=lambda model: True,
    header=lambda model: {"layers": layer_records(module_order(model), mask=mask_records(model))},
    state=lambda model: model.state_dict(), load=load_masked))
