"""Checkpoints that survive a kill: each one a folder, written whole or not at all.

    CKPT/step_000000120/model.safetensors   weights and masks (spruce.save: masks persist)
                        optim.safetensors   the optimizer's tensors (momentum, Adam moments)
                        state.json          step, epoch, position in the epoch, the config
                                            fingerprint, the optimizer's other state, the
                                            loss scaler, and every rank's RNG states
    CKPT/last                               the name of the newest folder

A checkpoint is written into a temporary folder beside the others, then renamed into
place (``os.replace``: atomic on one file system); ``last`` is rewritten the same way
(temporary file + rename, no symlink). A run killed at any instant leaves the previous
checkpoint intact, and a stray temporary folder that the next run removes.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..api import load as load_model
from ..api import save as save_model
from ..errors import SpruceError
from ..io import atomic_save, atomic_write_text
from .validate import REMEDY, check_state, first_nonfinite, loading, model_tensors

POINTER = "last"
TMP_PREFIX = ".tmp-step_"
FILES = ("model.safetensors", "optim.safetensors", "state.json")
STEP_NAME = re.compile(r"step_\d{9,}")


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


# -- RNG states as JSON --------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch (CPU and its CUDA device), numpy and python RNG states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": _b64(torch.get_rng_state()),
             "numpy": [name, base64.b64encode(keys.tobytes()).decode(), pos, has_gauss, cached],
             "python": [random.getstate()[0], list(random.getstate()[1]),
                        random.getstate()[2]]}
    if device.type == "cuda":
        state["cuda"] = _b64(torch.cuda.get_rng_state(device))
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore the states :func:`rng_state` wrote (a damaged one raises on its own type;
    :func:`load` turns that into a SpruceError naming the file)."""
    torch.set_rng_state(_unb64(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(base64.b64decode(keys), dtype=np.uint32).copy(),
                         pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(_unb64(state["cuda"]), device)


# -- optimizer state: tensors to safetensors, the rest to JSON ------------------------------
def split_tensors(obj: Any, tensors: dict[str, torch.Tensor], key: str = "") -> Any:
    """``obj`` with each tensor replaced by ``{"__tensor__": name}`` (tensors go to the dict)."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[k, split_tensors(v, tensors, f"{key}.{k}".lstrip("."))]
                             for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [split_tensors(v, tensors, f"{key}.{i}".lstrip(".")) for i, v in enumerate(obj)]
    return obj


def join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:  # keeps int keys (optimizer state ids)
        return {k: join_tensors(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [join_tensors(v, tensors) for v in obj]
    return obj


# -- writing ---------------------------------------------------------------------------------
def save(ckpt_dir: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
         state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step_<state['step']>`` atomically and point ``last`` at it."""
    root = Path(ckpt_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(int(state["step"]))
    if not final.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=root))
        try:
            save_model(model, tmp / "model.safetensors", extra={"checkpoint": True})
            tensors: dict[str, torch.Tensor] = {}
            opt_json = split_tensors(optimizer.state_dict(), tensors)
            atomic_save(tensors, tmp / "optim.safetensors", {"format": "optimizer"})
            body = {**state, "optimizer": opt_json}
            atomic_write_text(tmp / "state.json", json.dumps(body, indent=1))
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(root / POINTER, final.name + "\n")
    _prune_old(root, keep, final.name)
    return final


def _prune_old(root: Path, keep: int, newest: str) -> None:
    steps = sorted(p.name for p in root.glob("step_*") if p.is_dir())
    for name in steps[:-keep] if keep > 0 else []:
        if name != newest:
            shutil.rmtree(root / name, ignore_errors=True)


def clean_stale(ckpt_dir: str | Path) -> None:
    """Remove temporary folders a killed run left behind."""
    for p in Path(ckpt_dir).glob(TMP_PREFIX + "*"):
        shutil.rmtree(p, ignore_errors=True)


# -- reading ---------------------------------------------------------------------------------
def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in FILES)


def latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: the one ``last`` names, else the highest step."""
    root = Path(ckpt_dir)
    pointer = root / POINTER
    if pointer.is_file():
        name = pointer.read_text().strip()
        named = root / name
        if STEP_NAME.fullmatch(name) and named.is_dir() and _complete(named):
            return named
    done = sorted(p for p in root.glob("step_*")
                  if STEP_NAME.fullmatch(p.name) and p.is_dir() and _complete(p))
    return done[-1] if done else None


def read_state(path: str | Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint, every field checked (see :mod:`.validate`)."""
    file = Path(path) / "state.json"
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpruceError(f"{file}: unreadable checkpoint state ({e}); {REMEDY}") from None
    return check_state(state, file)


def load(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
         ) -> dict[str, Any]:
    """Restore weights, masks and optimizer state from ``path``; returns its state.
    Damaged files and non-finite tensors raise a SpruceError naming the file."""
    path = Path(path)
    state = read_state(path)
    with loading(path / "model.safetensors", "weights"):
        load_model(path / "model.safetensors", model)
    with loading(path / "optim.safetensors", "optimizer tensors"):
        tensors = load_file(str(path / "optim.safetensors"))
    with loading(path / "state.json", "optimizer state"):
        optimizer.load_state_dict(join_tensors(state["optimizer"], tensors))
    for file, named in (("model.safetensors", model_tensors(model)),
                        ("optim.safetensors", iter(tensors.items()))):
        bad = first_nonfinite(named)
        if bad is not None:
            raise SpruceError(f"{path / file}: tensor '{bad}' holds NaN or inf; {REMEDY}")
    return state
