"""``--example-input``: what a model is traced, timed and checked with, from a file.

- ``FILE.safetensors``: one tensor is the single positional input; several are keyword
  inputs (a dict: ``input_ids``, ``attention_mask``, ...);
- ``FILE.pt``: a tensor, a tuple/list of positional inputs or a dict of keyword inputs,
  read with ``torch.load(weights_only=True)`` (no code runs);
- ``FILE.py:FN``: ``FN()`` returns one of the above (it runs the file's code, so it is
  accepted from the command line only).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import SpruceError

HELP = ("model input: FILE.safetensors (several tensors: keyword inputs), FILE.pt "
        "(tensor, tuple or dict) or FILE.py:FN returning one")


def _checked(value: Any, where: str) -> Any:
    """``value`` as a tensor, tuple of tensors or dict of tensors, or a SpruceError."""
    if isinstance(value, list):
        value = tuple(value)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple) and value and all(isinstance(v, torch.Tensor) for v in value):
        return value
    if isinstance(value, dict) and value and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()):
        return value
    raise SpruceError(f"holds {type(value).__name__}, not an example input; give a tensor, a "
                      f"tuple of tensors (positional inputs) or a dict name → tensor (keyword "
                      f"inputs)", path=where)


def _from_python(spec: str) -> Any:
    file, _, fn = spec.partition(":")
    path = Path(file)
    if not path.is_file():
        raise SpruceError("no such file; write FILE.py:FUNCTION", path=file)
    mod_spec = importlib.util.spec_from_file_location(f"spruce_example_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[mod_spec.name] = module
    mod_spec.loader.exec_module(module)
    if not callable(getattr(module, fn, None)):
        raise SpruceError(f"has no function {fn!r}; write FILE.py:FUNCTION returning the "
                          f"example input", path=file)
    return _checked(getattr(module, fn)(), spec)


def load_example_input(spec: str | Path) -> Any:
    """The example input named by ``spec`` (see the module docstring)."""
    spec = str(spec)
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        return _from_python(spec)
    path = Path(spec)
    if not path.is_file():
        raise SpruceError("no such example-input file", path=spec)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise SpruceError(f"not a safetensors file ({e})", path=spec) from None
        if not tensors:
            raise SpruceError("holds no tensors", path=spec)
        return next(iter(tensors.values())) if len(tensors) == 1 else tensors
    if path.suffix in (".pt", ".pth"):
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unpickling errors of many types
            raise SpruceError(f"cannot be read with torch.load(weights_only=True) ({e})",
                              path=spec) from None
        return _checked(value, spec)
    raise SpruceError("unknown example-input format; use .safetensors, .pt or FILE.py:FN",
                      path=spec)


def to_device(example: Any, device: str | torch.device) -> Any:
    if isinstance(example, dict):
        return {k: v.to(device) for k, v in example.items()}
    if isinstance(example, tuple):
        return tuple(v.to(device) for v in example)
    return example.to(device)
